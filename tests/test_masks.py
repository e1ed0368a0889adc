"""Tests for randjax.masks: exact k-th largest, top-k and supermask masks.

Compiles dominate the run time on CPU (k and density are static), so the
jitted helpers below are module-level and shared, and batches of arrays go
through one `jax.vmap`.
"""

import functools
import math

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from randjax.masks import (
    bernoulli_mask,
    from_order_key,
    hash_bits,
    kth_largest,
    order_key,
    threshold_mask,
    topk_mask,
)

SPECIALS = np.array(
    [0.0, -0.0, 1.0, -1.0, 2.5, -2.5, np.inf, -np.inf, 1e-45, -1e-45,
     1.1754942e-38, np.finfo(np.float32).max, -np.finfo(np.float32).max],
    np.float32)


def _bits(a):
    a = np.asarray(a)
    return a.view(np.dtype(f"uint{a.dtype.itemsize * 8}"))


def _nan(bits):
    return np.array([bits], np.uint32).view(np.float32)[0]


@functools.partial(jax.jit, static_argnames=("k", "method"))
def _kth_rows(x, k, method="auto"):
    return jax.vmap(lambda row: kth_largest(row, k, method=method))(x)


_kth = jax.jit(kth_largest, static_argnames=("k", "method"))
_topk = jax.jit(topk_mask, static_argnames=("density", "rounding"))


def _topk_reference(x, k):
    """Keeps the k largest by a stable argsort: ties by flattened index.

    jnp's comparisons, not numpy's: XLA:CPU compares subnormals equal to
    zero, and so does `topk_mask` there.
    """
    flat = jnp.asarray(x).ravel()
    mask = np.zeros(flat.size, np.float32)
    mask[np.asarray(jnp.argsort(-flat, stable=True))[:k]] = 1
    return mask.reshape(np.shape(x))


# ---------------------------------------------------------------------------
# kth_largest


NEG_NAN, PAYLOAD_NAN = _nan(0xFFC00001), _nan(0x7F800123)


def _adversarial_rows(n):
    nans = np.array([np.nan, NEG_NAN, PAYLOAD_NAN], np.float32)
    rows = np.random.default_rng(n).choice(np.concatenate([SPECIALS, nans]), (16, n))
    rows[0] = 0.0
    rows[1] = -0.0
    rows[2, : n // 2] = -0.0  # -0.0 before 0.0 ...
    rows[3, n // 2:] = -0.0  # ... and after
    return rows, np.asarray(jnp.sort(jnp.asarray(rows), axis=1))


def test_kth_largest_every_k_adversarial_rows_vmap():
    rows, sorted_rows = _adversarial_rows(8)
    for k in range(1, 9):
        out = _kth_rows(jnp.asarray(rows), k=k)
        chex.assert_shape(out, (16,))
        np.testing.assert_array_equal(_bits(out), _bits(sorted_rows[:, -k]))


def test_kth_largest_every_k_radix():
    # The CPU default from 2**16 elements, forced on small rows.
    rows, sorted_rows = _adversarial_rows(5)
    for k in range(1, 6):
        for row, want in zip(rows, sorted_rows[:, -k]):
            out = _kth(jnp.asarray(row), k=k, method="radix")
            assert _bits(out) == _bits(want)


def test_kth_largest_zero_sign_follows_stable_sort():
    # jnp.sort is stable and compares -0.0 == 0.0: the sign depends on order.
    x = jnp.array([-0.0, 0.0, 0.0, -0.0, 1.0], jnp.float32)
    signs = [bool(np.signbit(kth_largest(x, k))) for k in range(2, 6)]
    assert signs == [True, False, False, True]
    # Subnormals tie with zeros where the backend flushes them (XLA:CPU).
    x = jnp.array([1e-40, -0.0, -1e-45, 0.0, 1.0], jnp.float32)
    want = jnp.sort(x)
    for k in range(2, 6):
        assert _bits(kth_largest(x, k)) == _bits(want[-k])


def test_kth_largest_nan_ranks_above_inf():
    # Also covered bitwise against jnp.sort by the adversarial rows above.
    # Documented: NaNs rank above +inf, each keeps its own sign and payload.
    x = jnp.asarray(np.array([1.0, NEG_NAN, np.inf, PAYLOAD_NAN], np.float32))
    assert _bits(kth_largest(x, 1)) == 0x7F800123
    assert _bits(kth_largest(x, 2)) == 0xFFC00001
    assert float(kth_largest(x, 3)) == np.inf


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_kth_largest_matches_sort_property(data):
    elements = st.one_of(
        st.floats(width=32, allow_nan=False),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45]))
    size = data.draw(st.sampled_from([1, 2, 5, 8]))
    x = data.draw(hnp.arrays(np.float32, size, elements=elements))
    k = data.draw(st.integers(1, x.size))
    out = _kth(jnp.asarray(x), k=k)
    assert _bits(out) == _bits(jnp.sort(jnp.asarray(x))[-k])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_kth_largest_half_precision(dtype):
    rng = np.random.default_rng(2)
    rows = jnp.asarray(rng.choice(SPECIALS[:10], (32, 9))).astype(dtype)
    rows = rows.at[:16].set(jnp.asarray(rng.normal(size=(16, 9)), dtype))
    sorted_rows = jnp.sort(rows, axis=1)
    for k in (1, 6):
        out = _kth_rows(rows, k=k)
        assert out.dtype == dtype
        np.testing.assert_array_equal(_bits(out), _bits(sorted_rows[:, -k]))


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.uint8])
def test_kth_largest_integers(dtype):
    info = np.iinfo(dtype)
    x = np.array([info.min, info.max, 0, 3, 3, info.min + 1, 1], dtype)
    for k in (1, 4, 7):
        out = kth_largest(jnp.asarray(x), k)
        assert out.dtype == dtype and out == np.sort(x)[-k]
    # Keys narrower than a radix digit (int8) are widened internally.
    assert kth_largest(jnp.asarray(x), 4, method="radix") == np.sort(x)[-4]


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.int32, np.int8, np.uint8])
@pytest.mark.parametrize("use_jit", [False, True])
def test_from_order_key_inverts_and_sorted_keys_sort(dtype, use_jit):
    rng = np.random.default_rng(3)
    if jnp.issubdtype(dtype, jnp.floating):
        x = np.concatenate([SPECIALS[SPECIALS != 0], rng.normal(size=40)]).astype(dtype)
        x = np.concatenate([x, np.array([0.0, -0.0], dtype)])
    else:
        info = np.iinfo(dtype)
        x = np.concatenate([[info.min, info.max, 0], rng.integers(info.min, info.max, 40)])
    x = jnp.asarray(x.astype(dtype))
    invert = jax.jit(from_order_key, static_argnums=1) if use_jit else from_order_key
    back = invert(order_key(x), x.dtype)
    assert back.dtype == x.dtype
    # Every value equal to zero (both zeros; subnormals where flushed) comes back +0.0.
    x = jnp.where(x == 0, jnp.zeros_like(x), x)
    np.testing.assert_array_equal(_bits(back), _bits(x))
    np.testing.assert_array_equal(_bits(invert(jnp.sort(order_key(x)), x.dtype)),
                                  _bits(jnp.sort(x)))
    if jnp.issubdtype(dtype, jnp.floating):
        assert jnp.isnan(invert(order_key(jnp.array([jnp.nan], x.dtype)), x.dtype)).all()


def test_kth_largest_float64_and_int64_with_x64():
    with jax.enable_x64(True):
        x = np.array([1.5, -0.0, 0.0, -2.0, np.inf, 5e-324, -5e-324], np.float64)
        want = np.asarray(jnp.sort(jnp.asarray(x)))
        for k in (2, 3, 4, 5):  # the zeros and subnormals
            assert _bits(kth_largest(jnp.asarray(x), k)) == _bits(want[-k])
        y = np.array([3, -2**62, 2**62, 0, -1], np.int64)
        assert int(kth_largest(jnp.asarray(y), 2)) == 3


def test_kth_largest_large_array_default_path():
    # >= 2**15 elements: radix select on CPU.
    x = np.random.default_rng(3).normal(size=70_000).astype(np.float32)
    x[:30_000] = np.where(np.arange(30_000) % 2, 0.0, -0.0)
    x[30_000:30_010] = 7.0
    want = np.asarray(jnp.sort(jnp.asarray(x)))
    for k in (1, 10, 30_000):
        assert _bits(_kth(jnp.asarray(x), k=k)) == _bits(want[-k])


def test_kth_largest_any_shape():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    assert float(kth_largest(x, 5)) == 19.0


@pytest.mark.parametrize("x,k,match", [
    (jnp.ones(3), 0, "k must be in"),
    (jnp.ones(3), 4, "k must be in"),
    (jnp.ones(3), 1.0, "k must be a Python int"),
    (jnp.ones(3), True, "k must be a Python int"),
    (jnp.ones(3, bool), 1, "real floating or integer"),
    (jnp.ones(3, jnp.complex64), 1, "real floating or integer"),
    (jnp.ones(0), 1, "between 1 and"),
])
def test_kth_largest_rejects(x, k, match):
    with pytest.raises(ValueError, match=match):
        kth_largest(x, k)


def test_kth_largest_rejects_traced_k_and_bad_method():
    with pytest.raises(ValueError, match="static under jit"):
        jax.jit(kth_largest)(jnp.ones(3), 1)
    with pytest.raises(ValueError, match="method"):
        kth_largest(jnp.ones(3), 1, method="sort")


# ---------------------------------------------------------------------------
# topk_mask


@pytest.mark.parametrize("n,density", [
    (1, 0.5), (7, 0.01), (10, 0.33), (16, 0.25), (31, 0.9), (64, 0.1),
    (100, 1.0), (257, 0.7)])
def test_topk_mask_exact_count_with_ties(n, density):
    rng = np.random.default_rng(n)
    rows = rng.normal(size=(6, n)).astype(np.float32)
    rows[1] = 0.5  # all equal
    rows[2] = rng.integers(0, 3, n)  # many duplicates
    rows[3] = np.where(rng.random(n) < 0.5, 0.0, -0.0)  # zeros of both signs
    rows[4] = rng.choice([-1.0, 1.0], n)
    masks = jax.jit(jax.vmap(lambda s: topk_mask(s, density)))(jnp.asarray(rows))
    k = max(1, round(density * n))
    chex.assert_shape(masks, (6, n))
    np.testing.assert_array_equal(np.asarray(masks).sum(axis=1), k)
    for row, mask in zip(rows, np.asarray(masks)):
        np.testing.assert_array_equal(mask, _topk_reference(row, k))


@settings(max_examples=30, deadline=None)
@given(
    scores=hnp.arrays(
        np.float32, st.sampled_from([1, 3, 8]),
        elements=st.one_of(st.floats(-4, 4, width=32),
                           st.sampled_from([0.0, -0.0, 1e-45, -1e-40, 1.0]))),
    density=st.sampled_from([0.1, 0.25, 0.5, 0.8, 1.0]))
def test_topk_mask_matches_sort_reference(scores, density):
    mask = _topk(jnp.asarray(scores), density=density)
    k = max(1, round(density * scores.size))
    np.testing.assert_array_equal(np.asarray(mask), _topk_reference(scores, k))


def test_topk_mask_ties_keep_first_in_flattened_order():
    scores = jnp.array([[1.0, 3.0, 1.0], [1.0, 0.0, 1.0]])
    mask = topk_mask(scores, 0.5)
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(topk_mask(jnp.ones(5), 0.4), [1, 1, 0, 0, 0])
    zeros = jnp.array([-0.0, 0.0, -0.0, 0.0])
    np.testing.assert_array_equal(topk_mask(zeros, 0.5), [1, 1, 0, 0])


def test_topk_mask_nan_scores_rank_above_inf():
    scores = jnp.array([1.0, jnp.nan, jnp.inf, 0.0])
    np.testing.assert_array_equal(topk_mask(scores, 0.25), [0, 1, 0, 0])
    np.testing.assert_array_equal(topk_mask(scores, 0.5), [0, 1, 1, 0])


@pytest.mark.parametrize("use_jit", [False, True])
def test_topk_mask_straight_through_gradient(use_jit):
    scores = jnp.asarray(np.random.default_rng(4).normal(size=(4, 5)), jnp.float32)
    w = jnp.arange(20.0).reshape(4, 5) - 7.0
    grad_fn = jax.grad(lambda s: (topk_mask(s, 0.3) * w).sum())
    grad_fn = jax.jit(grad_fn) if use_jit else grad_fn
    grads = grad_fn(scores)
    chex.assert_shape(grads, (4, 5))
    np.testing.assert_array_equal(grads, w)


@pytest.mark.parametrize("use_jit", [False, True])
def test_topk_mask_vmap_and_grad(use_jit):
    scores = jnp.asarray(np.random.default_rng(5).normal(size=(3, 2, 4)), jnp.float32)
    fn = jax.vmap(lambda s: topk_mask(s, 0.5))
    fn = jax.jit(fn) if use_jit else fn
    masks = fn(scores)
    chex.assert_shape(masks, (3, 2, 4))
    chex.assert_type(masks, jnp.float32)
    np.testing.assert_array_equal(np.asarray(masks).sum(axis=(1, 2)), 4)
    # d/ds sum(mask(s) * s) = s (straight through) + mask(s).
    per_example = jax.vmap(jax.grad(lambda s: (topk_mask(s, 0.5) * s).sum()))
    np.testing.assert_allclose(per_example(scores), scores + masks)


def test_topk_mask_dtypes_and_large_input():
    scores = jnp.asarray(np.random.default_rng(6).normal(size=(3, 3, 64, 128)))
    for dtype in (jnp.bfloat16, jnp.float32):
        mask = _topk(scores.astype(dtype), density=0.3)
        assert mask.dtype == dtype and mask.shape == scores.shape
        assert int(mask.astype(jnp.float32).sum()) == round(0.3 * scores.size)


def test_topk_mask_reference_rounding_matches_get_subnet():
    cases = [(10, 0.33, 3, 4), (10, 0.9, 9, 10), (5, 0.5, 2, 3)]
    for n, density, round_k, reference_k in cases:
        scores = jnp.arange(float(n))
        assert int(topk_mask(scores, density).sum()) == round_k
        mask = topk_mask(scores, density, rounding="reference")
        assert int(mask.sum()) == reference_k == n - int((1 - density) * n)
        np.testing.assert_array_equal(mask[n - reference_k:], 1)
    assert int(topk_mask(jnp.ones(4), 1e-17, rounding="reference").sum()) == 0
    assert int(topk_mask(jnp.ones(4), 1e-17).sum()) == 1


@pytest.mark.parametrize("density", [0, 0.0, -0.1, 1.5, math.nan, math.inf,
                                     True, "0.5", None, jnp.array(0.5)])
def test_topk_mask_rejects_density(density):
    with pytest.raises(ValueError, match="density"):
        topk_mask(jnp.ones(4), density)


def test_topk_mask_rejects_value_in_message_and_bad_scores():
    with pytest.raises(ValueError, match=r"got 1\.5"):
        topk_mask(jnp.ones(4), 1.5)
    with pytest.raises(ValueError, match="floating dtype"):
        topk_mask(jnp.arange(4), 0.5)
    with pytest.raises(ValueError, match="between 1 and"):
        topk_mask(jnp.ones(0), 0.5)
    with pytest.raises(ValueError, match="rounding"):
        topk_mask(jnp.ones(4), 0.5, rounding="floor")


# ---------------------------------------------------------------------------
# bernoulli_mask, threshold_mask


def _sigmoid_slope(logits):
    s = jax.nn.sigmoid(logits)
    return s * (1 - s)


def test_bernoulli_mask_frequencies_match_sigmoid():
    logits = jnp.array([0.0, 2.0, -1.0])[:, None] * jnp.ones((1, 100_000))
    mask = jax.jit(bernoulli_mask)(jax.random.key(0), logits)
    assert set(np.unique(np.asarray(mask)).tolist()) == {0.0, 1.0}
    np.testing.assert_allclose(mask.mean(axis=1), jax.nn.sigmoid(logits[:, 0]),
                               atol=0.01)


@pytest.mark.parametrize("gradient", ["sigmoid", "identity"])
def test_hash_bits_bernoulli_frequencies_and_independence(gradient):
    logits = jnp.array([0.0, 2.0, -1.0, 15.0, -15.0])[:, None] * jnp.ones((1, 100_000))
    sample = jax.jit(lambda k: bernoulli_mask(k, logits, gradient=gradient, bits="hash"))
    mask, other = (np.asarray(sample(jax.random.key(k))) for k in (0, 1))
    assert set(np.unique(mask).tolist()) == {0.0, 1.0}
    np.testing.assert_allclose(mask.mean(axis=1), jax.nn.sigmoid(logits[:, 0]), atol=0.01)
    # Neighbours within a call and the same element across keys are uncorrelated.
    half = mask[0] - 0.5
    assert abs(np.mean(half[1:] * half[:-1])) < 0.01
    assert abs(np.mean(half * (other[0] - 0.5))) < 0.01
    assert np.array_equal(mask, np.asarray(sample(jax.random.key(0))))
    bits = np.asarray(hash_bits(jax.random.key(2), (300, 400)))
    assert bits.dtype == np.uint32 and len(np.unique(bits)) == bits.size
    assert abs(bits.mean() / 2**32 - 0.5) < 0.005
    # The same straight-through gradients as with threefry's bits.
    grad = jax.grad(lambda z: jnp.sum(bernoulli_mask(jax.random.key(0), z, gradient=gradient,
                                                     bits="hash") * 3.0))(jnp.zeros(4))
    np.testing.assert_allclose(grad, 0.75 if gradient == "sigmoid" else 3.0)
    with pytest.raises(ValueError, match="bits"):
        bernoulli_mask(jax.random.key(0), logits, bits="philox")


def test_bernoulli_mask_is_jax_random_bernoulli_of_sigmoid():
    key = jax.random.key(1)
    logits = jnp.asarray(np.random.default_rng(7).normal(size=(4, 6)), jnp.float32)
    want = jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(jnp.float32)
    np.testing.assert_array_equal(bernoulli_mask(key, logits), want)
    np.testing.assert_array_equal(bernoulli_mask(key, logits),
                                  bernoulli_mask(key, logits))
    other = bernoulli_mask(jax.random.key(2), logits)
    assert not np.array_equal(other, want)


@pytest.mark.parametrize("use_jit", [False, True])
def test_bernoulli_mask_gradient_through_sigmoid(use_jit):
    key = jax.random.key(3)
    logits = jnp.linspace(-6.0, 6.0, 24).reshape(4, 6)
    w = jnp.asarray(np.random.default_rng(8).normal(size=(4, 6)), jnp.float32)
    grad_fn = jax.grad(lambda z: (bernoulli_mask(key, z) * w).sum())
    grad_fn = jax.jit(grad_fn) if use_jit else grad_fn
    np.testing.assert_allclose(grad_fn(logits), w * _sigmoid_slope(logits),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("use_jit", [False, True])
def test_bernoulli_mask_vmap(use_jit):
    keys = jax.random.split(jax.random.key(4), 5)
    logits = jnp.zeros((5, 4, 6))
    fn = jax.vmap(bernoulli_mask)
    fn = jax.jit(fn) if use_jit else fn
    masks = fn(keys, logits)
    chex.assert_shape(masks, (5, 4, 6))
    np.testing.assert_array_equal(masks[3], bernoulli_mask(keys[3], logits[3]))
    assert not np.array_equal(masks[0], masks[1])


def test_bernoulli_mask_bfloat16_and_raw_keys():
    logits = jnp.full((4, 6), 2.0, jnp.bfloat16)
    mask = bernoulli_mask(jax.random.PRNGKey(0), logits)
    assert mask.dtype == jnp.bfloat16
    assert set(np.unique(np.asarray(mask, np.float32)).tolist()) <= {0.0, 1.0}
    grads = jax.grad(lambda z: bernoulli_mask(jax.random.PRNGKey(0), z)
                     .astype(jnp.float32).sum())(logits)
    assert grads.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(grads, np.float32),
                               _sigmoid_slope(2.0), rtol=1e-2)


def test_bernoulli_mask_rejects_integer_logits():
    with pytest.raises(ValueError, match="logits must have a floating dtype"):
        bernoulli_mask(jax.random.key(0), jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("use_jit", [False, True])
def test_threshold_mask(use_jit):
    logits = jnp.array([-3.0, -1e-30, 0.0, 1e-30, 0.4, jnp.nan])
    fn = jax.jit(threshold_mask) if use_jit else threshold_mask
    np.testing.assert_array_equal(fn(logits), [0, 0, 0, 1, 1, 0])
    finite = logits[:5]
    w = jnp.arange(1.0, 6.0)
    grads = jax.grad(lambda z: (fn(z) * w).sum())(finite)
    np.testing.assert_allclose(grads, w * _sigmoid_slope(finite), rtol=1e-6)
    with pytest.raises(ValueError, match="floating dtype"):
        threshold_mask(jnp.zeros(3, jnp.int32))
