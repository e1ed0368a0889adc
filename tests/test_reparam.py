"""The method protocol: dense, dense_from, projections and apply_updates."""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import randjax
from randjax.reparam import Projection, projections


def test_dense_is_the_identity():
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    trainable, frozen = randjax.dense().init(jax.random.key(0), params)
    assert frozen is None
    chex.assert_trees_all_equal(randjax.dense().apply(trainable, frozen, train=False), params)


def test_dense_from_a_function_or_a_tree():
    params = {"w": jnp.ones((2, 3))}
    keys = []

    def start(key, p):
        keys.append(key)
        return jax.tree.map(lambda w: 3 * w, p)

    trainable, _ = randjax.dense_from(start).init(jax.random.key(4), params)
    np.testing.assert_array_equal(trainable["w"], 3 * np.ones((2, 3)))
    assert jax.random.key_data(keys[0]).tolist() == jax.random.key_data(
        jax.random.key(4)).tolist()
    given = {"w": jnp.full((2, 3), 7.0)}
    trainable, _ = randjax.dense_from(given).init(jax.random.key(0), params)
    assert trainable is given
    with pytest.raises(ValueError, match="the start must have the structure"):
        randjax.dense_from({"v": jnp.ones(2)}).init(jax.random.key(0), params)
    with pytest.raises(ValueError, match=r"the start's leaf \['w'\] has shape \(1, 3\), the "
                                         r"model's parameter \(2, 3\)"):
        randjax.dense_from({"w": jnp.ones((1, 3))}).init(jax.random.key(0), params)


class ClipState(NamedTuple):
    """A toy transformation's state that projects the parameters into [-1, 1]."""

    count: jax.Array

    def project(self, params):
        return jax.tree.map(lambda p: jnp.clip(p, -1.0, 1.0), params)


def clip_after_update() -> optax.GradientTransformation:
    return optax.GradientTransformation(
        lambda params: ClipState(jnp.zeros((), jnp.int32)),
        lambda updates, state, params=None: (updates, ClipState(state.count + 1)))


def test_apply_updates_applies_every_projection_in_the_state():
    tx = optax.chain(optax.sgd(10.0), clip_after_update())
    params = {"w": jnp.array([0.5, -0.5])}
    state = tx.init(params)
    assert isinstance(state[1], Projection) and projections(state) == [state[1]]
    updates, state = tx.update({"w": jnp.array([-1.0, 1.0])}, state, params)
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], [10.5, -10.5])
    np.testing.assert_array_equal(randjax.apply_updates(params, updates, state)["w"],
                                  [1.0, -1.0])
    # Without a projection it is optax.apply_updates.
    plain = optax.sgd(10.0)
    updates, plain_state = plain.update({"w": jnp.ones(2)}, plain.init(params), params)
    assert projections(plain_state) == []
    chex.assert_trees_all_equal(randjax.apply_updates(params, updates, plain_state),
                                optax.apply_updates(params, updates))


def test_fit_applies_the_projection_of_any_optimizer():
    digits = randjax.data.load("digits")
    model = randjax.models.get("lenet300_100", width=0.25)
    tx = optax.chain(optax.sgd(5.0), clip_after_update())
    result = randjax.fit(model, digits, tx, epochs=1, batch_size=128, progress=False)
    leaves = jax.tree.leaves(result.state.trainable)
    assert max(float(jnp.abs(leaf).max()) for leaf in leaves) <= 1.0
    # Plain SGD at this rate moves some weight beyond 1: the projection is what holds it.
    plain = randjax.fit(model, digits, optax.sgd(5.0), epochs=1, batch_size=128,
                        progress=False)
    assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(plain.state.trainable)) > 1
