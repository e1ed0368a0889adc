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
from randjax import data as data_lib
from randjax import models

FLAGS = flags.FLAGS
_MODEL_OPTIONS = ("width", "use_bias", "batch_norm", "dropout")


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


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD (PyTorch-style coupled weight decay), Adam or AdamW, with its schedule.

    PyTorch's ``SGD(weight_decay=wd)`` adds ``wd * w`` to the gradient before
    momentum; `optax.add_decayed_weights` before `optax.sgd` does the same.

    With ``config.sync_period`` set (the LaPerm config), the optimizer is the
    inner optimizer of `randjax.laperm` (``laperm_include_1d`` and
    ``reset_inner_state`` as configured). With ``config.lookahead_sync_period``
    set, it is the fast optimizer of `optax.lookahead` (slow step size
    ``lookahead_step_size``), whose parameters are `optax.LookaheadParams`
    (see `lookahead_reparam`; it takes gradients of that tree and uses the
    fast ones). Both need ``method="dense"`` and exclude each other.
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

    schedule = make_schedule(config, steps_per_epoch)
    tx = optax.inject_hyperparams(optimizer)(learning_rate=schedule)
    sync_period = config.get("sync_period")
    lookahead_period = config.get("lookahead_sync_period")
    if (sync_period is not None or lookahead_period is not None) and config.method != "dense":
        raise ValueError(f"sync_period (LaPerm) and lookahead_sync_period need "
                         f"method='dense', got {config.method!r}")
    if sync_period is not None and lookahead_period is not None:
        raise ValueError("set sync_period (LaPerm) or lookahead_sync_period, not both")
    if sync_period is not None:
        return randjax.laperm(tx, sync_period,
                              include_1d=config.get("laperm_include_1d", False),
                              reset_inner_state=config.get("reset_inner_state", False))
    if lookahead_period is not None:
        return _fast_gradients(optax.lookahead(
            tx, lookahead_period, config.get("lookahead_step_size", 0.5)))
    return tx


def _fast_gradients(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`optax.lookahead` fed the fast part of gradients taken wrt LookaheadParams."""

    def update(grads, state, params=None):
        fast = grads.fast if isinstance(grads, optax.LookaheadParams) else grads
        return tx.update(fast, state, params)

    return optax.GradientTransformation(tx.init, update)


def lookahead_reparam() -> randjax.Reparam:
    """Parameters as `optax.LookaheadParams`: train with the fast, evaluate the slow.

    ``init`` starts both copies at the model's parameters; ``apply`` returns
    the fast parameters when training (so gradients reach the fast copy
    only) and the slow ones at evaluation, as Zhang et al. (2019) evaluate
    Lookahead. Paired with `make_optimizer`'s lookahead optimizer.
    """

    def init(key, params):
        del key
        # Two buffers, not one aliased twice: fit donates the state.
        return optax.LookaheadParams(params, jax.tree.map(jax.numpy.copy, params)), None

    def apply(trainable, frozen, *, key=None, train=True):
        del frozen, key
        return trainable.fast if train else trainable.slow

    return randjax.Reparam(init, apply)


def laperm_synced(state: randjax.train.TrainState) -> randjax.train.TrainState:
    """The state with LaPerm's projection applied: what a sync now would give.

    `randjax.fit`'s ``eval_transform`` for ``laperm_eval="synced"``: the
    accuracy it reports is that of a network whose every permuted vector is
    its initial values in the current ranking (`randjax.reconnect.synced_params`).
    """
    return state._replace(trainable=randjax.reconnect.synced_params(
        state.trainable, state.opt_state))


def make_eval_transform(config: ml_collections.ConfigDict):
    """`laperm_synced` for a LaPerm config with ``laperm_eval="synced"``, else None."""
    if config.get("sync_period") is None:
        return None
    mode = config.get("laperm_eval", "synced")
    if mode not in ("synced", "current"):
        raise ValueError(f"unknown laperm_eval {mode!r}; choose synced or current")
    return laperm_synced if mode == "synced" else None


def make_model(config: ml_collections.ConfigDict, num_classes: int):
    options = {k: config[k] for k in _MODEL_OPTIONS if config.get(k) is not None}
    if config.method == "dense":  # the other methods draw their own weights
        options["kernel_init"] = randjax.init.get(config.init)
    return models.get(config.model, num_classes=num_classes, **options)


def make_reparam(config: ml_collections.ConfigDict) -> randjax.Reparam:
    """The `randjax.Reparam` of ``config.method``.

    ``dense`` (`lookahead_reparam` when ``lookahead_sync_period`` is set),
    ``edge_popup``, ``supermask`` or ``slot_machine``. Edge-popup
    and supermask redraw the frozen weights with ``config.init`` (so a
    ``scaled_*`` name sees the kept fraction); Slot Machines draw their
    ``config.k`` options per connection by ``config.slot_init``.
    """
    if config.method == "dense":
        if config.get("lookahead_sync_period") is not None:
            return lookahead_reparam()
        return randjax.dense()
    if config.method == "edge_popup":
        return randjax.edge_popup(
            config.density, scope=config.scope, weight_init=config.init,
            score_init=config.score_init, rounding=config.rounding,
            scale_fan=config.scale_fan, store_weights=config.store_weights)
    if config.method == "supermask":
        return randjax.supermask(
            logit_init=config.logit_init, sample_at_eval=config.sample_at_eval,
            dynamic_scaling=config.dynamic_scaling, weight_init=config.init,
            store_weights=config.store_weights)
    if config.method == "slot_machine":
        return randjax.slot_machine(
            config.k, selection=config.selection, init=config.slot_init,
            eval_selection=config.eval_selection, shared_options=config.shared_options,
            store_weights=config.store_weights)
    raise ValueError(f"unknown method {config.method!r}; choose dense, edge_popup, "
                     "supermask or slot_machine")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None,
                       *, progress: bool = True, reparam: randjax.Reparam | None = None,
                       **fit_kwargs) -> randjax.train.FitResult:
    """Loads the data, builds model, method and optimizer, and runs `randjax.fit`.

    ``reparam`` replaces ``make_reparam(config)`` (e.g. to start from given
    weights); ``fit_kwargs`` go to `randjax.fit`.
    """
    dataset = data_lib.load(config.dataset, data_dir=config.data_dir,
                            val_fraction=config.val_fraction, seed=config.seed,
                            normalize=config.normalize)
    if config.train_limit is not None:
        if config.train_limit < 1:
            raise ValueError(f"train_limit must be >= 1, got {config.train_limit}")
        x, y = dataset.train
        dataset = dataclasses.replace(dataset, train=data_lib.Split(
            x[:config.train_limit], y[:config.train_limit]))
    num_train = len(dataset.train.y)
    steps_per_epoch = (num_train // config.batch_size if config.drop_remainder
                       else math.ceil(num_train / config.batch_size))
    return randjax.fit(
        make_model(config, dataset.num_classes), dataset,
        make_optimizer(config, steps_per_epoch),
        reparam=make_reparam(config) if reparam is None else reparam,
        epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
        workdir=workdir, checkpoint_every=config.checkpoint_every,
        augmentation=randjax.train.Augmentation(config.crop_padding, config.flip),
        drop_remainder=config.drop_remainder, eval_batch_size=config.eval_batch_size,
        eval_transform=make_eval_transform(config), progress=progress,
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
