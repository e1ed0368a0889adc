"""Weight-vector permutations: ranks, sorted copies, sync, find_permutation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from randjax.permute import (
    _argsort,
    _coarse_rank_key,
    _one_sort_argsort,
    _radix_argsort,
    _unsigned_key,
    find_permutation,
    random_permutation,
    ranks,
    sort_vectors,
    sync,
)

# Few distinct values, so that ties are common.
_VALUES = st.integers(-3, 3).map(float)
_SHAPES = st.one_of(
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=7),   # dense (in, out)
    hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=3),   # conv (h, w, in, out)
)


def _np_ranks(v: np.ndarray) -> np.ndarray:
    """Stable ranks of a 1-D array, the slow obvious way."""
    order = sorted(range(len(v)), key=lambda i: (v[i], i))
    out = np.empty(len(v), np.int64)
    out[order] = np.arange(len(v))
    return out


def _vectors(x) -> np.ndarray:
    """Weight vectors as rows: one per output unit (the last axis)."""
    x = np.asarray(x)
    return np.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_ranks_match_stable_reference(data):
    x = data.draw(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=6),
                             elements=_VALUES))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    got = np.asarray(ranks(x, axis))
    want = np.apply_along_axis(_np_ranks, axis, x)
    np.testing.assert_array_equal(got, want)


def test_ranks_tie_signed_zeros_by_position():
    # -0.0 == 0.0: a bit-pattern order would put -0.0 first.
    assert ranks(jnp.array([0.0, -0.0, -1.0, 0.0])).tolist() == [1, 2, 0, 3]
    assert ranks(jnp.array([[2.0, 1.0], [1.0, 1.0]]), axis=0).tolist() == [[1, 0], [0, 1]]


def test_ranks_rejects_scalar():
    with pytest.raises(ValueError, match="ndim >= 1"):
        ranks(jnp.float32(1.0))


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_sync_is_sorted0_in_the_ranking_of_params(data):
    shape = data.draw(_SHAPES)
    w0 = data.draw(hnp.arrays(np.float32, shape, elements=_VALUES))
    w = data.draw(hnp.arrays(np.float32, shape, elements=_VALUES))
    sorted0 = sort_vectors({"k": w0})
    got = np.asarray(sync(sorted0, {"k": w})["k"])
    assert got.shape == shape and got.dtype == np.float32
    for g, v0, v in zip(_vectors(got), _vectors(w0), _vectors(w)):
        # A permutation of the vector's own initial values, bitwise ...
        np.testing.assert_array_equal(np.sort(g).view(np.int32), np.sort(v0).view(np.int32))
        # ... placed so that the k-th smallest weight gets the k-th smallest value.
        np.testing.assert_array_equal(g, np.sort(v0)[_np_ranks(v)])


def test_sort_vectors_layouts_and_skipped_leaves():
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 2, 5))
    params = {"conv": {"kernel": kernel, "bias": jnp.arange(5.0)},
              "dense": {"kernel": jnp.array([[3.0, 0.0], [1.0, 2.0], [2.0, -1.0]])}}
    s = sort_vectors(params)
    assert s["conv"]["bias"] is None
    chex.assert_trees_all_equal_shapes(s["conv"]["kernel"], kernel)
    # One output filter = all (h, w, in) entries of kernel[..., j].
    for j in range(5):
        np.testing.assert_array_equal(np.asarray(s["conv"]["kernel"])[..., j].ravel(),
                                      np.sort(np.asarray(kernel)[..., j].ravel()))
    np.testing.assert_array_equal(s["dense"]["kernel"], [[1.0, -1.0], [2.0, 0.0], [3.0, 2.0]])
    only_bias = sort_vectors(params, filter=lambda path, leaf: leaf.ndim == 1)
    assert only_bias["dense"]["kernel"] is None
    np.testing.assert_array_equal(only_bias["conv"]["bias"], jnp.arange(5.0))
    with pytest.raises(ValueError, match="filter"):
        sort_vectors(params, filter="kernel")


@pytest.mark.parametrize("special", [None, -0.0, -1e-40, -np.nan])
def test_a_large_leaf_sorts_as_integers_to_jnp_sorts_bits(special):
    # 2**20 weights: the int32 sort, unless values that compare equal
    # differ in bits (+-0, a subnormal XLA:CPU flushes, NaN): then jnp.sort,
    # which keeps +0.0 before the special value that follows it.
    leaf = jax.random.normal(jax.random.key(3), (1 << 16, 16))
    if special is not None:
        leaf = leaf.at[7, 3].set(0.0).at[9, 3].set(special)
    got = jax.jit(sort_vectors)({"kernel": leaf})["kernel"]
    want = jnp.sort(leaf, axis=0)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32),
                                  np.asarray(want).view(np.uint32))
    program = jax.jit(sort_vectors).lower({"kernel": leaf}).as_text()
    assert "tensor<16x65536xi32>" in program


def test_sync_passes_skipped_leaves_and_jits():
    params = {"kernel": jax.random.normal(jax.random.key(1), (6, 4)), "bias": jnp.ones(4)}
    sorted0 = sort_vectors(params)
    current = jax.tree.map(lambda x: x * -2.0 + 1.0, params)
    eager = sync(sorted0, current)
    assert eager["bias"] is current["bias"]
    chex.assert_trees_all_equal(jax.jit(sync)(sorted0, current), eager)
    # Negating reverses every vector's order: the weight of rank r gets the
    # value of rank n-1-r.
    reversed0 = np.asarray(sorted0["kernel"])[::-1]
    np.testing.assert_array_equal(
        eager["kernel"], np.take_along_axis(reversed0, np.asarray(ranks(params["kernel"], 0)), 0))
    # Syncing the initial weights gives them back.
    np.testing.assert_array_equal(sync(sorted0, params)["kernel"], params["kernel"])


def test_sync_rejects_mismatched_trees():
    sorted0 = sort_vectors({"a": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match="structure"):
        sync(sorted0, {"b": jnp.ones((2, 2))})
    with pytest.raises(ValueError, match="shape"):
        sync(sorted0, {"a": jnp.ones((3, 2))})


def test_find_permutation_recovers_known_permutation():
    w0 = jax.random.normal(jax.random.key(2), (7, 3))
    perms = np.stack([np.random.default_rng(c).permutation(7) for c in range(3)], axis=1)
    w = np.take_along_axis(np.asarray(w0), perms, axis=0)
    np.testing.assert_array_equal(find_permutation(w0, w), perms)
    # With ties, equal values are matched in order of position.
    np.testing.assert_array_equal(
        find_permutation(jnp.array([1.0, 0.0, 1.0]), jnp.array([1.0, 1.0, 0.0])).ravel(),
        [0, 2, 1])
    with pytest.raises(ValueError, match="shapes differ"):
        find_permutation(jnp.ones(3), jnp.ones(4))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, jnp.bfloat16, np.int32, np.int8,
                                   np.uint8, np.uint32])
@pytest.mark.parametrize("shape,axis", [((784, 30), 0), ((3, 2, 9), 1), ((1,), 0),
                                        ((40_000, 2), 0)])   # 3 radix passes
def test_ranks_match_numpy_stable_sort_across_dtypes(dtype, shape, axis):
    # Full-range values with many ties: every 32-bit digit of the radix
    # passes matters, and ties must keep their positions.
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, shape, dtype=np.int64, endpoint=True)
        x[..., ::3] = x[..., :1]
        x = jnp.asarray(x.astype(dtype))
    else:
        x = rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3], shape)
        x[..., ::3], x[..., 1::4], x[..., 2::5], x[..., ::7] = 0.0, -0.0, np.inf, -np.inf
        x[..., 5::11] = x[..., :1]
        x[..., 3::13], x[..., 4::17] = np.nan, -np.nan   # every NaN above +inf, as NumPy
        x = jnp.asarray(x, dtype)
    reference = np.asarray(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x)
    order = np.argsort(reference, axis=axis, kind="stable")
    want = np.empty_like(order)
    np.put_along_axis(want, order, np.arange(shape[axis]).reshape(
        [-1 if a == axis else 1 for a in range(len(shape))]), axis=axis)
    np.testing.assert_array_equal(np.asarray(ranks(x, axis)), want)


def test_one_sort_argsort_is_exact_or_says_so():
    # Weight-like vectors take the one-sort path and get the stable order.
    # Close values far from the rest of their vector share a coarse key in
    # reversed order: the fix-up cannot order them, says so, and `_argsort`
    # falls back to the radix sort.
    weights = np.array(jax.random.uniform(jax.random.key(0), (784, 300), minval=-0.1,
                                            maxval=0.1))
    weights[::7, :3] = 0.0
    close = (1.0 + np.arange(40)[::-1] * 2.0 ** -23).astype(np.float32)
    crafted = np.concatenate([[1000.0], close, [0.0, -0.0]]).astype(np.float32)[:, None]
    for x, one_sort in ((weights, True), (crafted, False)):
        rows = jnp.asarray(x.T)
        order, exact = _one_sort_argsort(rows, _unsigned_key(rows))
        want = np.argsort(x, axis=0, kind="stable")
        assert bool(exact) == one_sort
        if one_sort:
            np.testing.assert_array_equal(np.asarray(order).T, want)
        np.testing.assert_array_equal(np.asarray(_argsort(jnp.asarray(x), 0)), want)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 40),
                  elements=st.floats(width=32, allow_nan=True, allow_subnormal=True)),
       st.sampled_from([8, 21, 24]))
def test_coarse_rank_key_never_inverts_the_order(x, bits):
    x = jnp.asarray(x)
    coarse = _coarse_rank_key(x, bits)
    ordered = np.asarray(coarse)[np.asarray(_radix_argsort(_unsigned_key(x)))]
    assert ordered.min() >= 0 and ordered.max() < 2 ** bits
    assert (np.diff(ordered) >= 0).all(), ordered


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000, 60_000])
def test_random_permutation_is_jaxs_bit_for_bit(n):
    keys = [jax.random.key(7), jax.random.PRNGKey(11)]   # typed and raw
    draw = jax.jit(random_permutation, static_argnums=1)
    for key in keys:
        ours = np.asarray(draw(key, n))
        assert ours.dtype == np.int32
        np.testing.assert_array_equal(ours, jax.random.permutation(key, n))


def test_random_permutation_orders_tied_keys_as_jax():
    # 300,000 uint32 keys hold ~10 tied pairs per round: the stable order
    # decides where each pair lands, so a sort that is not stable differs.
    key = jax.random.key(7)
    _, subkey = jax.random.split(key)
    bits = np.asarray(jax.random.bits(subkey, (300_000,), jnp.uint32))
    assert len(np.unique(bits)) < len(bits)
    np.testing.assert_array_equal(random_permutation(key, 300_000),
                                  jax.random.permutation(key, 300_000))


def test_random_permutation_rejects_a_bad_size():
    with pytest.raises(ValueError, match="n must be"):
        random_permutation(jax.random.key(0), -1)
