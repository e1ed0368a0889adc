"""randjax.export: edge-popup networks as weight keys + bit masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import randjax
from randjax import export


def lenet():
    return randjax.models.get("lenet300_100", use_bias=False)


def trained_scores(trainable, seed=7):
    # Scores moved away from their init, as after training.
    leaves, treedef = jax.tree.flatten(trainable)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([s + jax.random.normal(k, s.shape, s.dtype)
                              for s, k in zip(leaves, keys)])


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
        with pytest.raises(ValueError, match="supports randjax.edge_popup"):
            export.save(tmp_path / "b", rp, t, f)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="is not a randjax export"):
        export.load(tmp_path / "other.npz")


# ---------------------------------------------------------------------------
# Slot Machines: options key + greedy indices at ceil(log2 K) bits.


@pytest.mark.parametrize("store_weights", [True, False])
@pytest.mark.parametrize("k", [2, 8])
def test_slot_machine_round_trip_gives_identical_logits(tmp_path, k, store_weights):
    model = lenet()
    x = jax.random.normal(jax.random.key(1), (16, 784))
    params = model.init(jax.random.key(0), x)["params"]
    rp = randjax.slot_machine(k, store_weights=store_weights)
    key = jax.random.key(3)
    trainable, frozen = rp.init(key, params)
    trainable = trained_scores(trainable)
    info = export.save(tmp_path / "slots", rp, trainable, frozen,
                       key=key if store_weights else None)
    rebuilt = export.load(info.path)
    effective = jax.jit(lambda t, f: rp.apply(t, f, train=False))(trainable, frozen)
    jax.tree.map(np.testing.assert_array_equal, rebuilt, effective)
    logits = lambda p: np.asarray(jax.jit(model.apply)({"params": p}, x))
    np.testing.assert_array_equal(logits(rebuilt), logits(effective))
    # 266,200 connections at log2(K) bits each, plus keys and the header.
    bits = (k - 1).bit_length()
    payload = -(-266_200 * bits // 8)
    assert info.float32_bytes == 4 * 266_200
    assert payload < info.bytes < payload + 3_000
    assert info.ratio > 32 / bits * 0.95


def test_slot_machine_shared_options_and_sample_selection(tmp_path):
    params = {"a": jnp.ones((12, 7)), "b": jnp.ones(7), "c": jnp.ones((7, 3))}
    rp = randjax.slot_machine(4, shared_options=True, init="paper")
    trainable, frozen = rp.init(jax.random.key(2), params)
    trainable = trained_scores(trainable)
    export.save(tmp_path / "shared", rp, trainable, frozen, key=jax.random.key(2))
    rebuilt = export.load(tmp_path / "shared.npz")
    jax.tree.map(np.testing.assert_array_equal, rebuilt,
                 rp.apply(trainable, frozen, train=False))
    # Sampling at evaluation: no single network, refused.
    sampler = randjax.slot_machine(4, selection="sample", store_weights=False)
    trainable, frozen = sampler.init(jax.random.key(0), params)
    with pytest.raises(ValueError, match="samples at evaluation"):
        export.save(tmp_path / "s", sampler, trainable, frozen)
    # Trained by sampling, evaluated greedily: its greedy network is exported.
    greedy_eval = randjax.slot_machine(4, selection="sample", eval_selection="greedy",
                                       store_weights=False)
    export.save(tmp_path / "g", greedy_eval, trainable, frozen)
    jax.tree.map(np.testing.assert_array_equal, export.load(tmp_path / "g.npz"),
                 randjax.slots.to_dense(sampler, trainable, frozen))


def test_slot_machine_export_errors(tmp_path):
    params = {"w": jnp.ones((8, 4))}
    rp = randjax.slot_machine(8)
    trainable, frozen = rp.init(jax.random.key(0), params)
    with pytest.raises(ValueError, match="pass key="):
        export.save(tmp_path / "a", rp, trainable, frozen)
    with pytest.raises(ValueError, match=r"frozen weight \['w'\] is not the draw"):
        export.save(tmp_path / "a", rp, trainable, frozen, key=jax.random.key(1))
    # Another init draws other options from the same key.
    other = randjax.slot_machine(8, init="paper")
    with pytest.raises(ValueError, match="is not the draw of slot_machine options"):
        export.save(tmp_path / "a", other, trainable, frozen, key=jax.random.key(0))


# ---------------------------------------------------------------------------
# LaPerm: init key + per-vector permutations.


def _lenet_with_biases(width=1.0):
    return randjax.models.get("lenet300_100", use_bias=True, width=width,
                              kernel_init=randjax.init.get("kaiming_uniform"))


def _permuted(params, seed=0):
    """Every vector (column of reshape(-1, out); 1-D: the leaf) randomly permuted."""
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for i, leaf in enumerate(leaves):
        cols = np.asarray(leaf).reshape(-1, 1 if leaf.ndim == 1 else leaf.shape[-1])
        rng = np.random.default_rng(seed + i)
        perm = np.stack([rng.permutation(cols.shape[0]) for _ in range(cols.shape[1])], 1)
        out.append(jnp.asarray(np.take_along_axis(cols, perm, 0).reshape(leaf.shape)))
    return treedef.unflatten(out)


def test_save_permuted_round_trip_smallest_dtype_and_lehmer(tmp_path):
    model, key = _lenet_with_biases(), jax.random.key(5)
    params0 = model.init(key, jnp.zeros((1, 28, 28, 1)))["params"]
    params = _permuted(jax.tree.map(lambda b: b + 0.1 * jnp.arange(b.size).reshape(b.shape)
                                    if b.ndim == 1 else b, params0))
    # Biases of the init are zeros; give them values to permute (as a different init).
    with pytest.raises(ValueError, match=r"\['Dense_0'\]\['bias'\] is not, per weight"):
        export.save_permuted(tmp_path / "x", params, model, key, (28, 28, 1),
                             include_1d=True)
    params = _permuted(params0)
    x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
    logits = lambda p: np.asarray(jax.jit(model.apply)({"params": p}, x))
    sizes = {}
    for lehmer in (False, True):
        info = export.save_permuted(tmp_path / f"lp{lehmer}", params, model, key,
                                    (28, 28, 1), include_1d=True, lehmer=lehmer)
        rebuilt = export.load(info.path)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(
            np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32)), rebuilt, params)
        np.testing.assert_array_equal(logits(rebuilt), logits(params))
        assert info.float32_bytes == 4 * 266_610
        sizes[lehmer] = info.bytes
    with np.load(tmp_path / "lpFalse.npz") as data:
        dtypes = {name: str(data[name].dtype) for name in data.files
                  if name.startswith("perm_")}
    # Leaves in flattening order: Dense_0 bias (300), kernel (784 x 300), Dense_1
    # bias (100), kernel (300 x 100), Dense_2 bias (10), kernel (100 x 10).
    assert dtypes == {"perm_0": "uint16", "perm_1": "uint16", "perm_2": "uint8",
                      "perm_3": "uint16", "perm_4": "uint8", "perm_5": "uint8"}
    # Indices: 2 bytes per weight of the big layers (deflate takes some of the
    # unused high bits); Lehmer codes: log2(n!) bits per vector, incompressible.
    ratio = {lehmer: 4 * 266_610 / size for lehmer, size in sizes.items()}
    assert 2.0 < ratio[False] < 3.2 and 3.5 < ratio[True] < 4.6, ratio


def test_index_dtype_is_the_smallest_that_holds_the_positions():
    assert [str(export._index_dtype(n)) for n in (1, 256, 257, 65_536, 65_537)] == [
        "uint8", "uint8", "uint16", "uint16", "uint32"]


def test_save_permuted_after_laperm_fit_gives_identical_logits(tmp_path):
    digits = randjax.data.load("digits", val_fraction=0.0)
    model = _lenet_with_biases(width=0.25)
    tx = randjax.laperm(optax.adam(1e-3), 7, include_1d=True)
    result = randjax.fit(model, digits, tx, epochs=1, batch_size=64, seed=3,
                         progress=False)
    state = result.state
    assert int(state.step) % 7 != 0  # the last step was not a sync step
    with pytest.raises(ValueError, match="synced_params"):
        export.save_permuted(tmp_path / "a", state.trainable, model,
                             randjax.train.model_key(3), (8, 8, 1), include_1d=True)
    synced = randjax.reconnect.synced_params(state.trainable, state.opt_state)
    info = export.save_permuted(tmp_path / "fit", synced, model,
                                randjax.train.model_key(3), (8, 8, 1), include_1d=True)
    x = jnp.asarray(digits.test.x)
    logits = lambda p: np.asarray(model.apply({"params": p}, x))
    np.testing.assert_array_equal(logits(export.load(info.path)), logits(synced))
    # Only kernels permuted: the biases are stored as they are.
    kernels_only = randjax.laperm(optax.adam(1e-3), 7)
    state = randjax.fit(model, digits, kernels_only, epochs=1, batch_size=64, seed=3,
                        progress=False).state
    synced = randjax.reconnect.synced_params(state.trainable, state.opt_state)
    path = tmp_path / "kernels.npz"
    export.save_permuted(path, synced, model, randjax.train.model_key(3), (8, 8, 1),
                         lehmer=True)
    rebuilt = export.load(path)
    jax.tree.map(np.testing.assert_array_equal, rebuilt, synced)
    with np.load(path) as data:
        assert {n.split("_")[0] for n in data.files} == {"spec", "init", "lehmer", "value"}


def test_save_permuted_errors(tmp_path):
    model, key = _lenet_with_biases(width=0.25), jax.random.key(0)
    params = model.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    save = lambda p, m=model, k=key, shape=(8, 8, 1), **kw: export.save_permuted(
        tmp_path / "e", p, m, k, shape, **kw)
    save(params)  # the initial weights are a permutation of themselves
    with pytest.raises(ValueError, match="wrong model, key or input_shape"):
        save(params, k=jax.random.key(1))
    moved = jax.tree.map(lambda w: w * 1.0001, params)
    with pytest.raises(ValueError, match=r"\['Dense_0'\]\['kernel'\] is not, per weight"):
        save(moved)
    with pytest.raises(ValueError, match="structure of the model's initial parameters"):
        save({"Dense_0": params["Dense_0"]})
    with pytest.raises(ValueError, match="is float32"):
        save(params, shape=(4, 4, 1))
    with pytest.raises(ValueError, match="zoo model"):
        save(params, m=object())
    custom = randjax.models.get("lenet300_100", width=0.25,
                                kernel_init=jax.nn.initializers.normal(0.1))
    with pytest.raises(ValueError, match="kernel_init is not a registered initializer"):
        save(params, m=custom)
    with pytest.raises(TypeError, match="filter must be a callable"):
        save(params, filter=3)
    with pytest.raises(ValueError, match="lehmer must be a Python bool"):
        save(params, lehmer=1)
