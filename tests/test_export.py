"""randjax.export: the container, the codec registry, edge-popup's weight keys + bit masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import randjax
from randjax import export
from tests.helpers import trained_scores


def lenet():
    return randjax.models.get("lenet300_100", use_bias=False)




@pytest.mark.parametrize("store_weights", [True, False])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_round_trip_gives_identical_logits(tmp_path, store_weights, scope):
    model = lenet()
    x = jax.random.normal(jax.random.key(1), (16, 784))
    params = model.init(jax.random.key(0), x)["params"]
    rp = randjax.edge_popup(0.5, scope=scope, weight_init="signed_constant",
                            store_weights=store_weights)
    key = jax.random.key(3)
    trainable, frozen = rp.init(key, params)
    trainable = trained_scores(trainable)
    info = export.save(tmp_path / "net", rp, trainable, frozen,
                       key=key if store_weights else None)
    assert info.path.endswith("net.npz")
    rebuilt = export.load(info.path)
    effective = jax.jit(rp.apply)(trainable, frozen)
    jax.tree.map(np.testing.assert_array_equal, rebuilt, effective)
    logits = lambda p: np.asarray(jax.jit(model.apply)({"params": p}, x))
    np.testing.assert_array_equal(logits(rebuilt), logits(effective))
    # 266,200 weights at one bit each (33,275 bytes) plus the header.
    assert info.float32_bytes == 4 * 266_200
    assert 33_275 < info.bytes < 36_000 and info.ratio > 29


def test_round_trip_with_biases_train_others_and_scaled_init(tmp_path):
    model = randjax.models.get("conv2", width=0.125, use_bias=True)
    x = jax.random.normal(jax.random.key(1), (4, 12, 12, 3))
    params = model.init(jax.random.key(0), x)["params"]
    rp = randjax.edge_popup(0.2, weight_init="scaled_kaiming_normal", train_others=True,
                            rounding="reference", store_weights=False)
    trainable, frozen = rp.init(jax.random.key(5), params)
    trainable = trained_scores(trainable)  # the biases move too
    export.save(tmp_path / "conv.npz", rp, trainable, frozen)
    rebuilt = export.load(tmp_path / "conv.npz")
    np.testing.assert_array_equal(model.apply({"params": rebuilt}, x),
                                  model.apply({"params": rp.apply(trainable, frozen)}, x))
    np.testing.assert_array_equal(rebuilt["Dense_0"]["bias"], trainable["Dense_0"]["bias"])


def test_round_trip_plain_dict_with_lists_and_nnx(tmp_path):
    params = {"layers": [{"w": jnp.ones((6, 5))}, {"w": jnp.ones((5, 3))}],
              "scale": jnp.float32(2.0)}
    rp = randjax.edge_popup(0.4, weight_init="kaiming_uniform", store_weights=False)
    trainable, frozen = rp.init(jax.random.key(0), params)
    export.save(tmp_path / "d.npz", rp, trainable, frozen)
    rebuilt = export.load(tmp_path / "d.npz")
    assert isinstance(rebuilt["layers"], list) and len(rebuilt["layers"]) == 2
    jax.tree.map(np.testing.assert_array_equal, rebuilt, rp.apply(trainable, frozen))

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1, self.fc2 = nnx.Linear(20, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc2(jax.nn.relu(self.fc1(x)))

    graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
    trainable, frozen = rp.init(jax.random.key(1), nnx.to_pure_dict(state))
    export.save(tmp_path / "nnx.npz", rp, trainable, frozen)
    run = lambda pure: (nnx.replace_by_pure_dict(state, pure),
                        nnx.merge(graphdef, state)(jnp.ones((2, 20))))[1]
    np.testing.assert_array_equal(run(export.load(tmp_path / "nnx.npz")),
                                  run(rp.apply(trainable, frozen)))


def test_export_after_fit_with_reparam_key(tmp_path):
    digits = randjax.data.load("digits")
    rp = randjax.edge_popup(0.5, weight_init="signed_constant")
    result = randjax.fit(lenet(), digits, optax.sgd(0.1, momentum=0.9), reparam=rp,
                         epochs=1, batch_size=64, seed=4, progress=False)
    state = result.state
    export.save(tmp_path / "fit.npz", rp, state.trainable, state.frozen,
                key=randjax.train.reparam_key(4))
    x = jnp.asarray(digits.test.x)
    logits = lambda p: np.asarray(lenet().apply({"params": p}, x))
    np.testing.assert_array_equal(logits(export.load(tmp_path / "fit.npz")),
                                  logits(rp.apply(state.trainable, state.frozen)))


def test_export_errors(tmp_path):
    params = {"w": jnp.ones((8, 4))}
    stored = randjax.edge_popup(0.5, weight_init="signed_constant")
    trainable, frozen = stored.init(jax.random.key(0), params)
    with pytest.raises(ValueError, match="pass key="):
        export.save(tmp_path / "a", stored, trainable, frozen)
    with pytest.raises(ValueError, match=r"frozen weight \['w'\] is not the draw"):
        export.save(tmp_path / "a", stored, trainable, frozen, key=jax.random.key(1))
    # Weights kept from the model (no weight_init name): nothing to redraw them by.
    for rp in (randjax.edge_popup(0.5), randjax.supermask(weight_init="signed_constant"),
               randjax.dense()):
        t, f = rp.init(jax.random.key(0), params)
        with pytest.raises(ValueError, match="spec names a method with a registered codec"):
            export.save(tmp_path / "b", rp, t, f)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="is not a randjax export"):
        export.load(tmp_path / "other.npz")
