"""Permutations of weight vectors: ranks, sorted copies, sync, Lehmer codes.

LaPerm (Qiu & Suda, 2020) trains a network by *reconnecting* its initial
weights: every few steps each weight vector is replaced by its own initial
values, rearranged in the order of the current weights. A **weight vector**
is all incoming weights of one output unit: one column of a Dense kernel
``(in, out)``, all ``(h, w, in)`` entries of one output filter of a conv
kernel ``(h, w, in, out)``. Every function here views a leaf as the matrix
``leaf.reshape(-1, out)`` and works per column (a 1-D leaf is one vector), so
arrays keep their shape (and sharding) and no Python loop runs over vectors.

**Layouts.** Flax and the zoo put a unit's output on the *last* axis
(``(in, out)``, ``(h, w, in, out)``): the default ``output_axis=-1``.
Equinox and weights converted from PyTorch put it *first* (``(out, in)``,
``(out, in, kh, kw)``): pass ``output_axis=0``, and the weight vectors are
then the ``(in, kh, kw)`` slices ``leaf[o]``. The functions here move that
axis to the end, work as above, and move it back, so leaves keep their
layout. A 1-D leaf is one vector whatever ``output_axis`` is.

Ranks break ties by position (a stable sort), so `sync` is a deterministic
function of its inputs even when weights repeat, as they do after random
pruning (zeros) or with a single shared value. Values are ordered as by
``jnp.sort`` (`randjax.masks.order_key`: -0.0 ties with +0.0, every NaN
above +inf).

`lehmer_code` / `from_lehmer` encode permutations compactly (LaPerm's
export); measurements of permutations (ranking distance, cycles) are in
`randjax.analysis`.

References:
    Qiu & Suda, "Train by Reconnect: Decoupling Locations of Weights from
    their Values", NeurIPS 2020. https://arxiv.org/abs/2003.02570
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from randjax import tree
from randjax.masks import order_key

PyTree = Any

__all__ = ["check_output_axis", "columns", "find_permutation", "from_lehmer", "lehmer_code",
           "ranks", "sort_vectors", "sync", "sync_leaf"]


def check_output_axis(output_axis, ndim: int, where: str = "") -> int | None:
    """``output_axis`` as a non-negative axis of an ``ndim``-D leaf (None for ndim <= 1).

    Args:
        output_axis: the axis holding a leaf's output units (-1: Flax's
            ``(..., in, out)``; 0: Equinox's / PyTorch's ``(out, in, ...)``).
        ndim: the leaf's number of dimensions.
        where: names the leaf in the error message (e.g. ``"['Dense_0']['kernel']"``).

    Raises:
        ValueError: ``output_axis`` is not an int (bools excluded) or is out
            of range ``[-ndim, ndim)``; the message names the leaf and the axis.
    """
    if isinstance(output_axis, bool) or not isinstance(output_axis, (int, np.integer)):
        raise ValueError(f"output_axis must be an int, got {output_axis!r}")
    if ndim <= 1:
        return None
    if not -ndim <= output_axis < ndim:
        leaf = f"the leaf {where}" if where else "a leaf"
        raise ValueError(f"output_axis={output_axis} is out of range for {leaf} with "
                         f"ndim {ndim} (valid: {-ndim} .. {ndim - 1})")
    return int(output_axis) % ndim


def _to_last(x: jax.Array, axis: int | None) -> jax.Array:
    """``jnp.moveaxis(x, axis, -1)`` (as a lax transpose: see `_select`)."""
    if axis is None or axis == x.ndim - 1:
        return x
    return lax.transpose(x, (*(a for a in range(x.ndim) if a != axis), axis))


def _from_last(x: jax.Array, axis: int | None) -> jax.Array:
    """``jnp.moveaxis(x, -1, axis)``: undoes `_to_last`."""
    if axis is None or axis == x.ndim - 1:
        return x
    order = list(range(x.ndim - 1))
    order.insert(axis, x.ndim - 1)
    return lax.transpose(x, tuple(order))


def columns(x: jax.Array, output_axis: int = -1) -> jax.Array:
    """The weight vectors of ``x`` as the columns of a matrix: ``x.reshape(-1, out)``.

    A 1-D ``x`` is one vector (one column). With ``output_axis`` other than
    the last (e.g. 0 for an Equinox ``(out, in, kh, kw)`` weight), that axis
    is first moved to the end: column ``o`` is then ``x[o].ravel()``.

    Raises:
        ValueError: ``output_axis`` is out of range for ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.permute import columns
        >>> columns(jnp.zeros((3, 3, 16, 32))).shape, columns(jnp.zeros(5)).shape
        ((144, 32), (5, 1))
    """
    if x.ndim <= 1:
        return x.reshape(-1, 1)
    x = _to_last(x, check_output_axis(output_axis, x.ndim))
    return x.reshape(-1, x.shape[-1])


def _unsigned_key(x: jax.Array) -> jax.Array | None:
    """uint32 that sorts like ``x`` (see `order_key`), or None past 32 bits.

    XLA's CPU sort compares floats through a slower NaN-aware comparator;
    their integer keys sort faster.
    """
    key = order_key(x)
    return None if key.dtype.itemsize > 4 else lax.convert_element_type(key, jnp.uint32)


# The argsort below is written in lax primitives, not jnp functions: every
# jnp function is a nested jit to trace and lower, and LaPerm traces and
# lowers its sync in every process, with a warm compilation cache too (the
# `compile` phase of `experiments.benchmark --end_to_end=laperm_lenet_fmnist`).
# Every function works along the last axis of an array of any rank.

def _select(which: jax.Array, on_true, on_false) -> jax.Array:
    """``jnp.where`` in lax: numpy broadcasting; a Python scalar takes the other's dtype."""
    dtype = next(a.dtype for a in (on_true, on_false) if hasattr(a, "dtype"))
    parts = [which, *(a if hasattr(a, "dtype") else lax.full((), a, dtype)
                      for a in (on_true, on_false))]
    shape = jnp.broadcast_shapes(*(a.shape for a in parts))
    parts = [a if a.shape == shape else lax.broadcast_in_dim(
        a, shape, tuple(range(len(shape) - a.ndim, len(shape)))) for a in parts]
    return lax.select(*parts)


def _positions(shape: tuple[int, ...]) -> jax.Array:
    return lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)


def _as_rows(a: jax.Array) -> jax.Array:
    return a.reshape(-1, a.shape[-1])


_ROWS_GATHER = lax.GatherDimensionNumbers(
    offset_dims=(), collapsed_slice_dims=(1,), start_index_map=(1,),
    operand_batching_dims=(0,), start_indices_batching_dims=(0,))
_ROWS_SCATTER = lax.ScatterDimensionNumbers(
    update_window_dims=(), inserted_window_dims=(1,), scatter_dims_to_operand_dims=(1,),
    operand_batching_dims=(0,), scatter_indices_batching_dims=(0,))


def _take_last(a: jax.Array, index: jax.Array) -> jax.Array:
    """``jnp.take_along_axis(a, index, axis=-1)`` for in-range ``index`` of ``a``'s shape."""
    out = lax.gather(_as_rows(a), _as_rows(index)[..., None], _ROWS_GATHER, (1, 1),
                     mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return out.reshape(a.shape)


def _put_last(values: jax.Array, order: jax.Array) -> jax.Array:
    """``out[..., order[..., j]] = values[..., j]``; ``order`` permutes each row."""
    rows = _as_rows(values)
    out = lax.scatter(lax.full_like(rows, 0), _as_rows(order)[..., None], rows,
                      _ROWS_SCATTER, indices_are_sorted=False, unique_indices=True,
                      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    return out.reshape(values.shape)


def _sort_positions(packed: jax.Array, index_bits: int) -> jax.Array:
    """The positions held in the low ``index_bits`` of ``packed``, in sorted order."""
    return lax.sort(packed, dimension=packed.ndim - 1) & ((1 << index_bits) - 1)


def _index_bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def _radix_argsort(key: jax.Array) -> jax.Array:
    """Stable argsort of uint32 ``key`` along its last axis, by int32 sorts.

    XLA's CPU sort is fast for one int32 operand and several times slower
    for a (key, index) pair, which takes a generic comparator. So this is an
    LSD radix sort whose passes are single-operand sorts of
    ``digit << b | position`` (``b`` bits hold a position): each pass is
    stable by construction, and two passes cover 32 key bits while rows
    have at most 2**15 elements. `_argsort_last` needs it for long rows.
    """
    index_bits = _index_bits(key.shape[-1])
    digit_bits = 31 - index_bits
    position = _positions(key.shape)
    order = None
    for shift in range(0, 32, digit_bits):
        keys = key if order is None else _take_last(key, order)
        mask = (1 << min(digit_bits, 32 - shift)) - 1
        digit = lax.convert_element_type((keys >> shift) & mask, jnp.int32)
        step = _sort_positions((digit << index_bits) | position, index_bits)
        order = step if order is None else _take_last(order, step)
    return order


def _in_order(key_a, order_a, key_b, order_b) -> jax.Array:
    """Whether (key_a, order_a) comes before (key_b, order_b)."""
    return (key_a < key_b) | ((key_a == key_b) & (order_a < order_b))


def _coarse_rank_key(x: jax.Array, bits: int) -> jax.Array:
    """int32 in ``[0, 2**bits)``, non-decreasing in ``x`` along the last axis.

    Each row's finite range is cut into ``2**bits`` equal steps (``bits <=
    24``, which float32 counts exactly). Rounded float32 arithmetic is
    monotone, so the result never inverts the order of ``x``; it may only
    tie close values. -inf goes to the bottom, +inf and every NaN (which
    sort above every finite value, see `order_key`) to the top.
    """
    v = lax.convert_element_type(x, jnp.float32)
    finite = lax.is_finite(v)
    last = (v.ndim - 1,)
    low = lax.expand_dims(lax.reduce_min(_select(finite, v, jnp.inf), last), last)
    high = lax.expand_dims(lax.reduce_max(_select(finite, v, -jnp.inf), last), last)
    top = (1 << bits) - 1
    scale = top / _select(high > low, high - low, jnp.inf)
    # No range, or one that overflows or flushes to zero: one step for all.
    steps = _select(lax.is_finite(scale) & (scale > 0), (v - low) * scale, 0.0)
    steps = lax.convert_element_type(lax.clamp(0.0, lax.floor(steps), float(top)), jnp.int32)
    ends = _select((v != v) | (v > 0), top, lax.full((), 0, jnp.int32))   # +inf, NaN: top
    return _select(finite, steps, ends)


def _neighbours(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a[..., :-1]`` and ``a[..., 1:]``: every adjacent pair along the last axis."""
    n, axis = a.shape[-1], a.ndim - 1
    return lax.slice_in_dim(a, 0, n - 1, axis=axis), lax.slice_in_dim(a, 1, n, axis=axis)


def _swap_inverted_pairs(key: jax.Array, order: jax.Array):
    """Swaps every adjacent pair that is out of (key, order) order, all at once."""
    (key_a, key_b), (order_a, order_b) = _neighbours(key), _neighbours(order)
    inverted = ~_in_order(key_a, order_a, key_b, order_b)
    axis = key.ndim - 1
    no = lax.full((*inverted.shape[:-1], 1), False)
    take_next = lax.concatenate([inverted, no], axis)
    take_previous = lax.concatenate([no, inverted], axis)

    def swap(a):
        head, tail = _neighbours(a)
        first, last = lax.slice_in_dim(a, 0, 1, axis=axis), lax.slice_in_dim(a, -1, None, axis=axis)
        next_ = lax.concatenate([tail, first], axis)        # jnp.roll(a, -1)
        previous = lax.concatenate([last, head], axis)      # jnp.roll(a, 1)
        return lax.select(take_next, next_, lax.select(take_previous, previous, a))

    return swap(key), swap(order)


def _one_sort_argsort(x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One-sort argsort along the last axis, and whether it is exact.

    One int32 sort of ``coarse << b | position`` (``b`` bits hold a position,
    `_coarse_rank_key` fills the other ``31 - b``) orders the
    elements up to ties of the coarse key. For weight vectors such ties
    are rare (784-long uniform vectors: ~0.15 per vector) and come in
    pairs, so one simultaneous swap of the inverted adjacent pairs by the
    full (key, position) order finishes the sort; a pass over adjacent
    pairs then checks that the whole result is in order.

    Returns:
        ``(order, exact)``: the stable argsort whenever ``exact`` (one bool
        over all rows) is true.
    """
    index_bits = _index_bits(key.shape[-1])
    coarse = _coarse_rank_key(x, min(31 - index_bits, 24))
    order = _sort_positions((coarse << index_bits) | _positions(key.shape), index_bits)
    ordered, order = _swap_inverted_pairs(_take_last(key, order), order)
    (key_a, key_b), (order_a, order_b) = _neighbours(ordered), _neighbours(order)
    exact = _in_order(key_a, order_a, key_b, order_b)
    return order, lax.reduce_and(exact, tuple(range(exact.ndim)))


# Up to this length the coarse key has >= 21 bits: >= 2,000 steps per element.
_ONE_SORT_MAX_LENGTH = 1 << 10


def _argsort_last(x: jax.Array, key: jax.Array) -> jax.Array:
    """Stable argsort along the last axis of ``x``, whose uint32 sort key is ``key``.

    Long rows take the radix sort. Short rows take one sort and a fix-up
    (`_one_sort_argsort`); only when the fix-up could not order them (rare
    for weights) does a (key, position) sort run: slower than the radix
    sort, but one operation to compile where LaPerm's sync has a copy in
    every program that trains or evaluates.
    """
    if key.shape[-1] > _ONE_SORT_MAX_LENGTH:
        return _radix_argsort(key)
    order, exact = _one_sort_argsort(x, key)
    return lax.cond(exact, lambda: order, lambda: _pair_argsort(key))


def _pair_argsort(key: jax.Array) -> jax.Array:
    """Stable argsort along the last axis: one (key, position) sort."""
    return lax.sort((key, _positions(key.shape)), dimension=key.ndim - 1, is_stable=True,
                    num_keys=1)[1]


def _argsort_rows(x: jax.Array) -> jax.Array:
    """Stable argsort along the last axis."""
    key = _unsigned_key(x)
    if key is not None and x.shape[-1] <= 1 << 29:
        return _argsort_last(x, key)
    return lax.sort((order_key(x), _positions(x.shape)), dimension=x.ndim - 1,
                    is_stable=True, num_keys=1)[1]


def _argsort(x: jax.Array, axis: int) -> jax.Array:
    """Stable argsort along ``axis``."""
    axis = axis % x.ndim
    return _from_last(_argsort_rows(_to_last(x, axis)), axis)


def _check_array(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {x.shape}")
    return x


def ranks(x: jax.typing.ArrayLike, axis: int = -1) -> jax.Array:
    """Rank of each element of ``x`` along ``axis``; ties broken by position.

    The smallest element has rank 0; of two equal elements the one with the
    lower index ranks lower (a stable sort), so the ranks along ``axis`` are
    always a permutation of ``0 .. n-1``.

    Args:
        x: an array.
        axis: the axis to rank along.

    Returns:
        An int32 array of ``x``'s shape: ``argsort(argsort(x, axis), axis)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.permute import ranks
        >>> ranks(jnp.array([0.3, -1.0, 0.3, 2.0])).tolist()
        [1, 0, 2, 3]

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 3.
    """
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError("ranks needs an array with ndim >= 1, got a scalar")
    order = _argsort(x, axis)
    # The inverse permutation by a scatter: O(n) instead of a second sort.
    positions = jax.lax.broadcasted_iota(order.dtype, order.shape, axis % x.ndim)
    return jnp.put_along_axis(jnp.empty_like(order), order, positions, axis,
                              inplace=False, mode="promise_in_bounds")


def random_permutation(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.permutation(key, n)`` as int32, bit for bit, faster on CPU.

    JAX shuffles ``arange(n)`` by rounds of a stable sort on fresh random
    uint32 keys (`lax.sort_key_val`: a two-operand sort, which XLA's CPU
    backend runs through a generic comparator). On CPU each round here is
    `_radix_argsort`'s one-operand int32 sorts instead: the same stable order
    of the same keys, so the same permutation in about half the time
    (``shuffle`` in ``python -m experiments.benchmark --model=lenet300_100
    --dataset=fashion_mnist``). Other platforms run JAX's own. Jittable with
    ``n`` static; `randjax.data.shuffle_batches` draws each epoch's order by it.

    Args:
        key: PRNG key (typed or raw).
        n: the number of elements (Python int >= 0).

    Returns:
        An int32 permutation of ``range(n)``.
    """
    n = tree.check_int(n, "n", minimum=0)

    def jax_own(key):
        return jax.random.permutation(key, n).astype(jnp.int32)

    def radix(key):
        # JAX's round count: enough rounds that ties of all keys are unlikely.
        rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
        order = lax.iota(jnp.int32, n)
        for _ in range(rounds):
            key, subkey = jax.random.split(key)
            order = _take_last(order, _radix_argsort(jax.random.bits(subkey, (n,), jnp.uint32)))
        return order

    if n > 1 << 30:   # the radix sort's positions need bits of the int32 it sorts
        return jax_own(key)
    return lax.platform_dependent(key, cpu=radix, default=jax_own)


def _sort_leaf(x: jax.Array, output_axis: int = -1, where: str = "") -> jax.Array:
    axis = check_output_axis(output_axis, x.ndim, where)
    moved = _to_last(x, axis)
    return _from_last(_sort_columns(columns(moved)).reshape(moved.shape), axis)


# From this size on, float32 columns sort as integers (`_sort_columns`);
# below it the second sort in the program costs more to compile than it saves.
_INTEGER_SORT_SIZE = 1 << 20


def _sort_columns(c: jax.Array) -> jax.Array:
    """``jnp.sort(c, axis=0)``; large float32 ``c`` sorted as int32, several times faster.

    XLA's CPU sort compares floats through a comparator call per pair, and
    sorts one int32 operand fast. A float32's bits, the non-sign bits of
    negatives flipped, are an int32 of the same order, and back. That
    order is ``jnp.sort``'s, and the sorted values its values, unless some
    equal-comparing values differ in bits (+-0, subnormals the CPU flushes,
    NaNs): then ``jnp.sort`` itself runs.
    """
    if c.dtype != jnp.float32 or c.size < _INTEGER_SORT_SIZE:
        return jnp.sort(c, axis=0)
    flip = lambda b: _select(b < 0, lax.bitwise_xor(b, np.int32(0x7FFFFFFF)), b)
    plain = lax.reduce_and(lax.abs(c) >= np.finfo(np.float32).tiny, (0, 1))

    def as_integers():
        keys = flip(lax.bitcast_convert_type(lax.transpose(c, (1, 0)), jnp.int32))
        ordered = flip(lax.sort(keys, dimension=1))
        return lax.transpose(lax.bitcast_convert_type(ordered, jnp.float32), (1, 0))

    return lax.cond(plain, as_integers, lambda: jnp.sort(c, axis=0))


def _selected(path, leaf, filter: tree.Filter) -> bool:
    return hasattr(leaf, "ndim") and hasattr(leaf, "dtype") and bool(filter(path, leaf))


def sort_vectors(params: PyTree, *, filter: tree.Filter | None = None,
                 output_axis: int = -1) -> PyTree:
    """Sorted copy of every weight vector of the leaves chosen by ``filter``.

    Args:
        params: a parameter pytree.
        filter: ``filter(path, leaf) -> bool`` chooses the leaves to sort
            (default: kernels, i.e. ``leaf.ndim >= 2``). A chosen 1-D leaf
            is one vector.
        output_axis: the axis of every chosen leaf (ndim >= 2) that holds its
            output units: -1 (default) for Flax's ``(..., in, out)``, 0 for
            Equinox's / PyTorch's ``(out, in, ...)``.

    Returns:
        A pytree of ``params``' structure: chosen leaves with each weight
        vector (column of ``leaf.reshape(-1, out)`` for ``output_axis=-1``)
        sorted ascending, in the leaf's own shape and layout, ``None`` at the
        other leaves.

    Raises:
        ValueError: ``output_axis`` is out of range for a chosen leaf (the
            message names the leaf).

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.permute import sort_vectors
        >>> params = {"kernel": jnp.array([[3., 0.], [1., 2.]]), "bias": jnp.ones(2)}
        >>> s = sort_vectors(params)
        >>> s["kernel"].tolist(), s["bias"]
        ([[1.0, 0.0], [3.0, 2.0]], None)

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Alg. 1 (theta_sorted).
    """
    filter = tree.is_kernel if filter is None else tree.check_filter(filter)
    check_output_axis(output_axis, 0)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: (_sort_leaf(jnp.asarray(x), output_axis, jax.tree_util.keystr(path))
                         if _selected(path, x, filter) else None),
        params)


@functools.partial(jax.jit, static_argnames="output_axis")  # one program, not one per op
def sync_leaf(sorted0: jax.Array, w: jax.Array, output_axis: int = -1) -> jax.Array:
    """One leaf of `sync`: each vector of ``sorted0`` placed in the ranking of ``w``.

    Args:
        sorted0: a leaf of `sort_vectors` (each weight vector sorted
            ascending), made with the same ``output_axis``.
        w: an array of its shape.
        output_axis: the axis holding the output units (-1: ``(..., in,
            out)``; 0: ``(out, in, ...)``); ignored for a 1-D leaf.

    Returns:
        ``sorted0[ranks(w)]`` per column of ``reshape(-1, out)``, of
        ``sorted0``'s shape and dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.permute import sync_leaf
        >>> sync_leaf(jnp.array([1., 2., 3.]), jnp.array([0.5, -4., 0.1])).tolist()
        [3.0, 1.0, 2.0]
    """
    axis = check_output_axis(output_axis, w.ndim)
    moved = _to_last(w, axis)
    vectors = lambda a: _to_last(columns(a), 0)     # (out, n): one weight vector per row
    # target[order[j]] = sorted0[j]: the j-th smallest weight of the vector
    # takes the j-th smallest initial value, i.e. sorted0[ranks(w)], with one
    # sort and one scatter instead of two sorts and a gather.
    target = _put_last(vectors(_to_last(sorted0, axis)), _argsort_rows(vectors(moved)))
    return _from_last(_from_last(target, 0).reshape(moved.shape), axis)


def sync(sorted0: PyTree, params: PyTree, *, output_axis: int = -1) -> PyTree:
    """LaPerm's synchronisation: sorted initial values in the current ranking.

    Every weight vector ``w`` of a leaf with a sorted copy becomes
    ``sorted0[ranks(w)]``: a permutation of its own initial values in which
    the k-th smallest current weight holds the k-th smallest initial value.

    Args:
        sorted0: the output of `sort_vectors` (``None`` at skipped leaves).
        params: the current parameters, of ``sorted0``'s structure.
        output_axis: the output-unit axis the sorted copy was made with
            (`sort_vectors`): -1 for ``(..., in, out)``, 0 for ``(out, in, ...)``.

    Returns:
        ``params`` with every leaf that has a sorted copy replaced (same
        shape and dtype); other leaves are returned unchanged.

    Raises:
        ValueError: the trees or a leaf's shape do not match; ``output_axis``
            is out of range for a leaf (the message names it).

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.permute import sort_vectors, sync
        >>> w0 = {"kernel": jnp.array([[1.], [2.], [3.]])}
        >>> sync(sort_vectors(w0), {"kernel": jnp.array([[0.5], [-4.], [0.1]])}
        ...      )["kernel"].ravel().tolist()
        [3.0, 1.0, 2.0]

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Sec. 4, Alg. 1.
    """
    check_output_axis(output_axis, 0)
    s_leaves, s_def = jax.tree.flatten(sorted0, is_leaf=tree.is_none)
    try:
        p_leaves = s_def.flatten_up_to(params)
    except (ValueError, TypeError) as error:
        raise ValueError(f"sync: params must have the structure of sorted0: {error}") from None
    paths = [jax.tree_util.keystr(path) for path, _ in
             jax.tree_util.tree_flatten_with_path(sorted0, is_leaf=tree.is_none)[0]]
    out = []
    for where, s, p in zip(paths, s_leaves, p_leaves):
        if s is None:
            out.append(p)
            continue
        if jnp.shape(s) != jnp.shape(p):
            raise ValueError(f"sync: a leaf of shape {jnp.shape(p)} has a sorted copy "
                             f"of shape {jnp.shape(s)}")
        check_output_axis(output_axis, jnp.ndim(p), where)
        out.append(sync_leaf(jnp.asarray(s), jnp.asarray(p), output_axis
                             ).astype(jnp.result_type(p)))
    return s_def.unflatten(out)


def find_permutation(w0: jax.typing.ArrayLike, w: jax.typing.ArrayLike, *,
                     output_axis: int = -1) -> jax.Array:
    """Indices ``p`` with ``w = w0[p]`` per weight vector.

    For ``w`` a per-vector permutation of ``w0`` (e.g. after LaPerm), column
    ``c`` of ``reshape(-1, out)`` satisfies ``w[:, c] == w0[p[:, c], c]``;
    equal values are matched in order of position.

    Args:
        w0: the initial kernel (or one vector).
        w: a kernel of the same shape whose vectors permute ``w0``'s.
        output_axis: the output-unit axis (-1: ``(..., in, out)``; 0:
            ``(out, in, ...)``); the result is in the column layout of
            ``columns(w, output_axis)``.

    Returns:
        int32 indices of shape ``(n, out)`` (``(n, 1)`` for a vector).

    Raises:
        ValueError: the shapes differ, or ``output_axis`` is out of range.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.permute import find_permutation
        >>> find_permutation(jnp.array([5., 6., 7.]), jnp.array([7., 5., 6.])).ravel().tolist()
        [2, 0, 1]
    """
    w0, w = _check_array(w0, "w0"), _check_array(w, "w")
    if w0.shape != w.shape:
        raise ValueError(f"find_permutation: shapes differ, {w0.shape} vs {w.shape}")
    return _find_permutation(w0, w, output_axis)


@functools.partial(jax.jit, static_argnames="output_axis")
def _find_permutation(w0: jax.Array, w: jax.Array, output_axis: int) -> jax.Array:
    order0 = _argsort(columns(w0, output_axis), 0)
    return jnp.take_along_axis(order0, ranks(columns(w, output_axis), 0), axis=0)


def _check_columns_permutation(perm: np.ndarray, name: str) -> np.ndarray:
    perm = np.asarray(perm)
    if perm.ndim == 1:
        perm = perm[:, None]
    if (perm.ndim != 2 or not np.issubdtype(perm.dtype, np.integer)
            or not (np.sort(perm, axis=0) == np.arange(perm.shape[0])[:, None]).all()):
        raise ValueError(f"{name} needs integer permutations of 0..n-1 along axis 0 "
                         f"(a vector or an (n, m) matrix), got {perm!r}")
    return perm


def lehmer_code(perm: np.typing.ArrayLike) -> np.ndarray:
    """Lehmer code of each column of ``perm`` (host side, NumPy).

    Digit ``i`` of a permutation ``p`` counts the later entries smaller than
    ``p[i]``, so it lies in ``[0, n - 1 - i]``: the digits are a number in
    the factorial number system, which indexes the ``n!`` permutations
    (about ``log2(n!)`` bits instead of ``n * log2(n)``;
    `randjax.methods.laperm.save_permuted` packs them so). O(n^2) comparisons per
    column, vectorised over the columns.

    Args:
        perm: a permutation of ``0 .. n-1`` (1-D), or an ``(n, m)`` matrix
            whose columns are permutations (as `find_permutation` returns).

    Returns:
        int64 digits of ``perm``'s shape (a 1-D input gives a 1-D output).

    Raises:
        ValueError: a column is not a permutation of ``0 .. n-1``.

    Example:
        >>> from randjax.permute import lehmer_code, from_lehmer
        >>> lehmer_code([2, 0, 3, 1]).tolist()
        [2, 0, 1, 0]
        >>> from_lehmer([2, 0, 1, 0]).tolist()
        [2, 0, 3, 1]

    References:
        Qiu & Suda, "Train by Reconnect", NeurIPS 2020, Appendix A.4
        (a trained network as permutations of its initial weights).
    """
    flat = np.ndim(perm) == 1
    p = _check_columns_permutation(perm, "lehmer_code").astype(np.int64)
    code = np.zeros_like(p)
    for i in range(p.shape[0] - 1):
        code[i] = (p[i + 1:] < p[i]).sum(axis=0)
    return code[:, 0] if flat else code


def from_lehmer(code: np.typing.ArrayLike) -> np.ndarray:
    """The permutations whose Lehmer codes are ``code`` (inverse of `lehmer_code`).

    Args:
        code: Lehmer digits, 1-D or one column per permutation; digit ``i``
            must lie in ``[0, n - 1 - i]``.

    Returns:
        int64 permutations of ``code``'s shape.

    Raises:
        ValueError: a digit is out of its range.
    """
    code = np.asarray(code)
    flat = code.ndim == 1
    d = code[:, None] if flat else code
    n = d.shape[0]
    if (d.ndim != 2 or not np.issubdtype(d.dtype, np.integer) or (d < 0).any()
            or (d > (n - 1 - np.arange(n))[:, None]).any()):
        raise ValueError("from_lehmer needs integer digits with digit i in [0, n-1-i], "
                         f"got {code!r}")
    unused = np.ones(d.shape, bool)
    perm = np.zeros(d.shape, np.int64)
    columns = np.arange(d.shape[1])
    for i in range(n):
        # The (d[i]+1)-th still unused value of every column.
        position = np.argmax(np.cumsum(unused, axis=0) > d[i], axis=0)
        perm[i] = position
        unused[position, columns] = False
    return perm[:, 0] if flat else perm
