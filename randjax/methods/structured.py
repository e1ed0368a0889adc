"""Structured (unit) pruning without retraining: magnitude, frame potential, random.

A layer's units are its kernel's slices along ``axis`` (`randjax.analysis`);
removing unit ``i`` masks its weight vector, and the accuracy of the
network is measured after every removal, as in Heitmann's ``prune.py``:

* `magnitude_order`: units by the L2 norm of their weight vector, sorted
  once (smallest first, or largest first);
* `fp_order`: greedy by the frame potential: at each step the unit whose
  removal leaves the *largest* potential (the least correlated unit, the
  report's "smallest contribution") goes, or, reversed, the smallest (the
  most correlated); recomputed after every removal from one Gram matrix
  (`randjax.analysis.leave_one_out_fp`), ties to the lowest index;
* `random_orders`: ``rounds`` shuffles from one continuing NumPy stream
  (``RandomState(2019)``), as the reference draws its 5 rounds.

`accuracy_curve` evaluates the whole curve (every removal count of every
order) in one jitted program: the network below the pruned layer runs once
per test chunk and only the part above it once per removal count.

Removal follows the reference code: only the unit's incoming weights are
masked, its bias stays (a pruned ReLU unit still outputs ``relu(b)``) and
the next layer is untouched. The report's text removes the next layer's
column too: ``zero_bias=True`` and ``remove_outgoing=<next layer>`` give
that (`prune_units`).

References:
    Heitmann, "Sources of Redundancy in Neural Networks", EPFL semester
    project (jheitmann/Neural-net-pruning, ``prune.py`` and ``models.py`` at
    commit 967f976), Sec. 3 and Fig. 2.
    Casper et al., "Frivolous Units: Wider Networks Are Not Really That
    Wide", AAAI 2021 (arXiv 2019).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from randjax import analysis, data, tree

__all__ = ["CRITERIA", "accuracy_curve", "fp_order", "magnitude_order", "prune_units",
           "random_orders", "removal_orders"]

#: The removal criteria of `removal_orders`.
CRITERIA = ("magnitude", "fp", "random")


def _check_count(count, n: int, what: str = "units") -> int:
    if count is None:
        return n
    count = tree.check_int(count, "count", minimum=0)
    if count > n:
        raise ValueError(f"count={count}: cannot remove more than the layer's {n} {what}")
    return count


def magnitude_order(w: jax.typing.ArrayLike, count: int | None = None, *, axis: int = -1,
                    largest_first: bool = False) -> jax.Array:
    """Units in the order magnitude pruning removes them.

    Args:
        w: a kernel with ndim >= 2.
        count: how many units to list (default all).
        axis: the units' axis.
        largest_first: remove the largest norms first (the reference's
            ``min_mag_pruning``) instead of the smallest (``max_mag_pruning``).

    Returns:
        The int32 indices of the first ``count`` units removed; equal norms
        go by index.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.methods.structured import magnitude_order
        >>> w = jnp.array([[3., 1., 2.]])  # three units, norms 3, 1, 2
        >>> magnitude_order(w).tolist(), magnitude_order(w, 1, largest_first=True).tolist()
        ([1, 2, 0], [0])
    """
    v = analysis.unit_vectors(w, axis=axis)
    count = _check_count(count, v.shape[0])
    norms = jnp.sum(jnp.square(v), axis=1)
    order = jnp.argsort(-norms if tree.check_bool(largest_first, "largest_first") else norms,
                        stable=True)
    return order[:count].astype(jnp.int32)


def fp_order(w: jax.typing.ArrayLike, count: int | None = None, *, axis: int = -1,
             most_correlated_first: bool = False, normalize: bool = True
             ) -> tuple[jax.Array, jax.Array]:
    """Greedy frame-potential pruning: units in removal order and the potential after each.

    At every step each remaining unit's leave-one-out potential is computed
    from the Gram matrix of the unit-norm vectors, ``(sum_alive G^2 - 2
    sum_j G_ij^2 + G_ii^2) / N^2`` over the remaining units, in ``O(N^2)``
    (the reference builds ``N`` Gram matrices of the remaining units each
    step); the unit whose removal leaves the largest potential goes (the
    least correlated one), or the smallest with ``most_correlated_first``.
    Units whose vector is already zero (pruned before) are never chosen.

    Args:
        w: a kernel with ndim >= 2.
        count: removals (default: every unit with a non-zero vector).
        axis: the units' axis.
        most_correlated_first: the reference's ``min_fp_pruning``.
        normalize: L2-normalise the units (``False``: the reference's
            ``fp_mod`` variants).

    Returns:
        ``(order, potentials)``: int32 ``(count,)`` unit indices, and float32
        ``(count + 1,)`` frame potentials (`randjax.analysis.frame_potential`,
        same ``N``) before any removal and after each. Ties go to the lowest
        index.

    Raises:
        ValueError: ``count`` exceeds the number of units.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.methods.structured import fp_order
        >>> w = jnp.array([[1., 1., 0.], [0., 0.1, 1.]])  # unit 1 leans towards 0 and 2
        >>> fp_order(w, 1)[0].tolist(), fp_order(w, 1, most_correlated_first=True)[0].tolist()
        ([2], [1])

    References:
        Heitmann, ``prune.py::fp_pruning`` and
        ``models.py::selective_correlation``.
    """
    g = analysis.gram(w, axis=axis, normalize=normalize)
    n = g.shape[0]
    count = _check_count(count, n)
    sign = -1.0 if tree.check_bool(most_correlated_first, "most_correlated_first") else 1.0
    g2 = jnp.square(g)
    alive = jnp.diagonal(g2) > 0

    def step(alive, _):
        live = alive.astype(g2.dtype)
        rows = g2 @ live          # sum over the remaining j of G_ij^2
        total = live @ rows
        loo = total - 2 * rows + jnp.diagonal(g2)
        unit = jnp.argmax(jnp.where(alive, sign * loo, -jnp.inf))
        return alive.at[unit].set(False), (unit.astype(jnp.int32), loo[unit])

    start = jnp.sum(g2 * (alive[:, None] & alive[None, :]))
    _, (order, after) = jax.lax.scan(step, alive, length=count)
    potentials = jnp.concatenate([start[None], after]) / n**2
    return order, potentials


def random_orders(n_units: int, count: int | None = None, rounds: int = 5, *,
                  seed: int = 2019) -> np.ndarray:
    """``rounds`` random removal orders drawn as the reference draws them.

    One NumPy ``RandomState(seed)`` stream continues over the rounds (the
    reference seeds ``np.random`` with 2019 once and shuffles the unit list
    for each round), so the rounds are not ``rounds`` independent seeds;
    round ``r`` is the ``r``-th ``shuffle`` of ``range(n_units)``.

    Returns:
        An int32 ``(rounds, count)`` array.
    """
    n_units = tree.check_int(n_units, "n_units", minimum=1)
    count = _check_count(count, n_units)
    rounds = tree.check_int(rounds, "rounds", minimum=1)
    rng = np.random.RandomState(tree.check_int(seed, "seed", minimum=0))
    out = []
    for _ in range(rounds):
        units = list(range(n_units))
        rng.shuffle(units)
        out.append(units[:count])
    return np.asarray(out, np.int32)


def removal_orders(w: jax.typing.ArrayLike, criterion: str, count: int | None = None, *,
                   axis: int = -1, reverse: bool = False, rounds: int = 5,
                   seed: int = 2019) -> np.ndarray:
    """The removal orders of ``criterion`` as an int32 ``(rounds, count)`` array.

    ``criterion`` is ``"magnitude"`` (`magnitude_order`; ``reverse``: largest
    first), ``"fp"`` (`fp_order`; ``reverse``: most correlated first) or
    ``"random"`` (`random_orders`, ``rounds`` of them from ``seed``); the
    deterministic criteria give one row.
    """
    tree.check_choice(criterion, CRITERIA, "criterion")
    if criterion == "random":
        n = analysis.unit_vectors(w, axis=axis).shape[0]
        return random_orders(n, count, rounds, seed=seed)
    if criterion == "magnitude":
        order = magnitude_order(w, count, axis=axis, largest_first=reverse)
    else:
        order = fp_order(w, count, axis=axis, most_correlated_first=reverse)[0]
    return np.asarray(order)[None]


# --------------------------------------------------------------------------- #
# Removing units from a network
# --------------------------------------------------------------------------- #

def _module(params: Mapping, layer: str, what: str) -> Mapping:
    node = params
    for part in layer.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"{what} {layer!r} is not a module of the parameters "
                             f"(top-level modules: {sorted(params)})")
        node = node[part]
    if "kernel" not in node:
        raise ValueError(f"{what} {layer!r} has no 'kernel' (its leaves: {sorted(node)})")
    return node


def _replace(params: Mapping, layer: str, leaves: Mapping) -> dict:
    head, *rest = layer.split("/")
    node = dict(params)
    node[head] = ({**params[head], **leaves} if not rest
                  else _replace(params[head], "/".join(rest), leaves))
    return node


def _outgoing_keep(next_kernel: jax.Array, keep: jax.Array) -> jax.Array:
    """``keep`` spread over the next kernel's inputs (channels-last flattening)."""
    n, inputs = keep.shape[-1], next_kernel.shape[-2]
    if inputs % n:
        raise ValueError(f"remove_outgoing: the next layer has {inputs} inputs, not a "
                         f"multiple of the pruned layer's {n} units")
    return jnp.tile(keep, inputs // n)


def prune_units(params: Mapping, layer: str, keep: jax.typing.ArrayLike, *, axis: int = -1,
                zero_bias: bool = False, remove_outgoing: str | None = None) -> dict:
    """``params`` with the units of ``layer`` that ``keep`` drops removed.

    Args:
        params: the model's parameters (nested mappings, as flax's).
        layer: the module's path, e.g. ``"Dense_0"`` (``"/"`` between levels).
        keep: a boolean vector over the layer's units.
        axis: the units' axis in the kernel.
        zero_bias: also zero the removed units' biases (the report's text;
            the reference code keeps them).
        remove_outgoing: the module fed by this layer (e.g. ``"Dense_1"``):
            zero its inputs from the removed units, i.e. the rows of its
            ``(..., in, out)`` kernel; a flattened conv output feeds input
            ``r`` from channel ``r % N`` (channels last). Only for ``axis=-1``.

    Returns:
        New parameters; the others are shared with ``params``.
    """
    module = _module(params, layer, "layer")
    kernel = jnp.asarray(module["kernel"])
    keep = jnp.asarray(keep)
    n = analysis.unit_vectors(kernel, axis=axis).shape[0]
    if keep.shape != (n,) or keep.dtype != jnp.bool_:
        raise ValueError(f"keep must be a boolean vector of the layer's {n} units, got "
                         f"{keep.dtype} {keep.shape}")
    shape = [1] * kernel.ndim
    shape[axis] = n
    leaves = {"kernel": kernel * keep.reshape(shape).astype(kernel.dtype)}
    if tree.check_bool(zero_bias, "zero_bias") and module.get("bias") is not None:
        leaves["bias"] = module["bias"] * keep.astype(module["bias"].dtype)
    params = _replace(params, layer, leaves)
    if remove_outgoing is not None:
        if axis not in (-1, kernel.ndim - 1):
            raise ValueError("remove_outgoing needs the units on the last axis (axis=-1)")
        nxt = jnp.asarray(_module(params, remove_outgoing, "remove_outgoing")["kernel"])
        rows = _outgoing_keep(nxt, keep).astype(nxt.dtype)
        params = _replace(params, remove_outgoing, {"kernel": nxt * rows[:, None]})
    return params


def _positions(orders: jax.Array, n: int) -> jax.Array:
    """``positions[r, u]``: when order ``r`` removes unit ``u`` (``n``: never)."""
    r, c = orders.shape
    rows = jnp.broadcast_to(jnp.arange(r)[:, None], (r, c))
    return jnp.full((r, n), n, jnp.int32).at[rows, orders].set(
        jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (r, c)))


def _check_orders(orders, n: int) -> np.ndarray:
    orders = np.asarray(orders)
    orders = orders[None] if orders.ndim == 1 else orders
    if orders.ndim != 2 or not np.issubdtype(orders.dtype, np.integer):
        raise ValueError(f"orders must be integer unit indices of shape (count,) or "
                         f"(rounds, count), got {orders.dtype} {orders.shape}")
    if orders.shape[1] > n:
        raise ValueError(f"orders remove {orders.shape[1]} units; the layer has {n}")
    if orders.size and (orders.min() < 0 or orders.max() >= n):
        raise ValueError(f"orders hold unit indices outside [0, {n})")
    if any(len(set(row.tolist())) != len(row) for row in orders):
        raise ValueError("an order removes the same unit twice")
    return orders.astype(np.int32)


def accuracy_curve(model: nn.Module, variables: Mapping, x: jax.typing.ArrayLike,
                   y: jax.typing.ArrayLike, *, layer: str, orders: Any,
                   counts: Sequence[int] | None = None, axis: int = -1,
                   zero_bias: bool = False, remove_outgoing: str | None = None,
                   batch_size: int = 1000) -> np.ndarray:
    """Test accuracy after removing the first ``counts`` units of every order.

    One jitted program: for each chunk of ``x`` the network runs once up to
    ``layer`` (its output is captured), then, for every (order, count), the
    layer's output is rebuilt with the removed units' columns replaced by
    their bias (``zero_bias``: by 0) and only the rest of the network runs
    (a Linen interceptor returns the rebuilt output; XLA drops the unused
    lower layers). This equals evaluating `prune_units`' parameters, up to
    float rounding in the layer's matmul.

    Args:
        model: a Flax Linen module, evaluated as ``model.apply(variables, x)``
            (inference mode).
        variables: its variables (``{"params": ..., "batch_stats": ...}``).
        x, y: test inputs and integer labels.
        layer: the pruned module's path in ``variables["params"]``.
        orders: ``(count,)`` or ``(rounds, count)`` unit indices in removal
            order (`removal_orders`).
        counts: the removal counts evaluated (default ``0 .. count``).
        axis: the units' axis of the layer's kernel.
        zero_bias, remove_outgoing: as in `prune_units`.
        batch_size: test examples per chunk.

    Returns:
        A float64 ``(rounds, len(counts))`` array of accuracies in [0, 1].

    Raises:
        ValueError: an unknown layer, orders or counts outside the layer.

    References:
        Heitmann, ``prune.py::prune_and_test`` (which re-evaluates the whole
        network after each removal).
    """
    params = variables["params"]
    module = _module(params, layer, "layer")
    kernel = jnp.asarray(module["kernel"])
    n = analysis.unit_vectors(kernel, axis=axis).shape[0]
    orders = _check_orders(orders, n)
    counts = np.arange(orders.shape[1] + 1) if counts is None else np.asarray(counts)
    if counts.ndim != 1 or not counts.size or counts.min() < 0 or counts.max() > orders.shape[1]:
        raise ValueError(f"counts must be a non-empty list in [0, {orders.shape[1]}], "
                         f"got {counts.tolist()}")
    zero_bias = tree.check_bool(zero_bias, "zero_bias")
    batch_size = tree.check_int(batch_size, "batch_size", minimum=1)
    if remove_outgoing is not None:  # checks the names and shapes before tracing
        prune_units(params, layer, jnp.ones(n, bool), axis=axis, remove_outgoing=remove_outgoing)
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or not len(y):
        raise ValueError(f"x and y need the same, non-zero length; got {len(x)} and {len(y)}")
    chunks = lambda a: a.reshape(-1, batch_size, *a.shape[1:])
    xs, ys, valid = map(chunks, data.pad_to_chunks(data.Split(x, y), batch_size))
    keep = (_positions(jnp.asarray(orders), n)[:, None, :]
            >= jnp.asarray(counts, jnp.int32)[None, :, None])
    correct = _curve_program(model, layer, axis, zero_bias, remove_outgoing)(
        variables, xs, ys, valid, keep.reshape(-1, n))
    return (np.asarray(correct, np.float64) / len(y)).reshape(len(orders), -1)


@functools.cache  # one compile per model and options, however often the curve is drawn
def _curve_program(model, layer: str, axis: int, zero_bias: bool, remove_outgoing):
    target = tuple(layer.split("/"))

    def is_target(module, method_name):
        return module.path == target and method_name == "__call__"

    @jax.jit
    def program(variables, xs, ys, valids, keep):
        params = variables["params"]
        bias = _module(params, layer, "layer").get("bias")

        def chunk(inputs):
            x, y, valid = inputs
            _, captured = model.apply(variables, x, capture_intermediates=is_target,
                                      mutable=["intermediates"])
            found = jax.tree.leaves(captured.get("intermediates", {}))
            if not found:
                raise ValueError(f"layer {layer!r} is never called by the model")
            out = found[0]  # the layer's output: (..., units), channels last

            def one(row):
                mask = row.astype(out.dtype)
                fill = 0.0 if zero_bias or bias is None else bias * (1 - mask)
                rebuilt = out * mask + fill

                def interceptor(next_fun, args, kwargs, context):
                    if is_target(context.module, context.method_name):
                        return rebuilt
                    return next_fun(*args, **kwargs)

                v = dict(variables)
                if remove_outgoing is not None:
                    v["params"] = prune_units(params, layer, row, axis=axis,
                                              remove_outgoing=remove_outgoing)
                with nn.intercept_methods(interceptor):
                    logits = model.apply(v, x)
                return jnp.sum((jnp.argmax(logits, -1) == y) * valid)

            return jax.lax.map(one, keep, batch_size=16)

        return jnp.sum(jax.lax.map(chunk, (xs, ys, valids)), axis=0)

    return program
