"""Train a model under a randjax method from an ml_collections config.

    python -m experiments.train --config=experiments/configs/dense.py \
        --config.model=lenet300_100 --config.dataset=fashion_mnist \
        --config.epochs=10 --workdir=runs/x

    python -m experiments.train \
        --config=experiments/configs/presets.py:dense_lenet_fmnist --workdir=runs/p

Writes ``metrics.jsonl`` (one record per epoch), ``summary.json`` and orbax
checkpoints to ``--workdir``; running the same command again resumes. With
``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or
``--distributed``) every process of a multi-host job runs the command and
they train as one (`experiments.distributed`).
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import json
import math
import pathlib
import re
import sys
import time
import warnings

import jax
import ml_collections
import optax
from absl import app, flags, logging
from ml_collections import config_flags

import randjax
from experiments import compile_cache, distributed, registry
from randjax import data as data_lib
from randjax import models, tree
from randjax.methods.slot_machine import slot_sgd

FLAGS = flags.FLAGS
_MODEL_OPTIONS = ("width", "use_bias", "batch_norm", "bn_momentum", "bn_epsilon", "dropout")
_SCHEDULES = ("constant", "cosine", "cosine_epoch", "step")
_OPTIMIZERS = ("sgd", "adam", "adamw")


def _check_real(config, name: str, *, low: float = 0.0, positive: bool = False) -> float:
    """``config[name]`` as a finite float >= ``low`` (> ``low`` if ``positive``)."""
    value = tree.check_real(config[name], f"config.{name}", low=low)
    if positive and value <= low:
        raise ValueError(f"config.{name} must be > {low}, got {config[name]!r}")
    return value


def check_schedule(config: ml_collections.ConfigDict) -> None:
    """ValueError naming the first schedule field of ``config`` out of range.

    Checks ``schedule``, ``learning_rate`` (finite, >= 0; 0 warns),
    ``warmup_epochs`` (an int >= 0, below ``epochs`` when > 0), ``lr_gamma``
    (finite, > 0) and ``lr_milestones`` (increasing ints >= 0; one at or
    past ``epochs`` is never reached and warns).
    """
    if config.schedule not in _SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r} (config.schedule); choose "
                         f"one of {_SCHEDULES}")
    epochs = tree.check_int(config.epochs, "config.epochs", minimum=0)
    if _check_real(config, "learning_rate") == 0:
        warnings.warn("config.learning_rate is 0: the optimizer never moves the parameters",
                      stacklevel=3)
    warmup = tree.check_int(config.warmup_epochs, "config.warmup_epochs", minimum=0)
    if 0 < epochs <= warmup:
        raise ValueError(f"config.warmup_epochs={warmup} must be below config.epochs="
                         f"{epochs}: the warm-up would take the whole run")
    _check_real(config, "lr_gamma", positive=True)
    milestones = config.lr_milestones
    if not isinstance(milestones, tuple | list):
        raise ValueError(f"config.lr_milestones must be a tuple of epochs, got {milestones!r}")
    for m in milestones:
        tree.check_int(m, "config.lr_milestones entry", minimum=0)
    if list(milestones) != sorted(set(milestones)):
        raise ValueError(f"config.lr_milestones must increase strictly, got {milestones!r}")
    late = [m for m in milestones if m >= epochs]
    if config.schedule == "step" and late:
        warnings.warn(f"config.lr_milestones {late} are at or past config.epochs={epochs}: "
                      "never reached", stacklevel=3)


def check_config(config: ml_collections.ConfigDict) -> None:
    """ValueError naming the first field of the base config with a wrong type or value.

    The fields of `experiments.configs.dense` (every method's config starts
    from it), checked before any data is read: integers (``batch_size``,
    ``eval_batch_size``, ``checkpoint_every`` >= 1; ``epochs``,
    ``warmup_epochs``, ``crop_padding``, ``seed`` >= 0; ``train_limit`` and
    ``num_classes`` >= 1 or None), flags, ``momentum`` in [0, 1),
    ``weight_decay`` >= 0, the optimizer, `check_schedule`'s fields, and the
    model's options (the model is built, which checks them). `randjax.data.load`
    checks the data fields; a method's own fields are checked when it is built.

    Raises:
        ValueError: the message names the field (``config.<name>``).
    """
    minimums = dict(batch_size=1, eval_batch_size=1, checkpoint_every=1, epochs=0,
                    crop_padding=0, seed=0)
    for name, minimum in minimums.items():
        tree.check_int(config[name], f"config.{name}", minimum=minimum)
    for name in ("train_limit", "num_classes"):
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"config.{name} must be >= 1 (a Python int, or None), "
                             f"got {value!r}")
    for name in ("flip", "nesterov", "drop_remainder"):
        tree.check_bool(config[name], f"config.{name}")
    tree.check_bool(config.get("tensorboard", False), "config.tensorboard")
    if config.optimizer not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r} (config.optimizer); "
                         f"choose one of {_OPTIMIZERS}")
    if _check_real(config, "momentum") >= 1:
        raise ValueError(f"config.momentum must be in [0, 1), got {config.momentum!r}")
    _check_real(config, "weight_decay")
    check_schedule(config)
    make_model(config, config.get("num_classes") or 1)


def check_run_config(config: ml_collections.ConfigDict) -> None:
    """`check_config`, then the method's own fields: it is built (`registry.build`,
    around a placeholder optimizer), which checks them. Reads no data."""
    check_config(config)
    registry.build(config, optax.identity())


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule named by ``config.schedule``.

    * ``constant``;
    * ``cosine``: cosine decay to 0 over all steps, updated every step;
    * ``cosine_epoch``: the same curve held constant within each epoch, as
      hidden-networks' ``cosine_lr`` (set at the start of every epoch);
    * ``step``: multiply by ``lr_gamma`` at each epoch in ``lr_milestones``.
    ``warmup_epochs`` > 0 prepends a linear warm-up from 0.

    Raises:
        ValueError: a schedule field out of range (`check_schedule`).
    """
    check_schedule(config)
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
    else:  # "step"
        schedule = optax.piecewise_constant_schedule(
            lr, {int(m) * steps_per_epoch: config.lr_gamma for m in config.lr_milestones})
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
    logs it. With ``config.slot_mode="factored"`` (a Slot Machine config) SGD
    is `randjax.methods.slot_machine.slot_sgd`, the same SGD on the scores in
    one number per connection. A method may wrap this optimizer (LaPerm,
    Lookahead: see its config's ``build``). ``schedule`` replaces
    `make_schedule`'s (iterative pruning restarts, fast-forwards or freezes
    it per round).
    """

    def optimizer(learning_rate):
        if config.optimizer == "sgd" and config.get("slot_mode") == "factored":
            # A factored Slot Machine: the same SGD on its scores, in one number
            # per connection (the config's build refuses other optimizers).
            return slot_sgd(learning_rate, momentum=config.momentum,
                            nesterov=config.nesterov, weight_decay=config.weight_decay)
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
                            normalize=config.normalize, num_classes=config.get("num_classes"))
    if config.train_limit is None:
        return dataset
    if config.train_limit < 1:
        raise ValueError(f"train_limit must be >= 1, got {config.train_limit}")
    x, y = dataset.train
    return dataclasses.replace(dataset, train=data_lib.Split(
        x[:config.train_limit], y[:config.train_limit]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None,
                       *, progress: bool = True, reparam: randjax.Reparam | None = None,
                       model=None, dataset: data_lib.Dataset | None = None,
                       **fit_kwargs) -> randjax.train.FitResult:
    """Loads the data, builds model, method and optimizer, and runs `randjax.fit`.

    The one entry point of every experiment: the CLI, the studies and the
    notebooks call it. ``config.method`` names a registered method
    (`experiments.registry`); ``reparam`` replaces its reparametrization
    (e.g. `randjax.dense_from` to start from given weights); ``model``
    replaces ``config.model``'s zoo model with any model `randjax.fit` takes
    (a Linen or NNX module, `randjax.models.from_functions`); ``dataset`` is
    ``load_dataset(config)`` when the caller has loaded it already;
    ``fit_kwargs`` go to `randjax.fit`.

    Returns:
        The `randjax.train.FitResult`; its ``summary`` is the run's summary.

    Raises:
        ValueError: a field of ``config`` with a wrong type or value
            (`check_run_config`), before any data is read.
    """
    check_run_config(config)
    dataset = load_dataset(config) if dataset is None else dataset
    method = build_method(config, len(dataset.train.y))
    return randjax.fit(
        make_model(config, dataset.num_classes) if model is None else model, dataset,
        method.optimizer,
        reparam=method.reparam if reparam is None else reparam,
        epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
        workdir=workdir, checkpoint_every=config.checkpoint_every,
        augmentation=randjax.train.Augmentation(config.crop_padding, config.flip),
        drop_remainder=config.drop_remainder, eval_batch_size=config.eval_batch_size,
        eval_transform=method.eval_transform, progress=progress,
        tensorboard=config.get("tensorboard", False),
        # Where the metrics go is not part of the run: a resumed run may add TensorBoard.
        config={k: v for k, v in config.to_dict().items() if k != "tensorboard"},
        **fit_kwargs)


def exit_usage(message: str) -> None:
    """One line on stderr, then exit status 2 (a command-line usage error)."""
    sys.stderr.write(" ".join(message.split("\n")) + "\n")
    sys.exit(2)


def _config_of(argv: list[str]) -> ml_collections.ConfigDict | None:
    """The config that ``--config`` in ``argv`` names, loaded afresh (None if it cannot be).

    A failed override leaves the flag without a value, so the file is read again.
    """
    if "config" not in FLAGS:
        return None
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--?config(?:=(.*))?", arg)
        if match:
            value = match.group(1) if "=" in arg else next(iter(argv[i + 1:i + 2]), None)
            try:
                return FLAGS["config"].parser.parse(value)
            except Exception:  # the override error is the one to report
                return None
    return None


def _unknown_field(argv: list[str]) -> str | None:
    """What is wrong with the first ``--config.a.b`` of ``argv`` naming no field, or None."""
    config = _config_of(argv)
    for arg in argv[1:]:
        match = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if config is None or match is None:
            continue
        node, path = config, match.group(1).split(".")
        for depth, part in enumerate(path):
            if not isinstance(node, ml_collections.ConfigDict):
                break  # a sub-field of a plain value: ml_collections' own message says it
            if part not in node:
                where = ".".join(["config", *path[:depth]])
                close = difflib.get_close_matches(part, list(node.keys()), n=3)
                hint = (f"; did you mean {' or '.join(f'{where}.{c}' for c in close)}?"
                        if close else "; see the config file's get_config for its fields")
                return f"{arg}: {where} has no field {part!r}{hint}"
            node = node[part]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, for ``app.run(main, flags_parser=parse_flags)``.

    A bad flag ends the program with one line on stderr and exit status 2
    instead of a traceback; a ``--config.<field>`` that the config does not
    have is named, with the config's close matches.
    """
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError) as error:
        message = _unknown_field(argv)
        if message is None and isinstance(error, AttributeError | KeyError):
            raise
        exit_usage(f"FATAL Flags parsing error: {message or error} (--helpshort for help)")


def main(argv):
    entered = time.time()   # after the imports
    # The imports' objects live as long as the process: spare them the
    # garbage collector's full passes, which rescan every tracked object.
    gc.freeze()
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        check_run_config(FLAGS.config)
    except ValueError as error:
        exit_usage(f"FATAL config error: {error}")
    try:  # before anything touches a device
        distributed.initialize_from_flags()
    except ValueError as error:
        exit_usage(f"FATAL distributed setup error: {error}")
    compile_cache.use_from_flags()
    primary = jax.process_index() == 0
    if primary:
        print(f"devices: {jax.devices()}")
    try:
        loading = time.perf_counter()
        dataset = load_dataset(FLAGS.config)
        data_seconds = time.perf_counter() - loading
        result = train_and_evaluate(FLAGS.config, FLAGS.workdir, dataset=dataset)
    except randjax.train.DivergenceError as error:
        # A diverged run: one line (the epoch and step), status 1.
        sys.stderr.write(f"FATAL {type(error).__name__}: {error}\n")
        sys.exit(1)
    if not primary:
        return
    # What summary.json cannot see: when the imports ended and the data load.
    pathlib.Path(FLAGS.workdir, "timings.json").write_text(json.dumps(
        {"main_unix": entered, "data_seconds": data_seconds}) + "\n")
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
    distributed.define_flags()
    compile_cache.define_flags()


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
