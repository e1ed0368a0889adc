"""One jitted, data-parallel training loop for every method.

`fit` trains any JAX model (a Flax Linen or NNX module, or plain ``init`` /
``apply`` functions such as an Equinox model's: `randjax.models.adapters`)
under any `Reparam` (dense, edge-popup, Slot Machines, masked training, ...)
with any optax transformation, applied with `randjax.apply_updates` (so
projections such as LaPerm's hold exactly); it knows models only as
`ModelFunctions` and methods only through their protocol (`randjax.reparam`):

* the data set lives on the device; each epoch's batches are drawn by a
  permutation and the whole epoch (full batches, then the remainder batch,
  as PyTorch's ``drop_last=False`` and Keras' ``fit`` do) runs inside one
  jitted `jax.lax.scan`;
* the batch is sharded over a 1-D ``data`` mesh of all devices with
  `jax.jit` + `NamedSharding` (state replicated); after
  `jax.distributed.initialize` that is every device of every process: each
  process runs the same program on the same (replicated) data and draws the
  same permutation, each device computes its slice of every global batch,
  gradients and evaluation sums are reduced over all processes, orbax saves
  and restores checkpoints collectively, and only process 0 writes files
  and shows progress;
* validation and test accuracy after every epoch, best-validation tracking,
  metrics to ``metrics.jsonl`` and a ``summary.json`` in ``workdir``;
* orbax checkpoints every ``checkpoint_every`` epochs and at the end; a run
  started again in the same ``workdir`` resumes from its last checkpoint and,
  given a larger budget, trains on to it. Randomness is derived from
  ``(seed, epoch, step)`` alone, so a resumed run is bitwise identical to an
  uninterrupted one;
* snapshots of the state after any step (``snapshot_steps``; an epoch is
  split there and trains bit for bit as a whole one), a start from given
  variables (``variables``) and at a later step of the run
  (``start_step``): what iterative pruning rewinds to and fast-forwards.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import pathlib
import shutil
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from randjax import data as data_lib
from randjax.models.adapters import ModelFunctions, as_model, describe
from randjax.reparam import Reparam, apply_updates, dense
from randjax.repeated import loop_repeated_draws
from randjax.tree import check_choice, check_int
from randjax.writers import JsonlWriter, MetricWriter, TensorBoardWriter, finite_json

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

PyTree = Any
EpochHook = Callable[[int, "TrainState"], Mapping[str, Any]]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree."""

    step: jax.Array          # int32 scalar: optimizer steps taken
    trainable: PyTree        # what the optimizer updates
    frozen: PyTree           # what the reparametrization keeps fixed
    model_state: PyTree      # non-parameter collections, e.g. batch_stats
    opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Per-batch augmentation inside the jitted step (see `data.augment`).

    ``pad_value`` fills the crop padding; `fit` sets it to the normalised
    value of a black pixel, ``-mean / std``, unless given.
    """

    crop_padding: int = 0
    flip: bool = False
    pad_value: Any = None


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or non-finite parameters.

    Attributes:
        epoch: the epoch (1-based) in which it happened.
        step: the first global step whose loss was not finite (or the last
            step of ``epoch`` when only the parameters were).
    """

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step


@dataclasses.dataclass
class FitResult:
    state: TrainState
    summary: dict
    history: list[dict]
    step_losses: np.ndarray   # the loss of every step of this call, in order
    snapshots: dict[int, TrainState] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- #
# Model application
# --------------------------------------------------------------------------- #

def _init_keys(init_key):
    return jax.random.split(init_key)


def _fit_keys(seed: int):
    """``(init_key, train_key, eval_key)`` of ``fit(seed=seed)``."""
    return _three_keys(jax.random.key(seed))   # eager: any Python int seeds it


@jax.jit
def _three_keys(key):
    # One program, not one per eager operation (split, unstack), each of
    # which JAX would trace, lower and compile on first use.
    return tuple(jax.random.split(key, 3))


def reparam_key(seed: int) -> jax.Array:
    """The key `fit` (``seed=seed``) gives to ``reparam.init``.

    `randjax.export.save` needs it to record stored frozen weights.
    """
    return _init_keys(_fit_keys(seed)[0])[1]


def model_key(seed: int) -> jax.Array:
    """The key `fit` (``seed=seed``) initialises the model with.

    ``model.init(model_key(seed), zeros((1, *input_shape)))`` redraws the
    initial parameters; `randjax.methods.laperm.save_permuted` needs it.
    """
    return _init_keys(_fit_keys(seed)[0])[0]


def init_state(model, reparam: Reparam, tx: optax.GradientTransformation,
               input_shape: tuple[int, ...], key: jax.Array, *,
               variables: Mapping | None = None, step: int = 0) -> TrainState:
    """Initialises the model, splits its parameters by ``reparam``, inits ``tx``.

    ``model`` is anything `fit` trains (`randjax.models.adapters.as_model`).
    ``variables`` replace the model's own initial parameters and state, e.g.
    rewound weights and their BatchNorm statistics: a Linen model's
    ``{"params": ..., "batch_stats": ...}``, else ``{"params": ...,
    "model_state": ...}``; ``step`` is the step count the state starts at.

    Everything runs as one jitted program (one compile instead of one per
    operation) in which tensors drawn alike are drawn in a loop
    (`randjax.repeated.loop_repeated_draws`); an ``init`` that returns
    arrays it holds (NNX, see `ModelFunctions.jit_init`) runs before it,
    eagerly. A method whose init
    needs concrete values (e.g. `randjax.masked` with masks whose kept count
    depends on the weights) falls back to eager, op-by-op execution.

    Raises:
        ValueError: ``variables`` whose collections, structure, shapes or
            dtypes differ from the model's.
    """
    model = as_model(model)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    given = None
    if variables is not None:
        given = model.split_variables(variables)
        _check_variables(given, jax.eval_shape(model.init, _init_keys(key)[0], x))
        given = jax.tree.map(jnp.array, given)  # copies: fit donates the state
    elif not model.jit_init:
        given = model.init(_init_keys(key)[0], jnp.zeros(x.shape, x.dtype))

    def initial(key, given):
        model_key, reparam_key = _init_keys(key)
        if given is None:
            given = model.init(model_key, jnp.zeros(x.shape, x.dtype))
        params, model_state = given
        trainable, frozen = reparam.init(reparam_key, params)
        return TrainState(step=jnp.asarray(step, jnp.int32), trainable=trainable,
                          frozen=frozen, model_state=model_state,
                          opt_state=tx.init(trainable))

    try:   # one copy of code per distinct draw, not per tensor: see randjax.repeated
        lowered = jax.jit(loop_repeated_draws(initial, key, given)).lower(key, given)
    except _NEEDS_VALUES:
        return initial(key, given)
    options = _INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else {}
    return lowered.compile(compiler_options=options)(key, given)


_NEEDS_VALUES = (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
                 jax.errors.TracerArrayConversionError)

# The init program runs once: XLA:CPU's cheaper code generation compiles it
# about 3x faster (a second or more per model otherwise, mostly the random
# draws' code) and computes the same bits (tests/test_train.py checks it).
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1,
                          "xla_llvm_disable_expensive_passes": True}


def _check_variables(given: tuple, expected: tuple) -> None:
    """``given`` (params, model_state) must match the model's own, leaf by leaf."""
    shape = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)
    if jax.tree.structure(given) != jax.tree.structure(expected):
        raise ValueError(f"variables must have the model's collections and structure: "
                         f"got {jax.tree.structure(given)}, the model has "
                         f"{jax.tree.structure(expected)}")
    if shape(given) != shape(expected):
        raise ValueError("variables must have the shapes and dtypes of the model's: "
                         f"got {shape(given)}, the model has {shape(expected)}")


def _logits(model: ModelFunctions, reparam, state_parts, x, key, train):
    """Forward pass; returns (logits, new model_state)."""
    trainable, frozen, model_state = state_parts
    reparam_key, dropout_key = jax.random.split(key)
    params = reparam.apply(trainable, frozen, key=reparam_key, train=train)
    return model.apply(params, model_state, x, train=train, key=dropout_key)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels: `fit`'s default loss."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def check_loss_fn(loss_fn: LossFn, num_classes: int) -> None:
    """``loss_fn(logits, labels)`` must return one finite-typed loss per example.

    Traced abstractly (`jax.eval_shape`, no computation) on a batch of 2.

    Raises:
        ValueError: ``loss_fn`` is not callable, fails on ``(batch, classes)``
            logits and integer labels, or returns another shape or a
            non-float dtype.
    """
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function (logits, labels) -> per-example "
                         f"losses, got {loss_fn!r}")
    logits = jax.ShapeDtypeStruct((2, num_classes), jnp.float32)
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    try:
        out = jax.eval_shape(loss_fn, logits, labels)
    except Exception as error:  # whatever the user's function raises
        raise ValueError(f"loss_fn fails on logits of shape (2, {num_classes}) and "
                         f"integer labels of shape (2,): {_first_line(error)}") from error
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != (2,) or not jnp.issubdtype(
            out.dtype, jnp.floating):
        raise ValueError("loss_fn(logits, labels) must return one float loss per example "
                         f"(shape (batch,)); for a batch of 2 it returns {out}")


def make_train_step(model, reparam: Reparam, tx: optax.GradientTransformation,
                    augmentation: Augmentation = Augmentation(),
                    loss_fn: LossFn = cross_entropy):
    """``step(state, x, y, key) -> (state, (loss, accuracy))`` for one batch.

    ``loss`` is the batch mean of ``loss_fn(logits, labels)``.
    """
    model = as_model(model)

    def step(state: TrainState, x, y, key):
        augment_key, forward_key = jax.random.split(key)
        pad_value = 0.0 if augmentation.pad_value is None else augmentation.pad_value
        x = data_lib.augment(augment_key, x, crop_padding=augmentation.crop_padding,
                             flip=augmentation.flip, pad_value=pad_value)

        def objective(trainable):
            logits, model_state = _logits(
                model, reparam, (trainable, state.frozen, state.model_state),
                x, forward_key, train=True)
            return loss_fn(logits, y).mean(), (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = apply_updates(state.trainable, updates, opt_state)
        accuracy = (logits.argmax(-1) == y).mean()
        return TrainState(state.step + 1, trainable, state.frozen, model_state,
                          opt_state), (loss, accuracy)

    return step


# --------------------------------------------------------------------------- #
# Epochs and evaluation, jitted over a data mesh
# --------------------------------------------------------------------------- #

def data_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh named ``data`` over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """Host (or single-device) values as arrays replicated over every device of ``mesh``.

    With several processes (`jax.distributed`) every process passes the
    same values and gets its part of one global array
    (`jax.make_array_from_process_local_data`); PRNG keys travel as their
    key data.
    """
    sharding = NamedSharding(mesh, P())
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def put(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)),
                                            impl=jax.random.key_impl(leaf))
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(put, tree)


def is_primary() -> bool:
    """Whether this is process 0, the one that writes a run's files and shows progress."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """Waits until every process gets here (a no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _shard_batch(mesh, *arrays):
    """Shards the leading axis over ``data`` when it divides evenly.

    A batch that does not divide (only the final remainder batch of an epoch
    can, since `fit` checks ``batch_size``) is computed replicated: the same
    numbers, just without the parallel speed-up for that one step.
    """
    size = mesh.devices.size
    return tuple(
        jax.lax.with_sharding_constraint(a, NamedSharding(mesh, P("data")))
        if a.shape[0] % size == 0 else a for a in arrays)


def make_epoch_fn(train_step, mesh, num_examples: int, batch_size: int,
                  drop_remainder: bool = False, start: int = 0, stop: int | None = None,
                  check_finite: bool = True):
    """A jitted ``epoch(state, x, y, key, index=None)``: one epoch of ``train_step``.

    It returns ``(state, losses, accuracies, sizes, finite)``. ``x`` and
    ``y`` are the whole device-resident training split. The epoch is one
    permutation drawn with ``key``: a `lax.scan` over the full batches,
    then one step on the remainder unless ``drop_remainder``. ``start`` and
    ``stop`` run only the full batches ``[start, stop)`` of that epoch (with
    their own keys; the remainder only when ``stop`` is None), so an epoch
    split in parts trains as the whole epoch does: `fit` stops inside an
    epoch to snapshot a step, or starts inside one to resume a schedule.
    ``finite`` says whether the trained parameters and model state are
    finite (`all_finite`; always True with ``check_finite=False``), for
    `fit`'s divergence check. ``index`` (e.g. the epoch's number) draws the
    epoch with ``fold_in(key, index)``, inside the program: an eager
    `jax.random.fold_in` would compile a program of its own on first use.
    """

    def run(state, x, y, indices, keys):
        def body(state, inputs):
            idx, key = inputs
            xb, yb = _shard_batch(mesh, x[idx], y[idx])
            return train_step(state, xb, yb, key)
        return jax.lax.scan(body, state, (indices, keys))

    def epoch(state, x, y, key, index=None):
        key = key if index is None else jax.random.fold_in(key, index)
        shuffle_key, step_key = jax.random.split(key)
        full, rest = data_lib.shuffle_batches(shuffle_key, num_examples, batch_size)
        keep_rest = rest.shape[0] > 0 and not drop_remainder and stop is None
        keys = jax.random.split(step_key, full.shape[0] + 1)
        full_keys = keys[:-1]
        if start or stop is not None:
            full, full_keys = full[start:stop], full_keys[start:stop]
        state, (losses, accs) = run(state, x, y, full, full_keys)
        sizes = jnp.full(losses.shape, batch_size, jnp.int32)
        if keep_rest:
            state, (loss, acc) = run(state, x, y, rest[None], keys[-1:])
            losses, accs = jnp.concatenate([losses, loss]), jnp.concatenate([accs, acc])
            sizes = jnp.concatenate([sizes, jnp.array([rest.shape[0]], jnp.int32)])
        finite = (all_finite((state.trainable, state.model_state)) if check_finite
                  else jnp.array(True))
        return state, losses, accs, sizes, finite

    return jax.jit(epoch, donate_argnums=0)


def make_eval_fn(model, reparam, mesh, chunk: int, loss_fn: LossFn = cross_entropy,
                 transform: Callable[[TrainState], TrainState] | None = None):
    """A jitted ``evaluate(state, splits, key, index=None) -> {name: (mean loss, accuracy)}``.

    ``splits`` maps a split's name to its ``(x, y, valid)``, padded to whole
    chunks (see `randjax.data.pad_to_chunks`); padded rows have ``valid ==
    0`` and count for nothing. ``transform(state) -> state`` (e.g. LaPerm's
    `synced_state`) runs first, in the same program: one dispatch per epoch
    evaluates every split. ``index`` evaluates with ``fold_in(key, index)``
    (as `make_epoch_fn`'s).
    """
    model = as_model(model)

    def split_metrics(params, model_state, x, y, valid, key):
        def chunk_sums(i, sums):
            take = lambda a: jax.lax.dynamic_slice_in_dim(a, i * chunk, chunk)
            xc, yc, vc = _shard_batch(mesh, take(x), take(y), take(valid))
            logits, _ = model.apply(params, model_state, xc, train=False, key=key)
            losses, correct = sums
            return (losses.at[i].set((loss_fn(logits, yc) * vc).sum()),
                    correct.at[i].set(((logits.argmax(-1) == yc) * vc).sum()))

        # A loop slicing the split in place: `lax.map` over the split reshaped
        # into chunks was slower on CPU (same sums; the ``eval`` phase of
        # ``python -m experiments.benchmark --end_to_end=adam_lenet_fmnist``).
        per_chunk = jnp.zeros((x.shape[0] // chunk,), jnp.float32)
        losses, correct = jax.lax.fori_loop(0, per_chunk.shape[0], chunk_sums,
                                            (per_chunk, per_chunk))
        n = valid.sum()
        return losses.sum() / n, correct.sum() / n

    def evaluate(state, splits, key, index=None):
        key = key if index is None else jax.random.fold_in(key, index)
        state = state if transform is None else transform(state)
        # The method's weights once for all chunks and splits (as `_logits` derives them).
        reparam_key, dropout_key = jax.random.split(key)
        params = reparam.apply(state.trainable, state.frozen, key=reparam_key, train=False)
        return {name: split_metrics(params, state.model_state, *split, dropout_key)
                for name, split in splits.items()}

    return jax.jit(evaluate)


# --------------------------------------------------------------------------- #
# Bookkeeping: hashes, checkpoints, metrics files
# --------------------------------------------------------------------------- #

def params_sha256(tree: PyTree) -> str:
    """SHA-256 of every leaf's path, dtype, shape and bytes, in a fixed order.

    Two runs with the same hash ended with bitwise identical parameters.
    """
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _jsonable(value):
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a rename, so a kill never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


@jax.jit
def all_finite(tree: PyTree) -> jax.Array:
    """Whether every floating-point leaf of ``tree`` is finite (one jitted reduction)."""
    leaves = [jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)
              if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class _Progress(NamedTuple):
    """What a checkpoint stores beside the train state (all arrays)."""

    epoch: jax.Array
    best_val_accuracy: jax.Array
    best_val_epoch: jax.Array
    test_accuracy_at_best_val: jax.Array
    wall_seconds: jax.Array


def _fresh_progress(epoch: int = 0) -> _Progress:
    return _Progress(*map(np.asarray, (np.int32(epoch), np.float32(-1.0), np.int32(-1),
                                       np.float32(-1.0), np.float64(0.0))))


def _orbax():
    """``orbax.checkpoint``, imported on first use: only a run with a workdir needs it."""
    import orbax.checkpoint  # noqa: PLC0415 (0.13 s that in-memory fits skip)
    return orbax.checkpoint


def _restore(manager: ocp.CheckpointManager, state: TrainState, workdir: pathlib.Path):
    """Restores (state, progress) from the newest checkpoint that restores.

    A checkpoint whose files differ from the ones `fit` wrote (see
    `_record_files`), or that orbax fails to restore, is moved to
    ``workdir/damaged_checkpoints/`` with a one-line warning, and the next
    older one is tried, so that the run resumes from it.

    Raises:
        ValueError: no checkpoint restores; the message gives each one's reason.
    """
    ocp = _orbax()
    target = {"state": state, "progress": _fresh_progress()}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    failures = []
    for step in sorted(manager.all_steps(), reverse=True):
        damage = _damage(workdir / "checkpoints" / str(step))
        if damage is not None:
            failures.append((step, damage))
            continue
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as error:  # orbax and tensorstore raise many types
            failures.append((step, _first_line(error)))
            continue
        _drop_failed_reads()
        for damaged, reason in failures:
            if is_primary():
                _set_aside(workdir, damaged)
            warnings.warn(f"skipped the damaged checkpoint {damaged} of {workdir} "
                          f"(moved to damaged_checkpoints/): {reason}", stacklevel=3)
        sync_processes("randjax: damaged checkpoints set aside")
        manager.reload()
        state = jax.tree.unflatten(jax.tree.structure(state),
                                   jax.tree.leaves(restored["state"]))
        return state, _Progress(*jax.tree.leaves(restored["progress"]))
    _drop_failed_reads()
    raise ValueError(f"no checkpoint of {workdir / 'checkpoints'} restores: "
                     + "; ".join(f"step {s}: {reason}" for s, reason in failures))


_FILES = "randjax_files.json"


def _finish_saving(manager: ocp.CheckpointManager, workdir: pathlib.Path) -> None:
    """Waits for the newest asynchronous save, then records its files (`_record_files`)."""
    manager.wait_until_finished()
    step = manager.latest_step()
    if step is not None and is_primary():
        checkpoint = workdir / "checkpoints" / str(step)
        if not (checkpoint / _FILES).exists():
            _record_files(checkpoint)


def _record_files(checkpoint: pathlib.Path) -> None:
    """Writes the size and CRC-32 of every file of a saved checkpoint beside them."""
    files = {str(p.relative_to(checkpoint)): [p.stat().st_size, zlib.crc32(p.read_bytes())]
             for p in sorted(checkpoint.rglob("*")) if p.is_file() and p.name != _FILES}
    _write_atomic(checkpoint / _FILES, json.dumps(files))


def _damage(checkpoint: pathlib.Path) -> str | None:
    """What differs from the files `_record_files` saw, or None (also without a record).

    Checked before orbax reads the checkpoint: a read that fails inside
    orbax leaves a trail of asynchronous errors on stderr.
    """
    record = checkpoint / _FILES
    if not record.exists():
        return None
    for name, (size, crc) in json.loads(record.read_text()).items():
        path = checkpoint / name
        if not path.is_file():
            return f"its file {name} is missing"
        if path.stat().st_size != size:
            return f"its file {name} has {path.stat().st_size} bytes, {size} were written"
        if zlib.crc32(path.read_bytes()) != crc:
            return f"its file {name} differs from the one written (CRC-32)"
    return None


def _drop_failed_reads() -> None:
    """Collects orbax's abandoned read tasks without asyncio logging each one's traceback.

    A failed restore leaves its other reads' futures unretrieved; their
    errors repeat the one reported, so they are dropped here.
    """
    log = logging.getLogger("asyncio")
    level, log.level = log.level, logging.CRITICAL + 1
    try:
        gc.collect()
    finally:
        log.setLevel(level)


def _first_line(error: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[:limit] + "..."


def _set_aside(workdir: pathlib.Path, step: int) -> None:
    """Moves checkpoint ``step`` out of the manager's directory, keeping it for a look."""
    aside = workdir / "damaged_checkpoints" / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
    aside.parent.mkdir(exist_ok=True)
    shutil.move(workdir / "checkpoints" / str(step), aside)


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """The per-epoch records of a run: its ``metrics.jsonl``, one dict per epoch.

    Raises:
        FileNotFoundError: ``workdir`` holds no ``metrics.jsonl``.
    """
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _history(workdir: pathlib.Path) -> list[dict]:
    return read_metrics(workdir) if (workdir / "metrics.jsonl").exists() else []


def _learning_rate(opt_state) -> float | None:
    """The learning rate recorded by one `optax.inject_hyperparams` state, if any."""
    has_hyperparams = lambda node: hasattr(node, "hyperparams")
    rates = [node.hyperparams["learning_rate"]
             for node in jax.tree.leaves(opt_state, is_leaf=has_hyperparams)
             if has_hyperparams(node) and "learning_rate" in node.hyperparams]
    return float(rates[0]) if len(rates) == 1 else None


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #

def fit(model, dataset: data_lib.Dataset, tx: optax.GradientTransformation, *,
        epochs: int, batch_size: int, reparam: Reparam | None = None, seed: int = 0,
        workdir: str | pathlib.Path | None = None, checkpoint_every: int = 1,
        augmentation: Augmentation = Augmentation(), drop_remainder: bool = False,
        eval_batch_size: int = 1000, epoch_hook: EpochHook | None = None,
        eval_transform: Callable[[TrainState], TrainState] | None = None,
        devices=None, progress: bool = True, config: Mapping | None = None,
        variables: Mapping | None = None, start_step: int = 0,
        snapshot_steps: Iterable[int] = (), on_nonfinite: str = "stop",
        loss_fn: LossFn = cross_entropy, tensorboard: bool = False,
        writers: Iterable[MetricWriter] = ()) -> FitResult:
    """Trains ``model`` on ``dataset`` with ``tx`` for ``epochs`` epochs.

    Args:
        model: a Flax Linen module (its ``__call__`` with or without
            ``train``), a Flax NNX module, or plain functions wrapped by
            `randjax.models.from_functions` (Equinox models, hand-written
            ones); see `randjax.models.adapters`.
        dataset: a `randjax.data.Dataset` (its splits are moved to the device).
        tx: any optax transformation. Wrap it in `optax.inject_hyperparams`
            to have the learning rate logged.
        epochs: the epoch budget; a resumed run trains on up to it.
        batch_size: global batch size; must divide by the number of devices.
        reparam: how parameters are trained (default: `randjax.dense()`).
        seed: the run's only source of randomness (init, shuffling, dropout,
            augmentation, stochastic reparametrizations).
        workdir: where ``metrics.jsonl``, ``summary.json``, ``config.json``
            and orbax checkpoints go; None keeps everything in memory.
        checkpoint_every: save a checkpoint every this many epochs (and at the
            end); resumption restarts at the last saved epoch.
        augmentation: random crop / flip applied inside the jitted step.
        drop_remainder: skip the last partial batch of each epoch.
        eval_batch_size: chunk size for evaluation (rounded up to a multiple
            of the device count).
        epoch_hook: ``hook(epoch, state) -> dict`` called after each epoch;
            its entries are added to that epoch's metrics record. The next
            epoch reuses (donates) the state's buffers: copy what the hook
            keeps (``jnp.copy``, ``np.asarray``).
        eval_transform: ``transform(state) -> state`` applied (jitted) to
            the state before validation and test evaluation, never to
            training; e.g. LaPerm's projection onto the permutations of the
            initial weights (`randjax.methods.laperm.synced_state`), so that
            accuracy is measured right after a sync. Its ``__name__`` is
            recorded as ``eval_transform`` in every metrics record.
        devices: devices of the data mesh (default: all devices, of every
            process after `jax.distributed.initialize`).
        progress: show a tqdm progress bar (on process 0).
        config: a JSON-able description of the run, stored in
            ``config.json``; resuming with a different config (other than
            ``epochs``) raises instead of silently mixing two runs.
        variables: the model's initial variables (a Linen model's
            ``{"params": ..., "batch_stats": ...}``, else ``{"params": ...,
            "model_state": ...}``) in place of ``model.init``'s: trained
            weights to fine-tune, or weights rewound to an earlier step
            with their BatchNorm statistics (iterative pruning). ``reparam``
            splits their ``params``.
        start_step: begin at this global step of a ``seed``'s run: the
            epochs before it are skipped and the epoch holding it starts at
            its batch, with the data order and keys the whole run would
            have there (open_lth's rewinding, which trains the last ``T - k``
            of ``T`` steps). The optimizer's own step count still starts at
            0: shift its schedule by ``start_step`` to fast-forward it too.
        snapshot_steps: global steps (any, not only epoch ends) after which
            a copy of the state is kept in ``FitResult.snapshots`` (step 0:
            the initial state); with ``workdir`` also saved under
            ``snapshots/<step>`` and restored when the run resumes.
        on_nonfinite: ``"stop"`` (default): a non-finite training loss or
            non-finite parameters after an epoch raise `DivergenceError`
            naming the epoch and the first bad step, before that epoch is
            checkpointed, so the workdir keeps its last finite checkpoint.
            ``"continue"``: train on (a warning is issued once; non-finite
            numbers are written as ``null``); the last finite checkpoint is
            copied to ``workdir/last_finite_checkpoint/`` before the first
            non-finite one is saved.
        loss_fn: ``loss_fn(logits, labels) -> per-example losses`` (default:
            softmax cross-entropy, `cross_entropy`), e.g. with label
            smoothing; training minimises its batch mean, evaluation reports
            its mean as ``val_loss`` / ``test_loss``.
        tensorboard: also write TensorBoard event files to ``workdir``
            (`randjax.writers.TensorBoardWriter`; needs ``tensorboardX``).
        writers: more `randjax.writers.MetricWriter` s, each given every
            epoch's record (on process 0); `fit` does not close them.

    A ``workdir`` that holds checkpoints is resumed only by the same run:
    `run_fingerprint` (model, method, optimizer, initial state, data, seed,
    batch size, ...) is stored in ``fingerprint.json`` and a difference
    raises, with or without ``config``; so does an ``epochs`` budget below
    the epochs the workdir has already trained. A damaged newest checkpoint
    is set aside (with a warning) and the run resumes from the newest one
    that restores.

    Returns:
        A `FitResult` with the final state, the summary dict, the per-epoch
        history, the per-step training losses of this call and the snapshots.

    Raises:
        ValueError: invalid arguments; a model whose output width does not
            fit the data set's classes, or labels outside them; a workdir
            that holds another run, or more epochs than ``epochs``.
        DivergenceError: with ``on_nonfinite="stop"``, training diverged.
    """
    epochs = check_int(epochs, "epochs", minimum=0)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", minimum=1)
    eval_batch_size = check_int(eval_batch_size, "eval_batch_size", minimum=1)
    check_int(seed, "seed")
    check_choice(on_nonfinite, ("stop", "continue"), "on_nonfinite")
    if tensorboard and workdir is None:
        raise ValueError("tensorboard=True writes event files to the workdir: pass workdir")
    _check_labels(dataset)
    check_loss_fn(loss_fn, dataset.num_classes)
    model = as_model(model)
    reparam = reparam or dense()
    mesh = data_mesh(devices)
    num_devices = mesh.devices.size
    if batch_size % num_devices:
        raise ValueError(f"batch_size {batch_size} does not divide evenly over "
                         f"{num_devices} devices; use a multiple of {num_devices}")
    num_train = len(dataset.train.y)
    if num_train < batch_size and drop_remainder:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_train} training "
                         f"examples and drop_remainder=True leaves no step")
    steps_per_epoch = epoch_steps(num_train, batch_size, drop_remainder)
    start_step = check_int(start_step, "start_step", minimum=0)
    snapshot_steps = sorted({check_int(k, "snapshot step", minimum=0) for k in snapshot_steps})
    last_step = epochs * steps_per_epoch
    for k in (start_step, *snapshot_steps):
        if not start_step <= k <= last_step:
            raise ValueError(f"step {k} is outside this run's steps [{start_step}, "
                             f"{last_step}] ({epochs} epochs of {steps_per_epoch} steps)")
    to_device = lambda tree: replicate(tree, mesh)

    init_key, train_key, eval_key = _fit_keys(seed)
    init_start = time.perf_counter()
    state = jax.block_until_ready(to_device(init_state(
        model, reparam, tx, dataset.input_shape, init_key, variables=variables,
        step=start_step)))
    init_seconds = time.perf_counter() - init_start
    _check_output_width(model, reparam, state, dataset)
    train_x, train_y = to_device((dataset.train.x, dataset.train.y))
    chunk = -(-eval_batch_size // num_devices) * num_devices
    eval_splits = {name: to_device(data_lib.pad_to_chunks(split, chunk))
                   for name, split in (("val", dataset.val), ("test", dataset.test))
                   if len(split.y)}

    if augmentation.pad_value is None:
        augmentation = dataclasses.replace(
            augmentation, pad_value=tuple(float(v) for v in -dataset.mean / dataset.std))
    train_step = make_train_step(model, reparam, tx, augmentation, loss_fn)
    epoch_fns = {}

    def epoch_fn(begin, stop):
        if (begin, stop) not in epoch_fns:
            epoch_fns[begin, stop] = make_epoch_fn(train_step, mesh, num_train, batch_size,
                                                   drop_remainder, begin, stop)
        return epoch_fns[begin, stop]

    evaluate = make_eval_fn(model, reparam, mesh, chunk, loss_fn, eval_transform)

    def fingerprint():
        return run_fingerprint(
            model, reparam, dataset, state, seed=seed, batch_size=batch_size,
            drop_remainder=drop_remainder, augmentation=dataclasses.astuple(augmentation),
            start_step=start_step, eval_transform=getattr(eval_transform, "__name__", None),
            loss=None if loss_fn is cross_entropy else _function_name(loss_fn))

    if jax.process_count() > 1:
        check_same_run(fingerprint())
    first_epoch, first_batch = divmod(start_step, steps_per_epoch)
    prog, history, manager, snapshots = _fresh_progress(first_epoch), [], None, {}
    resume_epoch = None
    if workdir is not None:
        workdir = pathlib.Path(workdir).absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        _check_config(workdir / "config.json", config)
        ocp = _orbax()
        manager = ocp.CheckpointManager(
            workdir / "checkpoints",
            # Asynchronous: `save` returns once the state is copied to the host
            # and the files are written while the next epoch trains. orbax
            # commits a checkpoint (renames it into place) only when all of it
            # is written, so a killed run resumes from the last complete one.
            options=ocp.CheckpointManagerOptions(max_to_keep=2,
                                                 enable_async_checkpointing=True))
        resuming = bool(manager.all_steps())
        _check_fingerprint(workdir, fingerprint(), resuming)
        if resuming:
            state, prog = _restore(manager, state, workdir)
            if int(prog.epoch) > epochs:
                raise ValueError(f"{workdir} holds a run trained for {int(prog.epoch)} "
                                 f"epochs, more than epochs={epochs}: pass epochs >= "
                                 f"{int(prog.epoch)} to resume it, or use a new workdir")
            history = [r for r in _history(workdir) if r["epoch"] <= int(prog.epoch)]
            resume_epoch = int(prog.epoch)
            snapshots = {k: _load_snapshot(workdir, k, state)
                         for k in snapshot_steps if k <= int(state.step)}
    writers = list(writers) if is_primary() else []
    owned = []   # the writers fit opens, and closes
    if workdir is not None and is_primary():
        owned.append(JsonlWriter(workdir / "metrics.jsonl", resume_epoch=resume_epoch))
        if tensorboard:
            owned.append(TensorBoardWriter(workdir, resume_epoch=resume_epoch))

    def take_snapshot(state):
        k = int(state.step)
        if k in snapshot_steps and k not in snapshots:
            snapshots[k] = jax.device_get(state)
            if workdir is not None:
                _save_snapshot(workdir, k, snapshots[k])

    step_losses, diverged = [], False
    checkpoint_seconds = eval_seconds = epochs_seconds = 0.0
    first_epoch_unix = None
    start_epoch = int(prog.epoch)
    start_time = time.perf_counter() - float(prog.wall_seconds)
    # Compile ahead, so that epoch times measure training alone.
    compile_seconds = 0.0
    if start_epoch < epochs:
        epoch_fns[0, None] = epoch_fn(0, None).lower(
            state, train_x, train_y, train_key, start_epoch).compile()
        compile_seconds = time.perf_counter() - start_time - float(prog.wall_seconds)
    eval_pending = bool(eval_splits)
    bar = tqdm.tqdm(range(start_epoch, epochs), initial=start_epoch, total=epochs, desc="train",
                    unit="epoch", disable=not (progress and is_primary()), leave=False)
    try:
        for epoch in bar:
            epoch_start = time.perf_counter()
            first_epoch_unix = first_epoch_unix or time.time()
            begin = first_batch if epoch == first_epoch else 0
            first = epoch * steps_per_epoch
            cuts = [k - first for k in snapshot_steps
                    if first + begin < k < first + steps_per_epoch]
            take_snapshot(state)
            outs = []
            for a, b in zip([begin, *cuts], [*cuts, None]):
                state, *out = epoch_fn(a, b)(state, train_x, train_y, train_key, epoch)
                if eval_pending:   # trace and compile it while the first epoch runs
                    evaluate.lower(state, eval_splits, eval_key, epoch).compile()
                    eval_pending = False
                outs.append(out)
                if b is not None:
                    take_snapshot(state)
            # Queued behind the epoch, evaluation runs while the host reads the epoch.
            metrics = (evaluate(state, eval_splits, eval_key, epoch)
                       if eval_splits else None)
            parts = [[np.atleast_1d(a) for a in jax.device_get(out)] for out in outs]
            losses, accs, sizes, finite = (np.concatenate(a) for a in zip(*parts))
            problem = find_nonfinite(losses, bool(finite.all()), int(state.step), epoch + 1, begin)
            train_seconds = time.perf_counter() - epoch_start
            epochs_seconds += train_seconds
            if problem is not None:
                if on_nonfinite == "stop":
                    if manager is not None:   # the last finite checkpoint, complete
                        _finish_saving(manager, workdir)
                    raise DivergenceError(
                        f"training diverged: {problem[0]}. "
                        + (f"{workdir} keeps its last finite checkpoint (epoch "
                           f"{manager.latest_step()}). " if manager and manager.latest_step()
                           else "")
                        + "Lower the learning rate, or pass on_nonfinite='continue' to train "
                        "on regardless.", epoch + 1, problem[1])
                if not diverged:
                    warnings.warn(f"training diverged: {problem[0]}; continuing as "
                                  "on_nonfinite='continue' asks", stacklevel=2)
                    _keep_last_finite(manager, workdir)
                diverged = True
            step_losses.append(losses)
            record = {"epoch": epoch + 1, "step": int(state.step),
                      "train_loss": float(np.average(losses, weights=sizes)),
                      "train_accuracy": float(np.average(accs, weights=sizes)),
                      "learning_rate": _learning_rate(state.opt_state),
                      "epoch_seconds": train_seconds}
            eval_start = time.perf_counter()
            if eval_transform is not None:
                record["eval_transform"] = getattr(eval_transform, "__name__", repr(eval_transform))
            if eval_splits:
                metrics = jax.device_get(metrics)
                for name in eval_splits:   # val, then test
                    loss, acc = metrics[name]
                    record[f"{name}_loss"], record[f"{name}_accuracy"] = float(loss), float(acc)
            eval_seconds += time.perf_counter() - eval_start
            if epoch_hook is not None:
                record.update({k: _jsonable(v) for k, v in epoch_hook(epoch + 1, state).items()})
            prog = _update_progress(prog, record, time.perf_counter() - start_time)
            record["wall_seconds"] = float(prog.wall_seconds)
            history.append(record)
            shown = "val" if "val_accuracy" in record else "test"
            bar.set_postfix({"loss": f"{record['train_loss']:.4f}",
                             shown: f"{record.get(shown + '_accuracy', float('nan')):.4f}"})
            for writer in owned + writers:
                writer.write(record)
            if manager is not None and ((epoch + 1) % checkpoint_every == 0
                                        or epoch + 1 == epochs):
                save_start = time.perf_counter()
                _finish_saving(manager, workdir)
                manager.save(epoch + 1, args=ocp.args.StandardSave(   # by every process
                    {"state": state, "progress": prog}))
                checkpoint_seconds += time.perf_counter() - save_start
        take_snapshot(state)
    finally:   # also when an epoch or a hook raises: no save is left half-written
        bar.close()
        for writer in owned:
            writer.close()
        if manager is not None:
            save_start = time.perf_counter()
            _finish_saving(manager, workdir)
            manager.close()
            checkpoint_seconds += time.perf_counter() - save_start

    summary = _summary(state, prog, history, num_devices)
    # This call's time, by phase (a resumed run's earlier calls not included).
    summary.update(init_seconds=init_seconds, compile_seconds=compile_seconds,
                   train_seconds=epochs_seconds, eval_seconds=eval_seconds,
                   checkpoint_seconds=checkpoint_seconds,
                   first_epoch_unix=first_epoch_unix)
    summary["start_step"] = start_step
    if workdir is not None and is_primary():
        _write_atomic(workdir / "summary.json",
                      json.dumps(finite_json(summary), indent=2, allow_nan=False) + "\n")
    losses = np.concatenate(step_losses) if step_losses else np.zeros((0,), np.float32)
    return FitResult(state, summary, history, losses, snapshots)


def find_nonfinite(losses: np.ndarray, finite: bool, step: int, epoch: int,
                   begin: int = 0) -> tuple[str, int] | None:
    """``(what happened, global step)`` if an epoch's training went non-finite, else None.

    `fit`'s divergence check after every epoch, on what the jitted epoch
    returns anyway (no host round trip per step, no extra dispatch):
    ``losses``, its per-step losses on the host, and ``finite``, whether
    the parameters after it are finite (`all_finite`, computed inside the
    epoch). ``step`` is the global step after the epoch, ``epoch`` its
    number (1-based) and ``begin`` the batch it started at.
    """
    first_step = step - len(losses)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        i = int(bad[0])
        return (f"the training loss became {losses[i]} at step {first_step + i + 1} "
                f"(epoch {epoch}, batch {begin + i + 1})", first_step + i + 1)
    if not finite:
        return (f"the parameters became non-finite in epoch {epoch} (by step {step}), "
                "while every loss was finite", step)
    return None


def _keep_last_finite(manager: ocp.CheckpointManager | None, workdir) -> None:
    """Copies the newest checkpoint to ``last_finite_checkpoint/`` (once per workdir)."""
    if manager is None:
        return
    _finish_saving(manager, workdir)
    if manager.latest_step() is None or not is_primary():
        return
    target = workdir / "last_finite_checkpoint"
    if not target.exists():
        shutil.copytree(workdir / "checkpoints" / str(manager.latest_step()),
                        target / str(manager.latest_step()))


def _check_labels(dataset: data_lib.Dataset) -> None:
    """Every label of every split in ``[0, dataset.num_classes)``, else ValueError."""
    for name in ("train", "val", "test"):
        y = np.asarray(getattr(dataset, name).y)
        bad = np.flatnonzero((y < 0) | (y >= dataset.num_classes))
        if bad.size:
            raise ValueError(
                f"data set {dataset.name!r}: the {name} split has label {y[bad[0]]} at "
                f"index {bad[0]}, outside its num_classes={dataset.num_classes} classes")


def _check_output_width(model, reparam: Reparam, state: TrainState,
                        dataset: data_lib.Dataset) -> None:
    """The model's logits must be ``(batch, classes)`` with a class per label."""
    x = jax.ShapeDtypeStruct((1, *dataset.input_shape), jnp.float32)
    logits, _ = jax.eval_shape(
        lambda s, x: _logits(model, reparam, (s.trainable, s.frozen, s.model_state), x,
                             jax.random.key(0), train=False), state, x)
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits of shape (batch, classes); it "
                         f"returns shape {logits.shape} for a batch of 1")
    width = logits.shape[-1]
    if width < dataset.num_classes:
        raise ValueError(
            f"the model outputs {width} logits but data set {dataset.name!r} has "
            f"{dataset.num_classes} classes: build it with num_classes="
            f"{dataset.num_classes}")
    if width > dataset.num_classes:
        warnings.warn(f"the model outputs {width} logits for data set {dataset.name!r} "
                      f"of {dataset.num_classes} classes: {width - dataset.num_classes} "
                      "outputs can never be a label", stacklevel=3)


def epoch_steps(num_train: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Optimizer steps in one epoch of `fit` (the remainder batch counts as one)."""
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    full, rest = divmod(num_train, batch_size)
    return full + (1 if rest and not drop_remainder else 0)


def _snapshot_path(workdir: pathlib.Path, step: int) -> pathlib.Path:
    return workdir / "snapshots" / str(step)


def _save_snapshot(workdir: pathlib.Path, step: int, state: TrainState) -> None:
    ocp = _orbax()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(_snapshot_path(workdir, step), state, force=True)
        checkpointer.wait_until_finished()


def _load_snapshot(workdir: pathlib.Path, step: int, like: TrainState) -> TrainState:
    ocp = _orbax()
    path = _snapshot_path(workdir, step)
    if not path.exists():
        raise ValueError(f"{workdir} resumes past step {step}, but holds no snapshot of it "
                         f"({path}): was it started without that snapshot step?")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(path, abstract)
    return jax.device_get(jax.tree.unflatten(jax.tree.structure(like),
                                             jax.tree.leaves(restored)))


def _update_progress(prog: _Progress, record: dict, wall_seconds: float) -> _Progress:
    val = record.get("val_accuracy")
    better = val is not None and val > float(prog.best_val_accuracy)
    return _Progress(*map(np.asarray, _Progress(
        epoch=np.int32(record["epoch"]),
        best_val_accuracy=np.float32(val) if better else prog.best_val_accuracy,
        best_val_epoch=np.int32(record["epoch"]) if better else prog.best_val_epoch,
        test_accuracy_at_best_val=(np.float32(record.get("test_accuracy", -1.0))
                                   if better else prog.test_accuracy_at_best_val),
        wall_seconds=np.float64(wall_seconds))))


def _summary(state: TrainState, prog: _Progress, history: list[dict], num_devices: int):
    last = history[-1] if history else {}
    has_val = int(prog.best_val_epoch) >= 0
    epoch_seconds = [r["epoch_seconds"] for r in history]
    return {
        "test_accuracy": last.get("test_accuracy"),
        "best_val_accuracy": float(prog.best_val_accuracy) if has_val else None,
        "best_val_epoch": int(prog.best_val_epoch) if has_val else None,
        "test_accuracy_at_best_val": (float(prog.test_accuracy_at_best_val)
                                      if has_val else None),
        "final_train_loss": last.get("train_loss"),
        "epochs": int(prog.epoch),
        "steps": int(state.step),
        "num_devices": num_devices,
        "num_processes": jax.process_count(),
        "wall_seconds": float(prog.wall_seconds),
        "median_epoch_seconds": float(np.median(epoch_seconds)) if epoch_seconds else None,
        "params_sha256": params_sha256(
            {"trainable": state.trainable, "frozen": state.frozen,
             "model_state": state.model_state}),
    }


def _function_name(fn) -> str:
    """A function's qualified name, or its description (e.g. a `functools.partial`)."""
    name = getattr(fn, "__qualname__", None)
    return f"{getattr(fn, '__module__', '')}.{name}" if name else describe(fn)


def _short_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shapes(tree: PyTree) -> dict[str, str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): f"{leaf.dtype}{list(leaf.shape)}" for p, leaf in leaves}


def _data_digest(dataset: data_lib.Dataset) -> str:
    """SHA-256 of every label and of 64 evenly spaced training images."""
    digest = hashlib.sha256()
    for split in (dataset.train, dataset.val, dataset.test):
        digest.update(np.ascontiguousarray(split.y).tobytes())
    x = dataset.train.x
    digest.update(np.ascontiguousarray(x[::max(1, len(x) // 64)]).tobytes())
    return digest.hexdigest()[:16]


def _hyperparams(opt_state) -> dict[str, float]:
    """The initial values of every `optax.inject_hyperparams` hyperparameter."""
    has_hyperparams = lambda node: hasattr(node, "hyperparams")
    found = {}
    for node in jax.tree.leaves(opt_state, is_leaf=has_hyperparams):
        if has_hyperparams(node):
            found.update({k: float(v) for k, v in node.hyperparams.items()
                          if np.ndim(v) == 0})
    return found


def run_fingerprint(model, reparam: Reparam, dataset: data_lib.Dataset, state: TrainState,
                    **settings) -> dict:
    """What identifies a run of `fit` beyond its epoch budget, as JSON-able values.

    The model's description, the method (its ``spec``, else its functions'
    names), the optimizer state's structure and initial hyperparameters, the
    shapes and the SHA-256 of the initial state (which pins the seed, the
    initial weights and any ``variables`` given), the data set (name, split
    sizes, a digest of its labels and of some images) and ``settings`` (seed,
    batch size, ...). `fit` stores it in ``workdir/fingerprint.json`` and
    refuses to resume a workdir whose fingerprint differs.
    """
    method = reparam.spec or getattr(reparam.init, "__qualname__", describe(reparam.init))
    return {
        **{k: finite_json(_jsonable(v)) for k, v in settings.items()},
        "model": as_model(model).name,
        "method": json.loads(json.dumps(method, default=str)),
        "optimizer_state": _short_digest(describe(jax.tree.structure(state.opt_state))),
        "optimizer_hyperparams": finite_json(_hyperparams(state.opt_state)),
        "state_shapes": _shapes({"trainable": state.trainable, "frozen": state.frozen,
                                 "model_state": state.model_state}),
        "initial_state_sha256": params_sha256(
            {"trainable": state.trainable, "frozen": state.frozen,
             "model_state": state.model_state}),
        "data": {"name": dataset.name, "sizes": [len(s.y) for s in
                                                 (dataset.train, dataset.val, dataset.test)],
                 "input_shape": list(dataset.input_shape),
                 "num_classes": dataset.num_classes, "digest": _data_digest(dataset)},
    }


def check_same_run(fingerprint: dict) -> None:
    """Every process of a multi-process `fit` must run the same run (`run_fingerprint`).

    Processes that differ (another config, data set or seed) would train
    different replicas as one and average nonsense; they are stopped before
    the first step.

    Raises:
        ValueError: on every process, naming the processes whose run differs
            from process 0's and (here) the entries of this process's
            fingerprint that differ.
    """
    text = json.dumps(fingerprint, sort_keys=True)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(digest))
    differ = [i for i in range(len(everyone)) if not np.array_equal(everyone[i], everyone[0])]
    if differ:
        raise ValueError(
            f"the {len(everyone)} processes do not run the same fit: processes {differ} "
            "differ from process 0 in the model, method, optimizer, initial state, data "
            "or settings (see run_fingerprint); start every process with the same "
            f"command and data. This process's run: {_short_digest(text)}")


def _check_fingerprint(workdir: pathlib.Path, fingerprint: dict, resuming: bool) -> None:
    """Stores ``fingerprint``; refuses to resume a workdir that holds another run."""
    path = workdir / "fingerprint.json"
    if resuming and path.exists():
        previous = json.loads(path.read_text())
        differ = [k for k in sorted(set(previous) | set(fingerprint))
                  if previous.get(k) != fingerprint.get(k)]
        if differ:
            shown = lambda v: (s if len(s := json.dumps(v)) <= 80 else s[:77] + "...")
            details = "; ".join(f"{k}: was {shown(previous.get(k))}, now "
                                f"{shown(fingerprint.get(k))}" for k in differ)
            raise ValueError(f"{workdir} holds another run, which fit would resume: "
                             f"{details}. Use a new workdir, or the run's own arguments.")
    elif resuming:
        warnings.warn(f"{workdir} has checkpoints but no fingerprint.json (written by an "
                      "older randjax): resuming it unchecked", stacklevel=3)
    if is_primary():
        _write_atomic(path, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


def _check_config(path: pathlib.Path, config: Mapping | None):
    """Stores ``config``; refuses to resume a workdir written by another config."""
    if config is None:
        return
    config = json.loads(json.dumps(dict(config), default=str))
    if path.exists():
        previous = json.loads(path.read_text())
        differ = sorted(k for k in set(previous) | set(config)
                        if k != "epochs" and previous.get(k) != config.get(k))
        if differ:
            raise ValueError(f"{path.parent} holds a run with a different config "
                             f"(keys {differ}); use a new --workdir or the same config")
    if is_primary():
        _write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
