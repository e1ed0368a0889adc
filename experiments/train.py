"""Train a model under a randjax method from an ml_collections config.

    python -m experiments.train --config=experiments/configs/dense.py \
        --config.model=lenet300_100 --config.dataset=fashion_mnist \
        --config.epochs=10 --workdir=runs/x

    python -m experiments.train \
        --config=experiments/configs/presets.py:dense_lenet_fmnist --workdir=runs/p

Writes ``metrics.jsonl`` (one record per epoch), ``summary.json`` and orbax
checkpoints to ``--workdir``; running the same command again resumes.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import ml_collections
import optax
from absl import app, flags, logging
from ml_collections import config_flags

import randjax
from experiments import registry
from randjax import data as data_lib
from randjax import models

FLAGS = flags.FLAGS
_MODEL_OPTIONS = ("width", "use_bias", "batch_norm", "bn_momentum", "bn_epsilon", "dropout")


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule named by ``config.schedule``.

    * ``constant``;
    * ``cosine``: cosine decay to 0 over all steps, updated every step;
    * ``cosine_epoch``: the same curve held constant within each epoch, as
      hidden-networks' ``cosine_lr`` (set at the start of every epoch);
    * ``step``: multiply by ``lr_gamma`` at each epoch in ``lr_milestones``.
    ``warmup_epochs`` > 0 prepends a linear warm-up from 0.
    """
    lr, epochs = config.learning_rate, config.epochs
    total = max(epochs * steps_per_epoch, 1)
    warmup = config.warmup_epochs * steps_per_epoch
    if config.schedule == "constant":
        schedule = optax.constant_schedule(lr)
    elif config.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
    elif config.schedule == "cosine_epoch":
        decay_epochs = max(epochs - config.warmup_epochs, 1)
        schedule = lambda step: lr * 0.5 * (
            1 + jax.numpy.cos(math.pi * (step // steps_per_epoch) / decay_epochs))
    elif config.schedule == "step":
        schedule = optax.piecewise_constant_schedule(
            lr, {int(m) * steps_per_epoch: config.lr_gamma for m in config.lr_milestones})
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}; choose constant, "
                         "cosine, cosine_epoch or step")
    if warmup:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
    return schedule


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int, *,
                   schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """SGD (PyTorch-style coupled weight decay), Adam or AdamW, with its schedule.

    PyTorch's ``SGD(weight_decay=wd)`` adds ``wd * w`` to the gradient before
    momentum; `optax.add_decayed_weights` before `optax.sgd` does the same.
    The learning rate is injected (`optax.inject_hyperparams`), so `randjax.fit`
    logs it. A method may wrap this optimizer (LaPerm, Lookahead: see its
    config's ``build``). ``schedule`` replaces `make_schedule`'s (iterative
    pruning restarts, fast-forwards or freezes it per round).
    """

    def optimizer(learning_rate):
        if config.optimizer == "sgd":
            sgd = optax.sgd(learning_rate, momentum=config.momentum or None,
                            nesterov=config.nesterov)
            return optax.chain(optax.add_decayed_weights(config.weight_decay), sgd)
        if config.optimizer == "adam":
            return optax.chain(optax.add_decayed_weights(config.weight_decay),
                               optax.adam(learning_rate))
        if config.optimizer == "adamw":
            return optax.adamw(learning_rate, weight_decay=config.weight_decay)
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose sgd, adam or adamw")

    if schedule is None:
        schedule = make_schedule(config, steps_per_epoch)
    return optax.inject_hyperparams(optimizer)(learning_rate=schedule)


def make_model(config: ml_collections.ConfigDict, num_classes: int):
    """The zoo model ``config.model`` with the config's options.

    Its kernels are drawn by ``config.init``. Edge-popup and supermask redraw
    the kernels they freeze with the same ``config.init`` and Slot Machines
    draw their options by ``config.slot_init``, so only the dense-weight
    methods (dense, LaPerm, Lookahead) train the model's own initial kernels.
    """
    options = {k: config[k] for k in _MODEL_OPTIONS if config.get(k) is not None}
    return models.get(config.model, num_classes=num_classes,
                      kernel_init=randjax.init.get(config.init), **options)


def epoch_length(config: ml_collections.ConfigDict, num_train: int) -> int:
    """Optimizer steps in one epoch of ``num_train`` images under ``config``."""
    return randjax.train.epoch_steps(num_train, config.batch_size, config.drop_remainder)


def build_method(config: ml_collections.ConfigDict, num_train: int) -> registry.Method:
    """The method of ``config`` (`registry.build`) around `make_optimizer`'s optimizer."""
    return registry.build(config, make_optimizer(config, epoch_length(config, num_train)))


def load_dataset(config: ml_collections.ConfigDict) -> data_lib.Dataset:
    """``config.dataset`` with the config's split, normalisation and ``train_limit``."""
    dataset = data_lib.load(config.dataset, data_dir=config.data_dir,
                            val_fraction=config.val_fraction, seed=config.seed,
                            normalize=config.normalize)
    if config.train_limit is None:
        return dataset
    if config.train_limit < 1:
        raise ValueError(f"train_limit must be >= 1, got {config.train_limit}")
    x, y = dataset.train
    return dataclasses.replace(dataset, train=data_lib.Split(
        x[:config.train_limit], y[:config.train_limit]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None,
                       *, progress: bool = True, reparam: randjax.Reparam | None = None,
                       **fit_kwargs) -> randjax.train.FitResult:
    """Loads the data, builds model, method and optimizer, and runs `randjax.fit`.

    The one entry point of every experiment: the CLI, the studies and the
    notebooks call it. ``config.method`` names a registered method
    (`experiments.registry`); ``reparam`` replaces its reparametrization
    (e.g. `randjax.dense_from` to start from given weights); ``fit_kwargs``
    go to `randjax.fit`.

    Returns:
        The `randjax.train.FitResult`; its ``summary`` is the run's summary.
    """
    dataset = load_dataset(config)
    method = build_method(config, len(dataset.train.y))
    return randjax.fit(
        make_model(config, dataset.num_classes), dataset, method.optimizer,
        reparam=method.reparam if reparam is None else reparam,
        epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
        workdir=workdir, checkpoint_every=config.checkpoint_every,
        augmentation=randjax.train.Augmentation(config.crop_padding, config.flip),
        drop_remainder=config.drop_remainder, eval_batch_size=config.eval_batch_size,
        eval_transform=method.eval_transform, progress=progress,
        config=config.to_dict(), **fit_kwargs)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    print(f"devices: {jax.devices()}")
    result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    for record in result.history:
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in record.items()))
    print("summary:", {k: v for k, v in result.summary.items()})


def _define_flags():
    # Defined only when run as a program, so other entry points can import
    # this module without a flag clash.
    flags.DEFINE_string("workdir", None, "Directory for metrics, summary and checkpoints.")
    config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                     lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
