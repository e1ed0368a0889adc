"""Masked training: exact zeros under any optimizer, the contract, export."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import randjax
from randjax import models, pruning


def params():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=6), jnp.float32)}


def masks_of(p, density=0.3):
    return pruning.masks_at_density(pruning.magnitude(pruning.select(p)), density)


def test_init_keeps_weights_trainable_and_masks_frozen():
    p = params()
    masks = masks_of(p)
    rp = randjax.masked(masks)
    trainable, frozen = rp.init(jax.random.key(0), p)
    assert frozen["b"] is None and frozen["w"].dtype == bool
    np.testing.assert_array_equal(frozen["w"], masks["w"])
    kept = np.asarray(masks["w"])
    np.testing.assert_array_equal(np.asarray(trainable["w"])[kept], np.asarray(p["w"])[kept])
    assert (np.asarray(trainable["w"])[~kept] == 0).all()  # zeroed when the mask is set
    np.testing.assert_array_equal(trainable["b"], p["b"])
    assert rp.spec == {"method": "masked"}


@pytest.mark.parametrize("tx", [
    optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9, nesterov=True)),
    optax.adam(1e-2),
    optax.adamw(1e-2, weight_decay=0.1),
    optax.chain(optax.add_noise(1.0, 0.5, 0), optax.sgd(0.1)),  # moves pruned weights too
], ids=["sgd_momentum_decay", "adam", "adamw", "noise"])
def test_pruned_weights_are_exact_zeros_after_any_optimizer(tx):
    p = params()
    rp = randjax.masked(masks_of(p))
    trainable, frozen = rp.init(None, p)
    state = tx.init(trainable)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 8)), jnp.float32)

    def loss(trainable):
        q = rp.apply(trainable, frozen)
        return jnp.sum((x @ q["w"] + q["b"]) ** 2)

    for _ in range(25):
        grads = jax.grad(loss)(trainable)
        assert (np.asarray(grads["w"])[~np.asarray(frozen["w"])] == 0).all()
        updates, state = tx.update(grads, state, trainable)
        trainable = optax.apply_updates(trainable, updates)
    effective = np.asarray(rp.apply(trainable, frozen)["w"])
    kept = np.asarray(frozen["w"])
    assert (effective[~kept] == 0).all() and not np.signbit(effective[~kept]).any()
    assert not np.allclose(effective[kept], np.asarray(p["w"])[kept])  # kept ones trained


def test_fit_under_masks_keeps_them(digits):
    model = models.get("lenet300_100")
    init = model.init(randjax.train.model_key(0), digits.train.x[:1])["params"]
    masks = masks_of(init, 0.2)
    rp = randjax.masked(masks)
    result = randjax.fit(model, digits, optax.sgd(0.1, momentum=0.9), reparam=rp, epochs=5,
                         batch_size=64, progress=False)
    effective = rp.apply(result.state.trainable, result.state.frozen)
    report = pruning.report(jax.tree.map(lambda w: w != 0, pruning.select(effective)))
    assert report.density <= 0.2
    assert result.summary["test_accuracy"] > 0.8


def test_export_stores_bits_and_survivors(tmp_path):
    rng = np.random.default_rng(2)
    p = {"w": jnp.asarray(rng.normal(size=(300, 100)), jnp.float32), "b": jnp.ones(100)}
    rp = randjax.masked(masks_of(p, 0.05))
    trainable, frozen = rp.init(None, p)
    info = randjax.export.save(tmp_path / "net", rp, trainable, frozen)
    loaded = randjax.export.load(info.path)
    np.testing.assert_array_equal(loaded["w"], rp.apply(trainable, frozen)["w"])
    np.testing.assert_array_equal(loaded["b"], p["b"])
    # 1 bit + 5% of 32 bits per weight: about 12x smaller than float32.
    assert info.ratio > 8


def test_bad_masks():
    p = params()
    with pytest.raises(ValueError, match="hold no mask"):
        randjax.masked({"w": None, "b": None})
    with pytest.raises(ValueError, match="0/1 or booleans"):
        randjax.masked({"w": jnp.full((8, 6), 0.5), "b": None})
    with pytest.raises(ValueError, match="tree structure of the parameters"):
        randjax.masked({"w": jnp.ones((8, 6))}).init(None, p)
    with pytest.raises(ValueError, match="has shape"):
        randjax.masked({"w": jnp.ones((6, 8)), "b": None}).init(None, p)
    assert randjax.masked({"w": jnp.ones((8, 6)), "b": None}).init(None, p)[1]["w"].all()


def test_apply_refuses_wrong_masks_and_swapped_trees():
    rp = randjax.masked({"w": jnp.array([[True, False], [False, True]]), "b": None})
    trainable, frozen = rp.init(None, {"w": jnp.ones((2, 2)), "b": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"masked.apply: leaf \['w'\]: a trainable leaf "
                                         r"\(2, 2\) float32 needs a frozen leaf of shape "
                                         r"\(2, 2\) \(bool\), got \(2,\) bool"):
        rp.apply(trainable, {**frozen, "w": jnp.array([True, False])})  # would broadcast
    with pytest.raises(ValueError, match=r"got \(2, 2\) float32"):
        rp.apply(trainable, {**frozen, "w": jnp.ones((2, 2))})  # not a mask
    with pytest.raises(ValueError, match=r"swapped trainable/frozen"):
        rp.apply(frozen, trainable)
