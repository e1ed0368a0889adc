"""LaPerm: train by permuting the initial weights, as an optax transformation.

`laperm` wraps any inner optimizer, like `optax.lookahead`: the inner
optimizer takes ordinary steps, and every ``sync_period`` steps each weight
vector is reset to its own *initial* values, rearranged in the ranking of the
current weights (`randjax.permute.sync`). After a sync the network's weights
are a per-vector permutation of the initial ones: training has only
reconnected them.

Floating-point ``params + (target - params)`` need not equal ``target``
(``3 + (1e-8 - 3)`` is 0), so `apply_updates` in this module applies the
updates and then snaps the synced leaves to the recorded target, bitwise.
Use it in place of `optax.apply_updates` (`randjax.fit` does) whenever the
permutation invariant must hold exactly; it is plain `optax.apply_updates`
when no LaPerm state is in the optimizer state.

References:
    Qiu & Suda, "Train by Reconnect: Decoupling Locations of Weights from
    their Values", NeurIPS 2020. https://arxiv.org/abs/2003.02570
    Reference code: ihsuy/Train-by-Reconnect (TensorFlow).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from randjax import permute
from randjax.init import is_kernel
from randjax.reparam import _check_bool

PyTree = Any
Filter = Callable[[tuple, Any], bool]
Schedule = Callable[[jax.Array], Any]


class LaPermState(NamedTuple):
    """State of `laperm`.

    Attributes:
        inner_state: the inner optimizer's state.
        count: int32 number of updates taken.
        sorted0: sorted initial weight vectors (`randjax.permute.sort_vectors`),
            ``None`` at leaves LaPerm skips.
        synced: bool, whether the last update was a sync step.
        target: the weights the last sync step set (``None`` at skipped
            leaves); `apply_updates` snaps to them when ``synced``.
    """

    inner_state: optax.OptState
    count: jax.Array
    sorted0: PyTree
    synced: jax.Array
    target: PyTree


def _is_empty(x) -> bool:
    return x is None or isinstance(x, optax.MaskedNode)


def _check_period(sync_period) -> int | Schedule:
    if callable(sync_period):
        return sync_period
    if isinstance(sync_period, bool) or not isinstance(sync_period, numbers.Integral):
        raise ValueError("laperm: sync_period must be an int >= 1 or a schedule "
                         f"count -> int, got {sync_period!r}")
    if sync_period < 1:
        raise ValueError(f"laperm: sync_period must be >= 1, got {sync_period}")
    return int(sync_period)


def _period(sync_period: int | Schedule, count: jax.Array) -> jax.Array:
    if not callable(sync_period):
        return jnp.asarray(sync_period, jnp.int32)
    # Schedules may return floats (optax schedules do); a period below 1
    # cannot raise inside jit and is clamped to 1 (sync every step).
    period = jnp.round(jnp.asarray(sync_period(count))).astype(jnp.int32)
    return jnp.maximum(period, 1)


def laperm(inner: optax.GradientTransformation,
           sync_period: int | Schedule = 20, *,
           filter: Filter | None = None,
           include_1d: bool = False,
           reset_inner_state: bool = False) -> optax.GradientTransformation:
    """Lookahead Permutation: inner steps, then a permutation of theta_0.

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
            A scheduled period below 1 is treated as 1.
        filter: ``filter(path, leaf) -> bool`` selects the leaves to permute
            (default: kernels, ``leaf.ndim >= 2``, as `randjax.is_kernel`).
        include_1d: also permute 1-D leaves (biases, BatchNorm scales and
            offsets), each as one weight vector, as the reference does with
            ``skip_bias=False, skip_bn=False``.
        reset_inner_state: re-initialise the inner state on every sync step.

    Returns:
        An `optax.GradientTransformation` whose state is a `LaPermState`;
        its ``update`` requires ``params``.

    Raises:
        ValueError: ``sync_period`` is not an int >= 1 (bools included) or a
            callable; ``inner`` is not a gradient transformation; ``filter``
            is not callable; a flag is not a bool; ``init`` finds no leaf to
            permute; ``update`` gets params of another structure than
            ``init``.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from randjax.reconnect import laperm, apply_updates
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
    sync_period = _check_period(sync_period)
    include_1d = _check_bool(include_1d, "laperm: include_1d")
    reset_inner_state = _check_bool(reset_inner_state, "laperm: reset_inner_state")
    if filter is not None and not callable(filter):
        raise ValueError(f"laperm: filter must be a callable filter(path, leaf), got {filter!r}")
    base = is_kernel if filter is None else filter

    def select(path, leaf) -> bool:
        return bool(base(path, leaf)) or (include_1d and getattr(leaf, "ndim", 0) == 1)

    def init_fn(params):
        sorted0 = permute.sort_vectors(params, filter=select)
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
                           synced=jnp.zeros((), bool), target=target)

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
                target = permute._sync_leaf(s, moved).astype(p.dtype)
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
                                        state.sorted0, do_sync, target)

    return optax.GradientTransformation(init_fn, update_fn)


def laperm_states(opt_state: PyTree) -> list[LaPermState]:
    """Every `LaPermState` inside an optimizer state (chains, nested tuples)."""
    is_state = lambda x: isinstance(x, LaPermState)
    return [s for s in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(s)]


def apply_updates(params: PyTree, updates: PyTree, opt_state: PyTree) -> PyTree:
    """`optax.apply_updates`, then the exact LaPerm projections of ``opt_state``.

    On a sync step every synced leaf is set to the target recorded in its
    `LaPermState` (wherever it sits in ``opt_state``), so the weights are
    bitwise a per-vector permutation of the initial ones. Without a LaPerm
    state in ``opt_state`` this is `optax.apply_updates`.

    Args:
        params: the parameters the updates were computed for.
        updates: the updates returned by ``tx.update``.
        opt_state: the *new* optimizer state returned with ``updates``.

    Returns:
        The updated parameters.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from randjax.reconnect import laperm, apply_updates
        >>> tiny = 2.0 ** -30
        >>> params = {"kernel": jnp.array([[3.0], [tiny]])}
        >>> tx = laperm(optax.sgd(1.0), sync_period=1)
        >>> state = tx.init(params)
        >>> grads = {"kernel": jnp.array([[4.0], [0.0]])}  # swaps the ranks
        >>> updates, state = tx.update(grads, state, params)
        >>> optax.apply_updates(params, updates)["kernel"].ravel().tolist()  # 3 + (tiny - 3)
        [0.0, 3.0]
        >>> apply_updates(params, updates, state)["kernel"].ravel().tolist() == [tiny, 3.0]
        True

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020.
    """
    new = optax.apply_updates(params, updates)
    for state in laperm_states(opt_state):
        new = _snap(new, state)
    return new


def synced_params(params: PyTree, opt_state: PyTree) -> PyTree:
    """The network a sync would give now: ``params`` projected onto theta_0's permutations.

    Every leaf that a `LaPermState` in ``opt_state`` permutes is replaced by
    `randjax.permute.sync` of its sorted initial vectors, in the ranking of
    its current values (the other leaves are returned unchanged). The result
    is bitwise a per-vector permutation of the initial weights, whatever the
    step: evaluate it to measure accuracy "right after a sync" at a step that
    is not a sync step (e.g. the end of an epoch whose length is not a
    multiple of the sync period), or export it with
    `randjax.export.save_permuted`. Training is not affected.

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
        >>> from randjax.reconnect import laperm, synced_params
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
        params = permute.sync(state.sorted0, params)
    return params


def _snap(params: PyTree, state: LaPermState) -> PyTree:
    """The synced leaves of ``params`` set to ``state.target`` on sync steps."""
    return jax.tree.map(
        lambda t, p: p if _is_empty(t) else jnp.where(state.synced, t, p),
        state.target, params, is_leaf=_is_empty)
