"""Zhou et al.'s supermask: sampling, thresholds, dynamic scaling, training."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import randjax


def lenet():
    return randjax.models.get("lenet300_100", use_bias=False)


def nonzero(x):
    return int(np.count_nonzero(np.asarray(x)))

# Supermask
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="module")
def mask_setup():
    params = {"a": {"kernel": jnp.ones((20, 30)), "bias": jnp.zeros(30)},
              "b": {"kernel": jnp.full((30, 5), 2.0)}}
    return params


@pytest.mark.parametrize("jit", [False, True])
def test_supermask_sampling_and_threshold(mask_setup, jit):
    rp = randjax.supermask(sample_at_eval=False)
    apply = jax.jit(rp.apply, static_argnames="train") if jit else rp.apply
    trainable, frozen = rp.init(jax.random.key(0), mask_setup)
    np.testing.assert_array_equal(trainable["a"]["kernel"], 0.0)
    assert trainable["a"]["bias"] is None
    one = apply(trainable, frozen, key=jax.random.key(1))
    again = apply(trainable, frozen, key=jax.random.key(1))
    other = apply(trainable, frozen, key=jax.random.key(2))
    jax.tree.map(np.testing.assert_array_equal, one, again)
    assert not np.array_equal(one["a"]["kernel"], other["a"]["kernel"])
    # Leaves get different keys (fold_in of the leaf index).
    assert not np.array_equal(one["a"]["kernel"][:5, :5] != 0,
                              one["b"]["kernel"][:5, :5] != 0)
    assert 0.4 < nonzero(one["a"]["kernel"]) / 600 < 0.6
    # Eval thresholds at logits > 0: deterministic, key not needed.
    trainable["a"]["kernel"] = trainable["a"]["kernel"].at[:10].set(1.0)
    evals = [apply(trainable, frozen, key=k, train=False)
             for k in (None, jax.random.key(5))] if not jit else [
        apply(trainable, frozen, key=jax.random.key(k), train=False) for k in (5, 6)]
    for out in evals:
        np.testing.assert_array_equal(out["a"]["kernel"][:10], 1.0)
        np.testing.assert_array_equal(out["a"]["kernel"][10:], 0.0)
        np.testing.assert_array_equal(out["b"]["kernel"], 0.0)


def test_supermask_dynamic_scaling_factor_is_exact(mask_setup):
    rp = randjax.supermask(dynamic_scaling=True)
    plain = randjax.supermask()
    trainable, frozen = rp.init(jax.random.key(0), mask_setup)
    key = jax.random.key(7)
    scaled, masked = rp.apply(trainable, frozen, key=key), plain.apply(trainable, frozen, key=key)
    for name in ("a", "b"):
        m = np.asarray(masked[name]["kernel"]) != 0
        factor = m.size / max(1, m.sum())
        np.testing.assert_allclose(scaled[name]["kernel"],
                                   np.asarray(masked[name]["kernel"]) * np.float32(factor),
                                   rtol=1e-6)
    # An all-zero mask divides by max(1, 0) = 1: zeros, not NaN.
    trainable = jax.tree.map(lambda t: jnp.full_like(t, -100.0), trainable)
    out = rp.apply(trainable, frozen, key=key)
    np.testing.assert_array_equal(out["a"]["kernel"], 0.0)


def test_supermask_gradient_and_missing_key(mask_setup):
    rp = randjax.supermask(logit_init=0.5)
    trainable, frozen = rp.init(jax.random.key(0), mask_setup)
    np.testing.assert_array_equal(trainable["b"]["kernel"], 0.5)
    loss = lambda t, key: sum(jnp.sum(w) for w in
                              jax.tree.leaves(rp.apply(t, frozen, key=key)))
    grads = jax.jit(jax.grad(loss))(trainable, jax.random.key(1))
    assert np.abs(grads["a"]["kernel"]).min() > 0
    with pytest.raises(ValueError, match="needs key"):
        rp.apply(trainable, frozen)
    with pytest.raises(ValueError, match="needs key"):
        rp.apply(trainable, frozen, train=False)  # sample_at_eval=True
    with pytest.raises(ValueError, match="logit_init must be a finite"):
        randjax.supermask(logit_init=float("inf"))
    with pytest.raises(ValueError, match="dynamic_scaling must be a Python bool"):
        randjax.supermask(dynamic_scaling="yes")
    with pytest.raises(ValueError, match="unknown initializer"):
        randjax.supermask(weight_init="nope")


def test_supermask_trains_on_digits(digits):
    result = randjax.fit(lenet(), digits, optax.adam(0.1), reparam=randjax.supermask(),
                         epochs=6, batch_size=64, progress=False)
    # Reaches ~0.95 (chance 0.1), evaluated with sampled masks.
    assert result.summary["test_accuracy"] > 0.75



# --------------------------------------------------------------------------- #


def test_apply_refuses_wrong_shapes_and_swapped_trees():
    rp = randjax.supermask(sample_at_eval=False)
    trainable, frozen = rp.init(jax.random.key(0), {"w": jnp.ones((3, 2)), "b": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"leaf \['w'\]: a trainable leaf \(2,\) float32 "
                                         r"needs a frozen leaf of shape \(2,\) \(floating\), "
                                         r"got \(3, 2\) float32"):
        rp.apply({**trainable, "w": jnp.zeros((2,))}, frozen, train=False)
    with pytest.raises(ValueError, match=r"unselected leaf \['b'\] is in trainable.*swapped"):
        rp.apply(frozen, trainable, train=False)
    with pytest.raises(ValueError, match="filter must be a callable filter"):
        randjax.supermask(filter=None)
