"""Lookahead: fast and slow weights as a reparametrization and optax.lookahead."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import randjax
from randjax.methods.lookahead import lookahead, lookahead_reparam


def test_matches_optax_lookahead_fed_the_fast_gradients():
    params = {"w": jnp.array([1.0, -2.0])}
    trainable, _ = lookahead_reparam().init(None, params)
    ours = lookahead(optax.sgd(0.1), sync_period=3, step_size=0.5)
    reference = optax.lookahead(optax.sgd(0.1), 3, 0.5)
    a, b = trainable, optax.LookaheadParams.init_synced(params)
    state_a, state_b = ours.init(a), reference.init(b)
    for step in range(7):
        g = {"w": jnp.array([step + 1.0, -1.0])}
        updates, state_a = ours.update(optax.LookaheadParams(g, jax.tree.map(jnp.zeros_like, g)),
                                       state_a, a)
        a = optax.apply_updates(a, updates)
        updates, state_b = reference.update(g, state_b, b)
        b = optax.apply_updates(b, updates)
    np.testing.assert_array_equal(a.fast["w"], b.fast["w"])
    np.testing.assert_array_equal(a.slow["w"], b.slow["w"])


def test_trains_with_the_fast_and_evaluates_the_slow_weights():
    digits = randjax.data.load("digits")
    model = randjax.models.get("lenet300_100", width=0.25)
    result = randjax.fit(model, digits, lookahead(optax.adam(1e-3), 5, 0.5),
                         reparam=lookahead_reparam(), epochs=3, batch_size=64,
                         progress=False)
    trainable = result.state.trainable
    assert isinstance(trainable, optax.LookaheadParams)
    assert result.summary["test_accuracy"] > 0.5   # chance: 0.1
    rp = lookahead_reparam()
    assert rp.apply(trainable, None, train=False) is trainable.slow
    assert rp.apply(trainable, None, train=True) is trainable.fast
    # 3 epochs of 21 steps: not a multiple of 5, so the two copies differ.
    assert result.summary["steps"] % 5 != 0
    assert not np.array_equal(trainable.fast["Dense_0"]["kernel"],
                              trainable.slow["Dense_0"]["kernel"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(sync_period=0), "sync_period must be a Python int >= 1"),
    (dict(sync_period=2.5), "sync_period must be a Python int"),
    (dict(step_size=1.5), r"step_size must be in \[0.0, 1.0\]"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lookahead(optax.sgd(0.1), **kwargs)


def test_fast_must_be_a_gradient_transformation():
    with pytest.raises(ValueError, match="lookahead: fast must be an optax GradientTransformation"):
        lookahead("adam")
