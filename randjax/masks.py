"""Binary masks from scores, with straight-through gradients.

Edge-popup (Ramanujan et al., 2020) keeps the top-k fraction of |scores| in
each layer; Zhou et al.'s supermasks (2019) sample each weight's mask from
Bernoulli(sigmoid(logits)). Both masks are piecewise constant, so their
gradients are replaced by straight-through estimators (`jax.custom_vjp`): the
forward value is an exact 0/1 array and the backward pass is the identity
(`topk_mask`) or goes through the sigmoid (`bernoulli_mask`,
`threshold_mask`).

`kth_largest` is the exact k-th largest value that `topk_mask` thresholds at.
It never sorts: it maps the values to unsigned integer keys with the same
order (`order_key`) and selects the k-th largest key digit by digit (radix
select), far faster than ``jnp.sort`` on CPU for millions of elements
(``python -m experiments.benchmark --select_size=2000000`` measures both).

References:
    Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
    CVPR 2020. https://arxiv.org/abs/1911.13299
    Zhou et al., "Deconstructing Lottery Tickets: Zeros, Signs, and the
    Supermask", NeurIPS 2019. https://arxiv.org/abs/1905.01067
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from randjax import tree

__all__ = ["BITS", "GRADIENTS", "ROUNDINGS", "bernoulli_mask", "from_order_key", "hash_bits",
           "keep_largest", "kth_largest", "order_key", "threshold_mask", "topk_mask"]

# Selection strategy (see `_select`): on CPU, radix select with 16-bit
# scatter-add histograms (2 passes for float32, 1 for bfloat16) is the
# fastest of the digit widths tried and far faster than a sort or than
# bisection's one counting pass per bit; below ~2**15 elements bisection is
# as fast and compiles faster. `experiments.benchmark --select_size=N` times
# `kth_largest` against ``jnp.sort``.
_RADIX_BITS = 16
_RADIX_MIN_SIZE = 1 << 15
_METHODS = ("auto", "radix", "bisect")
#: The kept-count rules of `topk_mask` (its ``rounding`` argument).
ROUNDINGS = ("round", "reference")


# ---------------------------------------------------------------------------
# Order-preserving keys.


def _key_dtype(dtype) -> np.dtype:
    """The unsigned integer dtype with the bit width of ``dtype``."""
    return np.dtype(f"uint{np.dtype(dtype).itemsize * 8}")


def _check_sortable(x: jax.Array, name: str) -> None:
    """Raises ValueError unless ``x`` holds real floats or integers."""
    dtype = x.dtype
    if dtype == jnp.bool_ or not (jnp.issubdtype(dtype, jnp.floating)
                                  or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(
            f"{name} must have a real floating or integer dtype, got {dtype}")


def _sign_bit(udtype) -> np.generic:
    return udtype.type(1 << (udtype.itemsize * 8 - 1))


def _max_key(udtype) -> np.generic:
    return udtype.type(np.iinfo(udtype).max)


def order_key(x: jax.Array) -> jax.Array:
    """Unsigned integer keys whose integer order is ``jnp.sort``'s order of ``x``.

    The keys have the bit width of ``x``'s dtype (``uint32`` for float32).
    Floats: the sign bit of non-negatives is set and all bits of negatives
    are inverted, so keys increase with the value. As in ``jnp.sort``,
    every value with ``x == 0`` (-0.0, +0.0, and subnormals where the backend
    flushes them, as XLA:CPU does) gets the key of +0.0, and every NaN (any
    sign or payload) gets the largest key, above +inf. Signed integers: the
    sign bit is flipped; unsigned integers are their own keys; bools are
    ``uint8`` 0 / 1.

    Args:
        x: an array of a real floating, integer or bool dtype.

    Returns:
        The keys, of ``x``'s shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.masks import order_key
        >>> x = jnp.array([2.0, -1.0, jnp.nan, -0.0, 0.0, -jnp.inf])
        >>> jnp.argsort(order_key(x), stable=True).tolist()
        [5, 1, 3, 4, 0, 2]
    """
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint8)
    udtype = _key_dtype(x.dtype)
    if jnp.issubdtype(x.dtype, jnp.unsignedinteger):
        return x
    bits = lax.bitcast_convert_type(x, udtype)
    sign = _sign_bit(udtype)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return bits ^ sign
    # lax, not jnp.where: LaPerm's sync traces this in every process (see
    # `randjax.permute`).
    keys = lax.select(bits >= sign, ~bits, bits | sign)
    keys = lax.select(x == 0, lax.full_like(keys, sign), keys)
    return lax.select(x != x, lax.full_like(keys, _max_key(udtype)), keys)   # NaN


def from_order_key(key: jax.Array, dtype) -> jax.Array:
    """The values of ``dtype`` whose `order_key` is ``key``: its inverse.

    Sorting keys is much faster than sorting floats on CPU (one integer
    comparison), so a sorted float array is ``from_order_key(jnp.sort(
    order_key(x)), x.dtype)``. Where `order_key` merges values, the inverse
    picks one: the key of zero gives +0.0 and the NaN key a NaN.

    Args:
        key: keys made by `order_key` from an array of ``dtype``.
        dtype: the original real floating or integer dtype.

    Returns:
        An array of ``dtype`` and ``key``'s shape.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.masks import from_order_key, order_key
        >>> x = jnp.array([2.0, -1.5, -0.0, jnp.inf])
        >>> from_order_key(jnp.sort(order_key(x)), x.dtype).tolist()
        [-1.5, 0.0, 2.0, inf]
    """
    if jnp.issubdtype(dtype, jnp.unsignedinteger):
        return key
    sign = _sign_bit(key.dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        return lax.bitcast_convert_type(key ^ sign, dtype)
    bits = jnp.where(key >= sign, key ^ sign, ~key)
    return lax.bitcast_convert_type(bits, dtype)


# ---------------------------------------------------------------------------
# Selection on unsigned keys.


def _radix_select(keys, k, nbits):
    """k-th largest of ``keys`` (< 2**nbits) by histograms of digits.

    Each pass histograms (scatter-add) the next digit of the keys that match
    the prefix decided so far, then finds the digit holding the k-th largest
    by suffix sums over the bins (`_search_histogram`). The passes are a
    `lax.fori_loop`: XLA:CPU compiles every unrolled pass separately.
    Keys narrower than a multiple of the digit width just have leading
    zero digits.

    Returns:
        ``(key, rank)``: the k-th largest key and ``k - count(keys > key)``,
        the rank (from 1) of the answer among the keys equal to it.
    """
    width = _RADIX_BITS
    passes = -(-nbits // width)
    key_dtype = keys.dtype
    if keys.dtype.itemsize * 8 < width:
        keys = keys.astype(jnp.uint32)
    udtype = keys.dtype

    def one_pass(i, carry):
        prefix, rank = carry
        high = (passes - i) * width  # bits [high, ...) are decided
        shift = (high - width).astype(udtype)
        digit = ((keys >> shift) & ((1 << width) - 1)).astype(jnp.int32)
        # Two shifts, each < the bit width of the keys (high may equal it).
        undecided = lambda v: (v >> (high - 1).astype(udtype)) >> 1
        digit = jnp.where(undecided(keys) == undecided(prefix), digit, 1 << width)
        hist = jnp.zeros(1 << width, jnp.int32).at[digit].add(1, mode="drop")
        d, above = _search_histogram(hist, rank, width)
        return prefix | (d.astype(udtype) << shift), rank - above

    start = (jnp.zeros((), udtype), jnp.asarray(k, jnp.int32))
    key, rank = lax.fori_loop(0, passes, one_pass, start)
    return key.astype(key_dtype), rank


def _search_histogram(hist, rank, width):
    """The largest ``d`` with ``sum(hist[d:]) >= rank``, and ``sum(hist[d+1:])``.

    Two levels, rows of ``2**(width // 2)`` bins: suffix sums over the row
    totals find the row, then suffix sums within it: each bin is touched
    once, instead of once per bit by a masked sum over all bins.
    """
    side = 1 << (width // 2)
    rows = hist.reshape(-1, side)
    totals = rows.sum(1)
    suffix = jnp.cumsum(totals[::-1])[::-1]  # suffix[r]: keys in rows >= r
    row = jnp.sum(suffix >= rank, dtype=jnp.int32) - 1
    within = jnp.cumsum(rows[row][::-1])[::-1] + (suffix[row] - totals[row])
    column = jnp.sum(within >= rank, dtype=jnp.int32) - 1
    return row * side + column, within[column] - rows[row, column]


def _bisect_select(keys, k, nbits):
    """k-th largest of ``keys`` (< 2**nbits), one counting pass per bit.

    Builds the answer from the most significant bit: a bit is set when at
    least k keys are >= the prefix with that bit set. Same returns as
    `_radix_select`.
    """
    one = jnp.ones((), keys.dtype)

    def set_bit(i, prefix):
        candidate = prefix | (one << (nbits - 1 - i).astype(keys.dtype))
        count = jnp.sum(keys >= candidate, dtype=jnp.int32)
        return jnp.where(count >= k, candidate, prefix)

    key = lax.fori_loop(0, nbits, set_bit, jnp.zeros((), keys.dtype))
    return key, k - jnp.sum(keys > key, dtype=jnp.int32)


def _select(keys, k, nbits, method):
    """Dispatches to a selection algorithm; see `kth_largest`'s ``method``."""
    radix = functools.partial(_radix_select, k=k, nbits=nbits)
    bisect = functools.partial(_bisect_select, k=k, nbits=nbits)
    if method == "radix":
        return radix(keys)
    if method == "bisect" or keys.size < _RADIX_MIN_SIZE:
        return bisect(keys)
    # Scatter-add histograms are cheap on CPU but serialise on TPU and
    # contend on GPU atomics (float keys crowd a few top digits), where the
    # 32 bandwidth-bound reductions of bisection are the safe choice.
    return lax.platform_dependent(keys, cpu=radix, default=bisect)


def _nth_tie_index(eq, rank, from_end, method):
    """Flat index of the rank-th True of ``eq``, counted from either end."""
    n = eq.size
    iota = jnp.arange(n, dtype=jnp.uint32)
    position = iota + 1 if from_end else n - iota
    keys = jnp.where(eq, position, jnp.uint32(0))
    key, _ = _select(keys, rank, n.bit_length(), method)
    return key - 1 if from_end else n - key


# ---------------------------------------------------------------------------
# Validation.


def _check_size(x: jax.Array, name: str) -> None:
    if x.size == 0 or x.size >= 2**31:
        raise ValueError(
            f"{name} must have between 1 and 2**31 - 1 elements, got {x.size}")


def _check_float(x: jax.Array, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")


# ---------------------------------------------------------------------------
# Public API.


def kth_largest(x: jax.Array, k: int, *, method: str = "auto") -> jax.Array:
    """The exact k-th largest value of an array, without sorting.

    Bitwise equal to ``jnp.sort(x.ravel())[-k]`` for every input, including
    the cases where ``jnp.sort`` (a stable sort that compares -0.0 equal to
    +0.0 and puts every NaN after +inf) depends on input order:

    * -0.0 vs +0.0: they tie, so the k-th largest is the zero that the stable
      sort puts at position ``n - k``: the ``r``-th zero from the end in
      flattened order, with ``r = k - count(x > 0) - count(isnan(x))``.
      "Zero" means ``x == 0`` on the backend: XLA:CPU compares subnormals
      equal to zero (denormals-are-zero), so ``jnp.sort`` and this function
      both treat them as zeros there, keeping their own bits.
    * NaN: NaNs are larger than +inf; with ``k <= count(isnan(x))`` the
      result is the k-th NaN from the end in flattened order, with its own
      sign and payload bits.

    The values are mapped to unsigned keys with the same order (sign bit of
    non-negatives set, all bits of negatives inverted; integers: sign bit
    flipped; see `order_key`) and the k-th largest key is selected digit by
    digit: on CPU, for 2**15 elements or more, radix select with 16-bit
    histograms (2 passes for float32); otherwise bisection, one counting
    reduction per key bit. Each pass is O(n). When
    the answer is a zero or a NaN, one more selection (over flat indices)
    finds which of the tied elements the stable sort would return.

    Args:
        x: array of any shape (flattened) with a floating dtype (float16,
            bfloat16, float32, float64) or an integer dtype.
        k: Python int with ``1 <= k <= x.size``; static under `jax.jit`.
        method: ``"auto"`` (radix on CPU from 2**15 elements, else bisect),
            ``"radix"`` or ``"bisect"``; all give the same result.

    Returns:
        A scalar of ``x.dtype``. Under `jax.vmap`, one per batch element.

    Raises:
        ValueError: ``k`` is not an int in ``[1, x.size]``; ``x`` is empty,
            has 2**31 or more elements, or is boolean or complex; unknown
            ``method``.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.masks import kth_largest
        >>> x = jnp.array([[3.0, -1.0], [7.0, 3.0]])
        >>> float(kth_largest(x, 1)), float(kth_largest(x, 3))
        (7.0, 3.0)

    References:
        Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
        Network?", CVPR 2020 (the per-layer top-k threshold).
    """
    x = jnp.asarray(x)
    _check_sortable(x, "x")
    _check_size(x, "x")
    k = tree.check_int(k, "k", what="static under jit")
    tree.check_choice(method, _METHODS, "method")
    if not 1 <= k <= x.size:
        raise ValueError(f"k must be in [1, x.size={x.size}], got {k}")
    return _kth_largest(x, k, method)


# Jitted so that eager calls reuse the compiled selection (k is static).
@functools.partial(jax.jit, static_argnums=(1, 2))
def _kth_largest(x, k, method):
    """`kth_largest` after validation."""
    keys = order_key(x).ravel()
    key, rank = _select(keys, k, keys.dtype.itemsize * 8, method)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return from_order_key(key, x.dtype)
    sign = _sign_bit(keys.dtype)
    tied = (key == sign) | (key == _max_key(keys.dtype))

    def pick_tie():
        index = _nth_tie_index(keys == key, rank, True, method)
        return x.ravel()[index]

    return lax.cond(tied, pick_tie, lambda: from_order_key(key, x.dtype))


def _kept_count(n: int, density: float, rounding: str) -> int:
    """How many of ``n`` entries a density keeps (see `topk_mask`)."""
    if rounding == "round":
        return max(1, round(density * n))
    return n - int((1 - density) * n)


def topk_mask(scores: jax.Array, density: float, *,
              rounding: str = "round") -> jax.Array:
    """Edge-popup mask: 1 for the largest scores, straight-through gradient.

    Keeps exactly ``k`` entries, also with ties: every entry above the
    threshold ``t = kth_largest(scores, k)`` and, among the entries equal to
    ``t``, the first ones in flattened (row-major) order. Values are ordered
    as by ``jnp.sort``: -0.0 ties with +0.0 (as do subnormals on backends that
    compare them equal to zero, e.g. XLA:CPU) and NaN is larger than +inf. The
    gradient is straight-through: ``d mask / d scores`` is the identity, so
    the upstream gradient reaches every score unchanged.

    The kept count is, for ``n = scores.size``:

    * ``rounding="round"`` (default): ``k = max(1, round(density * n))``
      (Python's round, half to even).
    * ``rounding="reference"``: ``k = n - int((1 - density) * n)``, exactly
      the count of hidden-networks' ``GetSubnet``, which sorts and zeroes the
      ``int((1 - density) * n)`` smallest. This is ``ceil(density * n)``
      except where float error in ``(1 - density) * n`` crosses an integer
      (n = 10, density = 0.9: ``(1 - 0.9) * 10 = 0.9999999999999998``, so it
      keeps 10). It can be 0 (e.g. ``density < 2**-53``, where
      ``1 - density == 1.0``): the mask is then all zeros.

    So the two agree when ``density * n`` is an integer (barring that float
    error) or has a fractional part above 0.5; "reference" keeps one more
    when the fractional part is in (0, 0.5) (n = 10, density = 0.33: 3 vs 4)
    or exactly 0.5 with an even integer part (n = 5, density = 0.5: 2 vs 3).
    This is common in practice (a 3x3x64x64 conv kernel, n = 36864, at
    density 0.3 or 0.1; n = 1000 at density 0.9): use "reference" to
    reproduce hidden-networks' per-layer counts.

    ``GetSubnet`` breaks ties by torch's (unstable) sort order; here ties are
    deterministic.

    Args:
        scores: floating array of any shape (edge-popup passes |scores|).
        density: Python float in (0, 1], the fraction of entries kept; static.
        rounding: ``"round"`` or ``"reference"``, see above.

    Returns:
        A 0/1 array with the shape and dtype of ``scores``.

    Raises:
        ValueError: ``density`` is not a Python real in (0, 1] (NaN, arrays
            and tracers included); ``scores`` is not floating or is empty;
            unknown ``rounding``.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.masks import topk_mask
        >>> topk_mask(jnp.array([0.3, 0.9, 0.1, 0.5]), 0.5)
        Array([0., 1., 0., 1.], dtype=float32)
        >>> topk_mask(jnp.ones(4), 0.5)  # ties: the first ones are kept
        Array([1., 1., 0., 0.], dtype=float32)

    References:
        Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
        Network?", CVPR 2020; allenai/hidden-networks, utils/conv_type.py.
    """
    density = tree.check_density(density)
    tree.check_choice(rounding, ROUNDINGS, "rounding")
    scores = jnp.asarray(scores)
    _check_float(scores, "scores")
    _check_size(scores, "scores")
    return _topk_mask(scores, _kept_count(scores.size, density, rounding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _topk_mask(scores, k):
    """The forward top-k mask, with an identity (straight-through) VJP."""
    return _topk_forward(scores, k)


# Jitted so that eager calls reuse the compiled selection (k is static).
@functools.partial(jax.jit, static_argnums=1)
def _topk_forward(scores, k):
    """The 0/1 top-k mask of `topk_mask` for a kept count ``k``."""
    if k == 0:
        return jnp.zeros_like(scores)
    return _largest(scores, k).astype(scores.dtype)


def _largest(scores, k):
    """Boolean mask of the ``k`` (>= 1; may be traced) largest, ties by flat order."""
    keys = order_key(scores).ravel()
    key, rank = _select(keys, k, keys.dtype.itemsize * 8, "auto")
    eq = keys == key
    tie_count = jnp.sum(eq, dtype=jnp.int32)

    def first_ties():
        cut = _nth_tie_index(eq, rank, False, "auto")
        return eq & (jnp.arange(eq.size, dtype=jnp.uint32) <= cut)

    # Usually every tie is kept (continuous scores: a single one); the
    # extra selection only runs when ties straddle the cut (outside vmap,
    # which turns the cond into a select of both branches).
    kept_ties = lax.cond(tie_count == rank, lambda: eq, first_ties)
    mask = (keys > key) | kept_ties
    return mask.reshape(scores.shape)


@jax.jit
def _keep_largest(scores, k):
    return jnp.where(k > 0, _largest(scores, jnp.maximum(k, 1)), False)


def keep_largest(scores: jax.Array, k) -> jax.Array:
    """Boolean mask of exactly the ``k`` largest ``scores``; ``k`` may vary freely.

    The selection of `topk_mask` (same order and deterministic ties: among
    entries equal to the threshold the first ones in flattened order are
    kept) for a kept count given as a number rather than a density. ``k``
    is an argument of one compiled program, not a static one, so masks at
    many counts (the rounds of iterative pruning) compile once per shape.
    No gradient is defined: use it for masks that are set, not learned.

    Args:
        scores: a floating array of any shape; ``-inf`` entries are kept last.
        k: an int (or int32 array) in ``[0, scores.size]``.

    Returns:
        A boolean array of ``scores``' shape with ``k`` True entries.

    Raises:
        ValueError: ``scores`` is not floating or is empty; a Python ``k``
            outside ``[0, scores.size]``.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.masks import keep_largest
        >>> keep_largest(jnp.array([0.3, 0.9, 0.1, 0.9]), 2).tolist()
        [False, True, False, True]
    """
    scores = jnp.asarray(scores)
    _check_float(scores, "scores")
    _check_size(scores, "scores")
    if isinstance(k, (int, np.integer)) and not 0 <= k <= scores.size:
        raise ValueError(f"k must be in [0, scores.size={scores.size}], got {k}")
    return _keep_largest(scores, jnp.asarray(k, jnp.int32))


def _topk_mask_fwd(scores, k):
    return _topk_forward(scores, k), None


def _topk_mask_bwd(k, residual, g):
    del k, residual
    return (g,)


_topk_mask.defvjp(_topk_mask_fwd, _topk_mask_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _straight_through(logits, hard, gradient):
    """Returns ``hard``; the VJP goes to ``logits`` as ``gradient`` says.

    ``"sigmoid"``: through a sigmoid of the logits; ``"identity"``: unchanged.
    """
    del logits, gradient
    return hard


def _straight_through_fwd(logits, hard, gradient):
    del gradient
    return hard, logits


def _straight_through_bwd(gradient, logits, g):
    if gradient == "identity":
        return g.astype(logits.dtype), jnp.zeros_like(g)
    wide = jnp.promote_types(logits.dtype, jnp.float32)
    z = logits.astype(wide)
    # sigmoid(z) * sigmoid(-z) == s * (1 - s), without cancellation for
    # large |z| (where 1 - s rounds to 0).
    slope = jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)
    grad = (g.astype(wide) * slope).astype(logits.dtype)
    return grad, jnp.zeros_like(g)


_straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


#: The backward passes of `bernoulli_mask` (its ``gradient`` argument).
GRADIENTS = ("sigmoid", "identity")
#: Where `bernoulli_mask`'s uniform bits come from (its ``bits`` argument).
BITS = ("threefry", "hash")


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform ``uint32`` words from a counter hash: cheap bits for masks.

    Element ``i`` (flattened) is murmur3's 32-bit finaliser ``fmix32`` of
    ``i XOR seed``, with one ``seed`` drawn from ``key``. ``fmix32`` is a
    bijection with full avalanche, so the words of one call are distinct
    and look independent; a new key gives a new seed. It is a counter-based
    generator like threefry, with one mixing round instead of twenty: much
    cheaper where every weight needs fresh bits at every step, and weaker
    (no guarantee beyond what masks and dropout need).

    Args:
        key: a `jax.random` key.
        shape: the shape of the result.

    Returns:
        A ``uint32`` array of ``shape``.

    Example:
        >>> import jax
        >>> from randjax.masks import hash_bits
        >>> bits = hash_bits(jax.random.key(0), (1000,))
        >>> bool((bits == hash_bits(jax.random.key(0), (1000,))).all()), len(set(bits.tolist()))
        (True, 1000)
    """
    seed = jax.random.bits(key, (), jnp.uint32)
    h = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape) ^ seed
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def bernoulli_mask(key: jax.Array, logits: jax.Array, *,
                   gradient: str = "sigmoid", bits: str = "threefry") -> jax.Array:
    """Zhou's supermask: a Bernoulli(sigmoid(logits)) sample, straight-through.

    The forward value is an exact 0/1 sample, the same as
    ``jax.random.bernoulli(key, jax.nn.sigmoid(logits))`` with the sigmoid
    taken in (at least) float32, so bfloat16 logits do not coarsen the
    probabilities. With ``bits="hash"`` the uniform words come from
    `hash_bits` instead of threefry (``word < p * 2**32``, with ``p`` in
    float32: resolved to at worst ``2**-24``): several times cheaper on CPU, where sampling a
    mask for every weight at every step would otherwise cost more than a
    small network's forward and backward passes. The backward pass is
    straight-through:

    * ``gradient="sigmoid"`` (Zhou et al.'s supermask): through the sigmoid,
      ``d/dlogits = upstream * sigmoid(logits) * (1 - sigmoid(logits))``
      (computed as ``sigmoid(z) * sigmoid(-z)`` in at least float32, which
      stays accurate for large ``|z|``);
    * ``gradient="identity"`` (Mikler's Training Optimal Masks): the
      gradient with respect to the sampled mask is the logits' gradient,
      ``d/dlogits = upstream``.

    Args:
        key: a `jax.random` key; a fixed key gives a fixed sample.
        logits: floating array of any shape, the mask logits.
        gradient: ``"sigmoid"`` or ``"identity"``, the backward pass.
        bits: ``"threefry"`` (`jax.random.bernoulli`) or ``"hash"``
            (`hash_bits`).

    Returns:
        A 0/1 array with the shape and dtype of ``logits``.

    Raises:
        ValueError: ``logits`` is not floating; an unknown ``gradient`` or
            ``bits``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from randjax.masks import bernoulli_mask
        >>> logits = jnp.array([-30.0, 0.0, 30.0])
        >>> bernoulli_mask(jax.random.key(0), logits)[jnp.array([0, 2])]
        Array([0., 1.], dtype=float32)

    References:
        Zhou et al., "Deconstructing Lottery Tickets: Zeros, Signs, and the
        Supermask", NeurIPS 2019; Mikler, "On Pruning Methods for Neural
        Networks", 2021, Sec. 3.3.1.
    """
    logits = jnp.asarray(logits)
    _check_float(logits, "logits")
    tree.check_choice(gradient, GRADIENTS, "gradient")
    tree.check_choice(bits, BITS, "bits")
    wide = jnp.promote_types(logits.dtype, jnp.float32)
    probs = jax.nn.sigmoid(lax.stop_gradient(logits).astype(wide))
    if bits == "threefry":
        hard = jax.random.bernoulli(key, probs)
    else:  # the largest float32 below 2**32 stands for p = 1 (a 2**-24 shortfall)
        threshold = jnp.minimum(probs.astype(jnp.float32) * 2.0**32, 4294967040.0)
        hard = hash_bits(key, logits.shape) < threshold.astype(jnp.uint32)
    hard = hard.astype(logits.dtype)
    return _straight_through(logits, hard, gradient)


def threshold_mask(logits: jax.Array) -> jax.Array:
    """Deterministic supermask: 1 where sigmoid(logits) > 0.5, straight-through.

    The mask is ``logits > 0``, which is ``sigmoid(logits) > 0.5`` in exact
    arithmetic (a float sigmoid rounds to 0.5 for tiny positive logits, which
    this avoids). Logit 0 (probability 0.5) and NaN give 0. The gradient is
    that of `bernoulli_mask`: ``upstream * sigmoid'(logits)``.

    Args:
        logits: the mask logits, a floating array of any shape.

    Returns:
        The 0/1 mask, of the shape and dtype of ``logits``.

    Raises:
        ValueError: ``logits`` has no floating dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from randjax.masks import threshold_mask
        >>> threshold_mask(jnp.array([-1.0, 0.0, 2.0]))
        Array([0., 0., 1.], dtype=float32)

    References:
        Zhou et al., "Deconstructing Lottery Tickets: Zeros, Signs, and the
        Supermask", NeurIPS 2019.
    """
    logits = jnp.asarray(logits)
    _check_float(logits, "logits")
    hard = (lax.stop_gradient(logits) > 0).astype(logits.dtype)
    return _straight_through(logits, hard, "sigmoid")
