"""LaPerm: train by permuting the initial weights, as an optax transformation.

`laperm` wraps any inner optimizer, like `optax.lookahead`: the inner
optimizer takes ordinary steps, and every ``sync_period`` steps each weight
vector is reset to its own *initial* values, rearranged in the ranking of the
current weights (`randjax.permute.sync`). After a sync the network's weights
are a per-vector permutation of the initial ones: training has only
reconnected them.

Floating-point ``params + (target - params)`` need not equal ``target``
(``3 + (1e-8 - 3)`` is 0), so `LaPermState` is a `randjax.reparam.Projection`:
`randjax.apply_updates` applies the updates and then snaps the synced leaves
to the recorded target, bitwise. Use it in place of `optax.apply_updates`
(`randjax.fit` does) whenever the permutation invariant must hold exactly.

Also here: `synced_params` (the network a sync would give now, to evaluate
or export between syncs), `random_prune` and `shared_value` (the paper's
sparse and weight-agnostic starting points, Sec. 5.4-5.5) and
`save_permuted`, the compact export of a LaPerm network as its zoo model,
init key and one permutation per weight vector (its codec is registered as
``"laperm"``, so `randjax.export.load` reads it).

References:
    Qiu & Suda, "Train by Reconnect: Decoupling Locations of Weights from
    their Values", NeurIPS 2020. https://arxiv.org/abs/2003.02570
    Reference code: ihsuy/Train-by-Reconnect (TensorFlow).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from randjax import export, models, permute, tree

PyTree = Any
Schedule = Callable[[jax.Array], Any]

__all__ = ["LaPermState", "OutputAxis", "laperm", "laperm_states", "random_prune",
           "save_permuted", "shared_value", "synced_params", "synced_state"]


@jax.tree_util.register_static
class OutputAxis:
    """A static (leafless, hashable) pytree node holding `laperm`'s ``output_axis``.

    It lives in `LaPermState` so that the axis survives ``jit`` as a Python
    int, not a traced value.
    """

    __slots__ = ("axis",)

    def __init__(self, axis: int):
        self.axis = int(axis)

    def __eq__(self, other) -> bool:
        return isinstance(other, OutputAxis) and other.axis == self.axis

    def __hash__(self) -> int:
        return hash((OutputAxis, self.axis))

    def __repr__(self) -> str:
        return f"OutputAxis({self.axis})"


class LaPermState(NamedTuple):
    """State of `laperm`.

    Attributes:
        inner_state: the inner optimizer's state.
        count: int32 number of updates taken.
        sorted0: sorted initial weight vectors (`randjax.permute.sort_vectors`),
            ``None`` at leaves LaPerm skips.
        synced: bool, whether the last update was a sync step.
        target: the weights the last sync step set (``None`` at skipped
            leaves); `project` (through `randjax.apply_updates`) snaps to
            them when ``synced``.
        layout: ``None`` for the default ``output_axis=-1``, else a static
            (leafless) `OutputAxis` recording the ``output_axis`` given to
            `laperm`, so that `synced_params` syncs the same weight vectors.
    """

    inner_state: optax.OptState
    count: jax.Array
    sorted0: PyTree
    synced: jax.Array
    target: PyTree
    layout: OutputAxis | None = None

    @property
    def output_axis(self) -> int:
        """The axis of a permuted leaf that holds its output units (-1 or 0, ...)."""
        return -1 if self.layout is None else self.layout.axis

    def project(self, params: PyTree) -> PyTree:
        """``params`` with the synced leaves set to ``target`` on sync steps.

        The `randjax.reparam.Projection` that `randjax.apply_updates` applies
        after the update: bitwise the permutation the sync computed.
        """
        return jax.tree.map(
            lambda t, p: p if _is_empty(t) else jnp.where(self.synced, t, p),
            self.target, params, is_leaf=_is_empty)


def _is_empty(x) -> bool:
    return x is None or isinstance(x, optax.MaskedNode)


#: Update counts at which `laperm` calls a sync-period schedule when it is built.
_PROBED_COUNTS = (0, 1, 2, 10, 100, 1_000, 10_000, 100_000, 1_000_000)


def _check_schedule(schedule: Schedule) -> Schedule:
    """``schedule`` if it returns a finite real scalar at every `_PROBED_COUNTS`.

    Inside jit a bad period cannot raise, so the schedule is called here,
    eagerly, at a few counts; one that depends on traced values is not
    checked.
    """
    for count in _PROBED_COUNTS:
        with jax.ensure_compile_time_eval():
            value = schedule(jnp.asarray(count, jnp.int32))
        if isinstance(value, jax.core.Tracer):
            return schedule
        array = np.asarray(value)
        if (array.shape != () or array.dtype == bool
                or not np.issubdtype(array.dtype, np.number)
                or not np.isfinite(array)):
            raise ValueError(
                f"laperm: sync_period schedule(count) must return a finite real scalar, "
                f"got {value!r} at count {count}")
    return schedule


def _check_period(sync_period) -> int | Schedule:
    if callable(sync_period):
        return _check_schedule(sync_period)
    return tree.check_int(sync_period, "laperm: sync_period", minimum=1,
                          what="or a schedule count -> int")


def _period(sync_period: int | Schedule, count: jax.Array) -> jax.Array:
    if not callable(sync_period):
        return jnp.asarray(sync_period, jnp.int32)
    # Schedules may return floats (optax schedules do); a period below 1, or
    # a non-finite one at a count `_check_schedule` did not probe, cannot
    # raise inside jit and is taken as 1 (sync every step).
    period = jnp.asarray(sync_period(count))
    period = jnp.where(jnp.isfinite(period), jnp.round(period), 1).astype(jnp.int32)
    return jnp.maximum(period, 1)


def laperm(inner: optax.GradientTransformation,
           sync_period: int | Schedule = 20, *,
           filter: tree.Filter | None = None,
           include_1d: bool = False,
           reset_inner_state: bool = False,
           output_axis: int = -1) -> optax.GradientTransformation:
    """Lookahead Permutation: inner steps, then a permutation of theta_0.

    A *weight vector* is all weights feeding one output unit. Which axis of
    a kernel holds the output units depends on the layout: Flax and the
    zoo use ``(in, out)`` / ``(h, w, in, out)``, the output last (the
    default ``output_axis=-1``: vectors are the columns of
    ``leaf.reshape(-1, out)``); Equinox and PyTorch-converted weights use
    ``(out, in)`` / ``(out, in, kh, kw)``, the output first
    (``output_axis=0``: vector ``o`` is ``leaf[o]``, all ``in * kh * kw``
    weights of filter ``o``).

    Every update runs ``inner``; on the updates that complete a period
    (update number ``n = count + 1`` with ``n % k == 0``, ``k`` the sync
    period), each selected weight vector ``w`` of ``params + inner_updates``
    is replaced by ``sorted0[ranks(w)]``, its sorted initial values in the
    ranking of ``w``, and the returned update of that leaf is
    ``target - params``. Skipped leaves (biases and BatchNorm by default)
    are trained by ``inner`` alone. The inner state is kept across syncs,
    as in the reference code.

    Apply the updates with `randjax.apply_updates` to have the synced
    weights bitwise equal to a permutation of the initial ones (with
    `optax.apply_updates` they are equal up to float rounding). Place
    `laperm` last in an `optax.chain`: a transformation after it would move
    the synced weights off the permutation.

    Args:
        inner: the inner optimizer (the paper uses Adam).
        sync_period: ``k``, a Python int >= 1, or a schedule
            ``schedule(count) -> int`` called with the number of updates
            taken before this one (optax's convention; the reference code's
            ``k_schedule`` is per epoch: ``lambda c: f(c // steps_per_epoch)``).
            Floats are rounded; a scheduled period below 1 is treated as 1.
            The schedule is called when `laperm` is built, at counts 0, 1, 2
            and powers of 10 up to 10**6: a non-finite or non-scalar value
            there raises ValueError (inside jit it could not; a non-finite
            value at another count is treated as 1).
        filter: ``filter(path, leaf) -> bool`` selects the leaves to permute
            (default: kernels, ``leaf.ndim >= 2``, as `randjax.is_kernel`).
        include_1d: also permute 1-D leaves (biases, BatchNorm scales and
            offsets), each as one weight vector, as the reference does with
            ``skip_bias=False, skip_bn=False``.
        reset_inner_state: re-initialise the inner state on every sync step.
        output_axis: the axis of every permuted leaf with ndim >= 2 that
            holds its output units: -1 (default, Flax ``(..., in, out)``) or
            e.g. 0 (Equinox / PyTorch ``(out, in, ...)``). 1-D leaves are one
            vector whatever it is. Recorded in the state (`LaPermState.layout`)
            for `synced_params`.

    Returns:
        An `optax.GradientTransformation` whose state is a `LaPermState`;
        its ``update`` requires ``params``.

    Raises:
        ValueError: ``sync_period`` is not an int >= 1 (bools included) or a
            callable; a schedule returns a non-finite or non-scalar value at a
            probed count (the message names the count); ``inner`` is not a
            gradient transformation; ``filter`` is not callable; a flag is not
            a bool; ``init`` finds no leaf to permute; ``update`` gets params
            of another structure than ``init``; ``output_axis`` is not an int,
            or (at ``init``) is out of range for a selected leaf (the message
            names the leaf and the axis).

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from randjax import apply_updates, laperm
        >>> params = {"kernel": jnp.array([[1., -2.], [3., 0.5]])}
        >>> tx = laperm(optax.sgd(10.0), sync_period=1)
        >>> state = tx.init(params)
        >>> grads = {"kernel": jnp.array([[1., 0.], [0., -1.]])}
        >>> updates, state = tx.update(grads, state, params)
        >>> apply_updates(params, updates, state)["kernel"].tolist()
        [[1.0, -2.0], [3.0, 0.5]]
        >>> grads = {"kernel": jnp.array([[-1., 0.], [1., -1.]])}
        >>> updates, state = tx.update(grads, state, params)
        >>> apply_updates(params, updates, state)["kernel"].tolist()
        [[3.0, -2.0], [1.0, 0.5]]

    References:
        Qiu & Suda, "Train by Reconnect: Decoupling Locations of Weights from
        their Values", NeurIPS 2020, Sec. 4, Alg. 1.
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise ValueError(f"laperm: inner must be an optax GradientTransformation, got {inner!r}")
    include_1d = tree.check_bool(include_1d, "laperm: include_1d")
    reset_inner_state = tree.check_bool(reset_inner_state, "laperm: reset_inner_state")
    base = tree.is_kernel if filter is None else tree.check_filter(filter, "laperm: filter")
    permute.check_output_axis(output_axis, 0)
    output_axis = int(output_axis)
    layout = None if output_axis == -1 else OutputAxis(output_axis)
    sync_period = _check_period(sync_period)  # last: a schedule is called (JAX runs)

    def select(path, leaf) -> bool:
        return bool(base(path, leaf)) or (include_1d and getattr(leaf, "ndim", 0) == 1)

    def init_fn(params):
        try:
            sorted0 = permute.sort_vectors(params, filter=select, output_axis=output_axis)
        except ValueError as error:
            raise ValueError(f"laperm: {error}") from None
        if not any(s is not None for s in jax.tree.leaves(sorted0, is_leaf=_is_empty)):
            raise ValueError("laperm: the filter selects no leaf of params to permute")
        for s in jax.tree.leaves(sorted0):
            if not jnp.issubdtype(s.dtype, jnp.floating):
                raise ValueError(f"laperm: selected leaves must be floating, got {s.dtype}")
        # The last target, only read when `synced`; the sorted copy has the
        # right shapes and dtypes.
        target = jax.tree.map(jnp.array, sorted0)
        return LaPermState(inner_state=inner.init(params),
                           count=jnp.zeros((), jnp.int32), sorted0=sorted0,
                           synced=jnp.zeros((), bool), target=target, layout=layout)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("laperm: update needs params (tx.update(grads, state, params))")
        sorted_leaves, treedef = jax.tree.flatten(state.sorted0, is_leaf=_is_empty)
        try:
            param_leaves = treedef.flatten_up_to(params)
        except (ValueError, TypeError) as error:
            raise ValueError("laperm.update: params must have the structure given to "
                             f"init: {error}") from None
        for s, p in zip(sorted_leaves, param_leaves):
            if not _is_empty(s) and jnp.shape(s) != jnp.shape(p):
                raise ValueError(f"laperm.update: a params leaf of shape {jnp.shape(p)} "
                                 f"was of shape {jnp.shape(s)} at init")
        inner_updates, inner_state = inner.update(updates, state.inner_state, params)
        do_sync = (state.count + 1) % _period(sync_period, state.count) == 0

        def synced():
            update_leaves = treedef.flatten_up_to(inner_updates)
            out, kept = [], []
            for s, u, p in zip(sorted_leaves, update_leaves, param_leaves):
                if _is_empty(s):
                    out.append(u)
                    kept.append(s)
                    continue
                p = jnp.asarray(p)
                moved = (p + u).astype(p.dtype)   # as optax.apply_updates
                target = permute.sync_leaf(s, moved, output_axis).astype(p.dtype)
                out.append((target - p).astype(jnp.result_type(u)))
                kept.append(target)
            return treedef.unflatten(out), treedef.unflatten(kept)

        # A real branch: the sorts run on sync steps only.
        new_updates, target = jax.lax.cond(
            do_sync, synced, lambda: (inner_updates, state.target))
        if reset_inner_state:
            inner_state = optax.tree_utils.tree_where(do_sync, inner.init(params),
                                                      inner_state)
        return new_updates, LaPermState(inner_state, optax.safe_increment(state.count),
                                        state.sorted0, do_sync, target, layout)

    return optax.GradientTransformation(init_fn, update_fn)


def laperm_states(opt_state: PyTree) -> list[LaPermState]:
    """Every `LaPermState` inside an optimizer state (chains, nested tuples)."""
    is_state = lambda x: isinstance(x, LaPermState)
    return [s for s in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(s)]


def synced_params(params: PyTree, opt_state: PyTree) -> PyTree:
    """The network a sync would give now: ``params`` projected onto theta_0's permutations.

    Every leaf that a `LaPermState` in ``opt_state`` permutes is replaced by
    `randjax.permute.sync` of its sorted initial vectors, in the ranking of
    its current values (the other leaves are returned unchanged), with the
    ``output_axis`` that `laperm` was given (kept in the state). The result
    is bitwise a per-vector permutation of the initial weights, whatever the
    step: evaluate it to measure accuracy "right after a sync" at a step that
    is not a sync step (e.g. the end of an epoch whose length is not a
    multiple of the sync period), or export it with
    `save_permuted`. Training is not affected.

    Args:
        params: the current parameters (the tree given to ``tx.update``).
        opt_state: an optimizer state holding a `LaPermState` (anywhere in a
            chain); without one, ``params`` is returned as is.

    Returns:
        The projected parameters (same structure, shapes and dtypes).

    Raises:
        ValueError: ``params`` does not match the state's tree.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from randjax.methods.laperm import laperm, synced_params
        >>> params = {"kernel": jnp.array([[1.0], [2.0], [3.0]])}
        >>> state = laperm(optax.adam(1e-3), sync_period=20).init(params)
        >>> moved = {"kernel": jnp.array([[0.5], [-4.0], [0.1]])}
        >>> synced_params(moved, state)["kernel"].ravel().tolist()
        [3.0, 1.0, 2.0]

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 4 (accuracy
        is reported right after a synchronization).
    """
    for state in laperm_states(opt_state):
        params = permute.sync(state.sorted0, params, output_axis=state.output_axis)
    return params


def synced_state(state):
    """A `randjax.train.TrainState` with its parameters as `synced_params` gives them.

    `randjax.fit`'s ``eval_transform`` for LaPerm: the accuracy it reports is
    that of the network a sync at the epoch's last step would give, "right
    after a sync" as the paper reports it, whatever the epoch's length.
    Training is not affected.

    Example:
        >>> import optax, randjax
        >>> dataset = randjax.data.load("digits", val_fraction=0.0)
        >>> result = randjax.fit(randjax.models.get("lenet300_100", width=0.1), dataset,
        ...                      randjax.laperm(optax.adam(1e-3), 7), epochs=1,
        ...                      batch_size=64, progress=False, eval_transform=synced_state)
        >>> result.history[-1]["eval_transform"]
        'synced_state'

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 4.
    """
    return state._replace(trainable=synced_params(state.trainable, state.opt_state))


# ---------------------------------------------------------------------------
# Sparse and single-value starting points (Sec. 5.4-5.5): pure functions over
# parameter trees, e.g. the ``start`` of `randjax.dense_from`.


def _selected_paths(params, filter):
    """(path, leaf) of every leaf chosen by ``filter``, in flattening order."""
    tree.check_filter(filter)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    chosen = [(path, leaf) for path, leaf in leaves
              if hasattr(leaf, "ndim") and filter(path, leaf)]
    if not chosen:
        raise ValueError("the filter selects no leaf of params")
    return chosen


def _path_names(path) -> set[str]:
    return {str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path}


def random_prune(key: jax.Array, params: PyTree, density: float, *,
                 input_density: float = 0.8, input_layer: str | None = None,
                 filter: tree.Filter | None = None) -> PyTree:
    """Randomly zeroes each selected weight with probability ``1 - density``.

    Every entry of a selected leaf is kept independently with probability
    ``density`` (a Bernoulli mask, as the reference's ``random_prune``); the
    input layer keeps ``max(density, input_density)`` instead, since pruning
    the first layer hard cuts off input pixels. Pruned entries become +0.0;
    under LaPerm the zeros are then permuted with the other values.

    Args:
        key: a `jax.random` key; leaf ``i`` (in flattening order among the
            selected leaves) draws its mask with ``fold_in(key, i)``.
        params: a parameter pytree.
        density: Python float in (0, 1], the expected fraction kept.
        input_density: Python float in [0, 1], the lowest fraction the input
            layer keeps (0 prunes it like every other layer).
        input_layer: the name of the input layer's module (a key in the
            leaf's path, e.g. ``"Conv_0"``); default: the first selected
            leaf in flattening order, which is ``Conv_0`` or ``Dense_0`` in
            every `randjax.models` network.
        filter: ``filter(path, leaf) -> bool`` selects the leaves to prune
            (default: kernels, ``leaf.ndim >= 2``; biases and BatchNorm stay).

    Returns:
        ``params`` with the selected leaves masked (same shapes and dtypes).

    Raises:
        ValueError: ``density`` is not in (0, 1]; ``input_density`` is not
            in [0, 1]; no leaf is selected; ``input_layer`` names no
            selected leaf.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from randjax.methods.laperm import random_prune
        >>> params = {"Dense_0": {"kernel": jnp.ones((100, 100))},
        ...           "Dense_1": {"kernel": jnp.ones((100, 100)), "bias": jnp.ones(100)}}
        >>> pruned = random_prune(jax.random.key(0), params, 0.3)
        >>> [round(float((pruned[k]["kernel"] != 0).mean()), 1) for k in params]
        [0.8, 0.3]
        >>> bool((pruned["Dense_1"]["bias"] == 1).all())
        True

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 5.4-5.5;
        ihsuy/Train-by-Reconnect, weight_utils.random_prune.
    """
    density = tree.check_density(density)
    input_density = tree.check_real(input_density, "input_density", low=0.0, high=1.0)
    chosen = _selected_paths(params, tree.is_kernel if filter is None else filter)
    if input_layer is None:
        first = {id(chosen[0][1])}
    else:
        first = {id(leaf) for path, leaf in chosen if input_layer in _path_names(path)}
        if not first:
            raise ValueError(f"input_layer {input_layer!r} names no selected leaf of params")
    rates = {id(leaf): max(density, input_density) if id(leaf) in first else density
             for _, leaf in chosen}
    keys = {id(leaf): jax.random.fold_in(key, i) for i, (_, leaf) in enumerate(chosen)}

    def prune(leaf):
        if id(leaf) not in rates:
            return leaf
        keep = jax.random.uniform(keys[id(leaf)], jnp.shape(leaf)) < rates[id(leaf)]
        return jnp.where(keep, leaf, jnp.zeros((), jnp.result_type(leaf)))

    return jax.tree.map(prune, params)


def shared_value(params: PyTree, value: float, *,
                 filter: tree.Filter | None = None) -> PyTree:
    """Sets every nonzero weight of the selected leaves to one shared value.

    With `random_prune` first this builds the paper's weight-agnostic
    networks: every weight is 0 or ``value``, and LaPerm can only decide
    where the zeros go. The reference's ``agnosticize(model, 0.01, (1, 4))``
    is ``shared_value(random_prune(key, params, 0.25, input_density=0.0),
    0.01)``.

    Args:
        params: a parameter pytree.
        value: the shared value, a finite Python float.
        filter: ``filter(path, leaf) -> bool`` selects the leaves (default:
            kernels, ``leaf.ndim >= 2``).

    Returns:
        ``params`` with each selected leaf replaced by
        ``where(leaf != 0, value, 0)`` (same shape and dtype).

    Raises:
        ValueError: ``value`` is not a finite real number; no leaf is selected.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.methods.laperm import shared_value
        >>> shared_value({"kernel": jnp.array([[0.0, -2.0], [0.3, 0.0]])}, 0.5)["kernel"].tolist()
        [[0.0, 0.5], [0.5, 0.0]]

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 5.5;
        ihsuy/Train-by-Reconnect, weight_utils.agnosticize.
    """
    value = tree.check_real(value, "value")
    chosen = {id(leaf) for _, leaf in
              _selected_paths(params, tree.is_kernel if filter is None else filter)}

    def fill(leaf):
        if id(leaf) not in chosen:
            return leaf
        dtype = jnp.result_type(leaf)
        return jnp.where(leaf != 0, jnp.asarray(value, dtype), jnp.zeros((), dtype))

    return jax.tree.map(fill, params)


# ---------------------------------------------------------------------------
# Export: initial weights (zoo model + key) and per-vector permutations.


def _initial_params(spec: dict, key_data: np.ndarray) -> dict:
    model = models.from_spec(spec)
    key = jax.random.wrap_key_data(jnp.asarray(key_data))
    x = jnp.zeros((1, *spec["input_shape"]), jnp.float32)
    return jax.jit(model.init)(key, x)["params"]   # as randjax.train.init_state draws them


def _index_dtype(n: int) -> np.dtype:
    """The smallest unsigned int dtype that holds the positions 0 .. n-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _lehmer_bytes(n: int) -> int:
    return max(1, ((math.factorial(n) - 1).bit_length() + 7) // 8)


def _pack_lehmer(perm: np.ndarray) -> np.ndarray:
    """Each column's Lehmer code as one mixed-radix integer: ``(m, bytes)`` uint8."""
    n, width = perm.shape[0], _lehmer_bytes(perm.shape[0])
    code = permute.lehmer_code(perm)
    rows = []
    for column in code.T.tolist():
        value = 0
        for i, digit in enumerate(column):   # digit i has radix n - i
            value = value * (n - i) + digit
        rows.append(np.frombuffer(value.to_bytes(width, "little"), np.uint8))
    return np.stack(rows)


def _unpack_lehmer(packed: np.ndarray, n: int, name: str) -> np.ndarray:
    """Inverts `_pack_lehmer`; ValueError naming the array ``name`` if a row is >= n!."""
    code = np.zeros((n, packed.shape[0]), np.int64)
    for c, row in enumerate(packed):
        value = int.from_bytes(row.tobytes(), "little")
        for i in range(n - 1, -1, -1):
            value, code[i, c] = divmod(value, n - i)
        if value:
            raise ValueError(f"array {name!r}: row {c} encodes a number >= {n}!, not the "
                             f"Lehmer code of a permutation of {n} entries")
    return permute.from_lehmer(code)


def _stored_permutation(perm: np.ndarray, name: str) -> np.ndarray:
    """``perm`` (``(n, m)``) as int64; ValueError naming ``name`` if a column is no permutation."""
    n = perm.shape[0]
    bad = (np.sort(perm, axis=0) != np.arange(n)[:, None]).any(axis=0)
    if bad.any():
        column = int(np.argmax(bad))
        values = perm[:, column].astype(np.int64)
        counts = np.bincount(values, minlength=n)
        detail = (f"it holds {values.max()}" if values.max() >= n else
                  f"{np.argmax(counts > 1)} appears {counts.max()} times")
        raise ValueError(f"array {name!r}: column {column} is not a permutation of "
                         f"0..{n - 1} ({detail})")
    return perm.astype(np.int64)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _permutation(w0: np.ndarray, w: np.ndarray, where: str) -> np.ndarray:
    """Per-column indices ``p`` with ``w = w0[p]`` bitwise; ValueError if none."""
    p = np.asarray(permute.find_permutation(w0, w))
    if not _same_bits(np.take_along_axis(permute.columns(w0), p, 0), permute.columns(w)):
        raise ValueError(
            f"save_permuted: the leaf {where} is not, per weight vector, a "
            "permutation of its initial values (wrong model, key or input_shape, or "
            "weights saved between syncs: project them with "
            "randjax.methods.laperm.synced_params(params, opt_state) first)")
    return p


def save_permuted(path: str | os.PathLike, params: PyTree, model, key: jax.Array,
                  input_shape, *, include_1d: bool = False,
                  filter: tree.Filter | None = None,
                  lehmer: bool = False) -> export.ExportInfo:
    """Saves a LaPerm-trained network as its init key and per-vector permutations.

    The initial parameters are redrawn from ``model`` (a `randjax.models`
    zoo model: `randjax.models.spec`, its name and non-default options,
    initializers by registered name) and ``key``, exactly as
    ``model.init(key, zeros((1, *input_shape)))`` (what `randjax.fit` does
    with ``randjax.train.model_key(seed)``). Every selected leaf must be, per
    weight vector (a column of ``leaf.reshape(-1, out)``; a 1-D leaf is one
    vector), bitwise a permutation of its initial values; it is stored as
    the indices ``p`` with ``leaf = init[p]`` in the smallest unsigned dtype
    that holds ``0 .. n-1`` (uint8 up to 256 entries, uint16 up to 65,536),
    or as its Lehmer code packed into ``ceil(log2(n!) / 8)`` bytes. Other
    leaves are stored as they are. `randjax.export.load` rebuilds the
    parameters bitwise.

    Args:
        path: the ``.npz`` file to write (NumPy adds ``.npz`` if missing).
        params: the trained parameters, after a sync (or projected with
            `synced_params`).
        model: the zoo model the parameters belong to.
        key: the key the model was initialised with.
        input_shape: the input shape without the batch axis (e.g. ``(28,
            28, 1)``), which fixes the shapes of the first Dense kernel.
        include_1d: also store 1-D leaves (biases) as permutations, as
            `laperm` with ``include_1d=True`` trains them.
        filter: ``filter(path, leaf) -> bool`` choosing the permuted leaves
            (default: kernels, ``ndim >= 2``), as given to `laperm`.
        lehmer: store each vector's permutation as its packed Lehmer code
            (about half the size of 16-bit indices; encoding is O(n^2) per
            vector on the host).

    Returns:
        A `randjax.export.ExportInfo` with the file size and the ratio to
        float32.

    Raises:
        ValueError: ``model`` is not a zoo model or has an unregistered
            initializer; ``params`` does not have the initial parameters'
            structure and shapes; a selected leaf is not a per-vector
            permutation of its initial values; a container other than dicts
            with string keys and lists; ``filter`` is not callable.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, randjax, tempfile
        >>> from randjax.methods.laperm import save_permuted
        >>> model = randjax.models.get("lenet300_100", width=0.1)
        >>> key = jax.random.key(0)
        >>> params = model.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
        >>> trained = jax.tree.map(lambda w: w[::-1], params)  # reversed vectors
        >>> path = tempfile.mkdtemp() + "/laperm.npz"
        >>> info = save_permuted(path, trained, model, key, (8, 8, 1),
        ...                      include_1d=True, lehmer=True)
        >>> rebuilt = randjax.export.load(path)
        >>> all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rebuilt),
        ...                                           jax.tree.leaves(trained)))
        True

    References:
        Qiu & Suda, "Train by Reconnect: Decoupling Locations of Weights from
        their Values", NeurIPS 2020, Appendix A.4.
    """
    include_1d = tree.check_bool(include_1d, "save_permuted: include_1d")
    lehmer = tree.check_bool(lehmer, "save_permuted: lehmer")
    select = tree.is_kernel if filter is None else tree.check_filter(
        filter, "save_permuted: filter")
    try:
        described = models.spec(model)
    except ValueError as error:
        raise ValueError(f"save_permuted redraws the initial weights of a zoo model: "
                         f"{error}") from None
    spec = {"method": "laperm", **described,
            "input_shape": [int(d) for d in input_shape], "lehmer": lehmer}
    key_data = np.asarray(jax.random.key_data(key))
    init_paths, init_leaves = export.flatten_with_paths(_initial_params(spec, key_data))
    jax_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    paths, leaves = export.flatten_with_paths(params)
    if paths != init_paths:
        raise ValueError("save_permuted: params do not have the structure of the "
                         f"model's initial parameters ({len(paths)} vs {len(init_paths)} "
                         "leaves, or other names)")
    arrays, header_leaves, num_params = {"init_key": key_data}, [], 0
    for i, (p, jax_path, leaf, leaf0) in enumerate(zip(paths, jax_paths, leaves, init_leaves)):
        leaf, leaf0 = np.asarray(leaf), np.asarray(leaf0)
        where = jax.tree_util.keystr(jax_path)
        if leaf.shape != leaf0.shape or leaf.dtype != leaf0.dtype:
            raise ValueError(f"save_permuted: the leaf {where} is {leaf.dtype}"
                             f"{list(leaf.shape)}, its initial value {leaf0.dtype}"
                             f"{list(leaf0.shape)}")
        permuted = leaf.ndim >= 1 and (bool(select(jax_path, leaf))
                                       or (include_1d and leaf.ndim == 1))
        if permuted:
            perm = _permutation(leaf0, leaf, where)
            if lehmer:
                arrays[f"lehmer_{i}"] = _pack_lehmer(perm)
            else:
                arrays[f"perm_{i}"] = perm.astype(_index_dtype(perm.shape[0]))
        else:
            arrays[f"value_{i}"] = leaf
        header_leaves.append({"index": i, "path": p, "shape": list(leaf.shape),
                              "dtype": str(leaf.dtype), "permuted": permuted})
        num_params += leaf.size
    return export.write(path, spec, header_leaves, arrays, num_params)


def _check_input_shape(value):
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of ints, got {value!r}")
    for d in value:
        tree.check_int(d, "input_shape entry", minimum=1)


def _check_options(value):
    if not isinstance(value, dict):
        raise ValueError(f"must be a dict of the model's options, got {value!r}")


def _check_spec(spec):
    export.check_spec(spec, dict(
        model=lambda v: tree.check_choice(v, models.names(), "model"),
        options=_check_options, input_shape=_check_input_shape,
        lehmer=lambda v: tree.check_bool(v, "lehmer")))
    try:
        models.from_spec(spec)
    except (ValueError, TypeError) as error:
        raise ValueError(f"spec field 'options': {error}") from None


def _file_initial_params(spec, key_data) -> tuple[list, list]:
    """The initial parameters the spec and ``init_key`` redraw, `flatten_with_paths`ed."""
    expected = (np.dtype(np.uint32), export.key_data_shape())
    if (key_data.dtype, key_data.shape) != expected:
        raise ValueError(f"array 'init_key' must be uint32 of shape {expected[1]}, got "
                         f"{key_data.dtype} of shape {key_data.shape}")
    try:
        params = _initial_params(spec, key_data)
    except Exception as error:  # flax reports a model it cannot build in many ways
        raise ValueError(f"spec fields 'model', 'options' and 'input_shape': the model "
                         f"cannot be initialised ({type(error).__name__}: {error})") from None
    return export.flatten_with_paths(params)


def _check_leaves(leaves, init_paths, init_leaves):
    """Every header leaf is the model's initial leaf of its index: path, shape, dtype."""
    indices = sorted(leaf["index"] for leaf in leaves)
    if indices != list(range(len(init_leaves))):
        raise ValueError(f"header field 'leaves': indices {indices}, but the model has "
                         f"{len(init_leaves)} leaves (0..{len(init_leaves) - 1})")
    for leaf in leaves:
        i = leaf["index"]
        path, w0 = init_paths[i], init_leaves[i]
        if leaf["path"] != path:
            raise ValueError(f"header leaf {i} field 'path' is "
                             f"{export.path_str(leaf['path'])}, the model's leaf {i} is "
                             f"{export.path_str(path)}")
        if tuple(leaf["shape"]) != w0.shape or jnp.dtype(leaf["dtype"]) != w0.dtype:
            raise ValueError(f"header leaf {i} {export.path_str(path)}: fields 'dtype' and "
                             f"'shape' say {leaf['dtype']} {leaf['shape']}, the model's "
                             f"initial leaf is {w0.dtype} {list(w0.shape)}")


def _decode(spec, arrays):
    _check_spec(spec)
    init_paths, init_leaves = _file_initial_params(spec, arrays["init_key"])
    _check_leaves(export.read_header(arrays)["leaves"], init_paths, init_leaves)

    def rebuild(leaf, stored):
        i = leaf["index"]
        w0 = np.asarray(init_leaves[i])
        columns = permute.columns(w0)
        n, m = columns.shape
        if spec["lehmer"]:
            export.check_stored(leaf, stored, {"lehmer": (np.uint8, (m, _lehmer_bytes(n)))})
            perm = _unpack_lehmer(stored["lehmer"], n, f"lehmer_{i}")
        else:
            export.check_stored(leaf, stored, {"perm": (_index_dtype(n), (n, m))})
            perm = _stored_permutation(stored["perm"], f"perm_{i}")
        return jnp.asarray(np.take_along_axis(columns, perm, 0).reshape(w0.shape))

    return rebuild


export.register_codec("laperm", export.Codec(decode=_decode, file_arrays=("init_key",)))
