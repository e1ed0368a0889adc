"""Edge-popup: counts, gradients, any pytree, memory-lean mode, scale_fan."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import randjax


def lenet():
    return randjax.models.get("lenet300_100", use_bias=False)


@pytest.fixture(scope="module")
def lenet_params():
    model = randjax.models.get("lenet300_100", use_bias=True)
    return model.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]


def kernels(tree):
    return {jax.tree_util.keystr(p): leaf for p, leaf in
            jax.tree_util.tree_flatten_with_path(tree)[0] if leaf.ndim >= 2}


def nonzero(x):
    return int(np.count_nonzero(np.asarray(x)))

# --------------------------------------------------------------------------- #
# Edge-popup
# --------------------------------------------------------------------------- #

def test_edge_popup_trains_lenet_on_digits_with_frozen_weights(digits):
    rp = randjax.edge_popup(0.5)
    fit = lambda epochs: randjax.fit(lenet(), digits, optax.sgd(0.1, momentum=0.9),
                                     reparam=rp, epochs=epochs, batch_size=64,
                                     progress=False)
    initial, result = fit(0).state, fit(10)
    # Reaches ~0.96 (chance 0.1).
    assert result.summary["test_accuracy"] > 0.85
    jax.tree.map(np.testing.assert_array_equal, initial.frozen, result.state.frozen)
    assert not np.allclose(initial.trainable["Dense_0"]["kernel"],
                           result.state.trainable["Dense_0"]["kernel"])
    # Every kernel keeps exactly round(0.5 * n) weights.
    params = jax.jit(rp.apply)(result.state.trainable, result.state.frozen)
    for name, w in kernels(params).items():
        assert nonzero(w) == round(0.5 * w.size), name


@pytest.mark.parametrize("jit", [False, True])
def test_edge_popup_layer_and_global_counts(lenet_params, jit):
    maybe_jit = jax.jit if jit else (lambda f: f)
    d = 0.3
    layer = randjax.edge_popup(d, weight_init="signed_constant")
    trainable, frozen = layer.init(jax.random.key(0), lenet_params)
    # Biases are frozen and untouched; kernels have scores U(+-1/sqrt(fan_in)).
    for name in lenet_params:
        assert trainable[name]["bias"] is None
        np.testing.assert_array_equal(frozen[name]["bias"], lenet_params[name]["bias"])
        bound = 1 / math.sqrt(lenet_params[name]["kernel"].shape[0])
        assert 0 < np.abs(trainable[name]["kernel"]).max() <= bound
    per_layer = kernels(maybe_jit(layer.apply)(trainable, frozen))
    for name, w in per_layer.items():
        assert nonzero(w) == round(d * w.size), name
    # Global: one top-k over all kernels, same scores.
    rp = randjax.edge_popup(d, scope="global", weight_init="signed_constant")
    g_trainable, g_frozen = rp.init(jax.random.key(0), lenet_params)
    jax.tree.map(np.testing.assert_array_equal, g_trainable, trainable)
    # Scale the first kernel's scores up: it now holds most of the kept weights.
    g_trainable["Dense_0"]["kernel"] = g_trainable["Dense_0"]["kernel"] * 3
    per_global = kernels(maybe_jit(rp.apply)(g_trainable, g_frozen))
    total = sum(w.size for w in per_global.values())
    assert sum(nonzero(w) for w in per_global.values()) == round(d * total)
    densities = [nonzero(w) / w.size for w in per_global.values()]
    assert max(densities) - min(densities) > 0.1
    # The kept weights are the frozen weights themselves.
    for name, w in per_global.items():
        kept = np.asarray(w) != 0
        np.testing.assert_array_equal(
            np.asarray(w)[kept], np.asarray(kernels(g_frozen)[name])[kept])


def test_edge_popup_exact_count_with_ties_and_reference_rounding():
    params = {"w": jnp.ones((10, 1))}
    rp = randjax.edge_popup(0.33, rounding="reference")
    trainable, frozen = rp.init(jax.random.key(0), params)
    trainable = {"w": jnp.ones((10, 1))}  # all scores tie
    assert nonzero(rp.apply(trainable, frozen)["w"]) == 4
    rp = randjax.edge_popup(0.33)
    assert nonzero(rp.apply(trainable, frozen)["w"]) == 3


def test_edge_popup_gradient_reaches_scores_and_train_others(lenet_params):
    x = jnp.ones((4, 64))
    model = randjax.models.get("lenet300_100", use_bias=True)
    for train_others in (False, True):
        rp = randjax.edge_popup(0.5, train_others=train_others)
        trainable, frozen = rp.init(jax.random.key(0), lenet_params)
        assert (trainable["Dense_0"]["bias"] is None) != train_others
        assert (frozen["Dense_0"]["bias"] is None) == train_others

        @jax.jit
        def loss(trainable, rp=rp, frozen=frozen):
            params = rp.apply(trainable, frozen)
            return jnp.sum(model.apply({"params": params}, x, train=False) ** 2)

        grads = jax.grad(loss)(trainable)
        effective = rp.apply(trainable, frozen)
        for name in lenet_params:
            g = np.asarray(grads[name]["kernel"])
            assert np.isfinite(g).all() and np.abs(g).max() > 0
            # Straight-through: masked-out weights' scores get gradient too.
            dropped = np.asarray(effective[name]["kernel"]) == 0
            assert nonzero(g[dropped]) > 0.1 * dropped.sum()
        if train_others:
            assert np.abs(grads["Dense_2"]["bias"]).max() > 0


def test_edge_popup_on_a_plain_dict():
    params = {"layers": [{"w": jnp.arange(12.0).reshape(3, 4) + 1}],
              "scale": jnp.float32(2.0)}
    rp = randjax.edge_popup(0.25)
    trainable, frozen = rp.init(jax.random.key(3), params)
    assert trainable["scale"] is None and float(frozen["scale"]) == 2.0
    np.testing.assert_array_equal(frozen["layers"][0]["w"], params["layers"][0]["w"])
    for apply in (rp.apply, jax.jit(rp.apply)):
        out = apply(trainable, frozen)
        assert nonzero(out["layers"][0]["w"]) == 3
        assert float(out["scale"]) == 2.0
    # optax handles the None entries.
    tx = optax.sgd(0.1, momentum=0.9)
    state = tx.init(trainable)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, trainable), state)
    assert optax.apply_updates(trainable, updates)["scale"] is None


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(64, 32, rngs=rngs)
        self.fc2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def test_edge_popup_with_an_nnx_model():
    graphdef, state = nnx.split(NnxMLP(nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    rp = randjax.edge_popup(0.25)
    trainable, frozen = rp.init(jax.random.key(0), params)
    assert trainable["fc1"]["bias"] is None

    @jax.jit
    def forward(trainable, x):
        effective = rp.apply(trainable, frozen)
        new_state = jax.tree.map(lambda v: v, state)
        nnx.replace_by_pure_dict(new_state, effective)
        return nnx.merge(graphdef, new_state)(x), effective

    logits, effective = forward(trainable, jnp.ones((3, 64)))
    assert logits.shape == (3, 10) and np.isfinite(logits).all()
    assert nonzero(effective["fc1"]["kernel"]) == round(0.25 * 64 * 32)
    np.testing.assert_array_equal(effective["fc1"]["bias"], params["fc1"]["bias"])
    # The merged model really uses the masked kernels.
    dense = nnx.merge(graphdef, state)(jnp.ones((3, 64)))
    assert not np.allclose(logits, dense)
    grads = jax.grad(lambda t: forward(t, jnp.ones((3, 64)))[0].sum())(trainable)
    assert np.abs(grads["fc1"]["kernel"]).max() > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(density=0.0), r"density must be in \(0, 1\]"),
    (dict(density=1.5), r"density must be in \(0, 1\]"),
    (dict(density=float("nan")), r"density must be in \(0, 1\]"),
    (dict(density=jnp.float32(0.5)), "density must be a Python float"),
    (dict(density=0.5, scope="net"), "scope must be one of"),
    (dict(density=0.5, rounding="floor"), "rounding must be one of"),
    (dict(density=0.5, weight_init="nope"), "unknown initializer 'nope'; choose one of"),
    (dict(density=0.5, score_init=3), "score_init must be None, an initializer name"),
    (dict(density=0.5, train_others=1), "train_others must be a Python bool"),
])
def test_edge_popup_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        randjax.edge_popup(**kwargs)


def test_edge_popup_bad_params():
    rp = randjax.edge_popup(0.5)
    with pytest.raises(ValueError, match=r"selected leaf \['w'\] must have a floating"):
        rp.init(jax.random.key(0), {"w": jnp.ones((2, 2), jnp.int32)})
    with pytest.raises(ValueError, match="filter selects no leaf"):
        rp.init(jax.random.key(0), {"b": jnp.ones(3)})
    everything = randjax.edge_popup(0.5, filter=lambda path, leaf: True)
    message = r"score_init='pytorch_default' needs kernels with ndim >= 2 .* leaf \['b'\]"
    with pytest.raises(ValueError, match=message + r" of shape \(3,\)"):
        everything.init(jax.random.key(0), {"b": jnp.ones(3)})
    # With initializer callables, any floating leaf can be masked.
    custom = randjax.edge_popup(0.5, filter=lambda path, leaf: True,
                                score_init=jax.nn.initializers.normal(1.0))
    trainable, frozen = custom.init(jax.random.key(0), {"b": jnp.ones(4)})
    assert nonzero(custom.apply(trainable, frozen)["b"]) == 2


# --------------------------------------------------------------------------- #


# Memory-lean mode and scale_fan
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("method, weight_init", [
    ("edge_popup", "signed_constant"), ("edge_popup", "scaled_kaiming_normal"),
    ("supermask", "kaiming_normal")])
def test_store_weights_false_gives_identical_logits(method, weight_init):
    model = randjax.models.get("conv2", width=0.125)
    x = jax.random.normal(jax.random.key(1), (4, 12, 12, 3))
    params = model.init(jax.random.key(0), x)["params"]
    make = dict(edge_popup=lambda **kw: randjax.edge_popup(0.3, **kw),
                supermask=lambda **kw: randjax.supermask(**kw))[method]
    logits, frozen_bytes = [], []
    for store in (True, False):
        rp = make(weight_init=weight_init, store_weights=store)
        trainable, frozen = rp.init(jax.random.key(2), params)
        forward = jax.jit(lambda t, f, rp=rp: model.apply(
            {"params": rp.apply(t, f, key=jax.random.key(3))}, x))
        logits.append(np.asarray(forward(trainable, frozen)))
        frozen_bytes.append(sum(leaf.nbytes for leaf in jax.tree.leaves(frozen)))
    np.testing.assert_array_equal(logits[0], logits[1])
    assert np.abs(logits[0]).max() > 0
    # Lean: two uint32 per kernel (conv2 has 5 and no biases).
    assert len(jax.tree.leaves(params)) == 5
    assert frozen_bytes[1] == 5 * 8 < frozen_bytes[0] / 100


def test_store_weights_false_trains_like_stored(digits):
    runs = [randjax.fit(lenet(), digits, optax.sgd(0.1, momentum=0.9),
                        reparam=randjax.edge_popup(0.5, weight_init="signed_constant",
                                                   store_weights=store),
                        epochs=2, batch_size=64, progress=False) for store in (True, False)]
    np.testing.assert_array_equal(runs[0].step_losses, runs[1].step_losses)
    lean_frozen = runs[1].state.frozen["Dense_0"]["kernel"]
    assert lean_frozen.dtype == jnp.uint32 and lean_frozen.shape == (2,)


def test_store_weights_false_needs_weight_init():
    for make in (randjax.edge_popup, lambda **kw: randjax.supermask(**kw)):
        kwargs = dict(density=0.5) if make is randjax.edge_popup else {}
        with pytest.raises(ValueError, match="store_weights=False redraws the weights"):
            make(store_weights=False, **kwargs)
    with pytest.raises(ValueError, match="store_weights must be a Python bool"):
        randjax.edge_popup(0.5, weight_init="signed_constant", store_weights=0)


def test_scale_fan_kept_and_reference():
    params = {"w": jnp.zeros((100, 4))}
    magnitude = lambda scale_fan: float(np.abs(randjax.edge_popup(
        0.25, weight_init="scaled_signed_constant", scale_fan=scale_fan).init(
            jax.random.key(0), params)[1]["w"]).max())
    # kept: fan_in * 0.25; reference (hidden-networks' builder): fan_in * (1 - 0.25).
    assert magnitude("kept") == pytest.approx(math.sqrt(2 / 25))
    assert magnitude("reference") == pytest.approx(math.sqrt(2 / 75))
    with pytest.raises(ValueError, match="1 - density = 0"):
        randjax.edge_popup(1.0, weight_init="scaled_signed_constant", scale_fan="reference")
    with pytest.raises(ValueError, match=r"scale_fan must be one of \('kept', 'reference'\)"):
        randjax.edge_popup(0.5, scale_fan="pruned")


def test_apply_refuses_trees_that_would_broadcast_or_are_swapped():
    rp = randjax.edge_popup(0.5)
    params = {"w": jnp.ones((4, 5)), "b": jnp.zeros(5)}
    trainable, frozen = rp.init(jax.random.key(0), params)
    wrong = {**frozen, "w": jnp.ones((1, 5))}  # w * mask would broadcast to (4, 5)
    with pytest.raises(ValueError, match=r"edge_popup.apply: leaf \['w'\]: a trainable leaf "
                                         r"\(4, 5\) float32 needs a frozen leaf of shape "
                                         r"\(4, 5\) \(floating\), got \(1, 5\) float32$"):
        rp.apply(trainable, wrong)
    with pytest.raises(ValueError, match=r"unselected leaf \['b'\] is in trainable, but this "
                                         r"edge_popup keeps the unselected leaves in frozen "
                                         r"\(swapped trainable/frozen\?"):
        rp.apply(frozen, trainable)
    with pytest.raises(ValueError, match="swapped trainable/frozen"):
        jax.jit(rp.apply)(frozen, trainable)  # checked when tracing
    lean = randjax.edge_popup(0.5, weight_init="kaiming_normal", store_weights=False)
    trainable, frozen = lean.init(jax.random.key(0), {"w": jnp.ones((4, 5))})
    with pytest.raises(ValueError, match=r"needs a frozen leaf of shape 1-D \(unsignedinteger"
                                         r"\), got \(4, 5\) float32"):
        lean.apply(trainable, {"w": jnp.ones((4, 5))})
    with pytest.raises(ValueError, match="swapped trainable/frozen"):
        lean.apply(frozen, trainable)


def test_filter_must_be_callable():
    with pytest.raises(ValueError, match="filter must be a callable filter"):
        randjax.edge_popup(0.5, filter="kernel")


def test_output_axis_0_reads_fan_in_from_an_equinox_conv(tmp_path):
    eqx = pytest.importorskip("equinox")
    params = {"conv": eqx.nn.Conv2d(32, 64, 3, key=jax.random.key(0)).weight}  # (64, 32, 3, 3)
    rp = randjax.edge_popup(0.5, weight_init="scaled_signed_constant", output_axis=0)
    trainable, frozen = rp.init(jax.random.key(1), params)
    fan_in = 32 * 3 * 3
    scores = np.abs(np.asarray(trainable["conv"]))       # pytorch_default: U(+-1/sqrt(fan_in))
    assert 0.99 / math.sqrt(fan_in) < scores.max() <= 1 / math.sqrt(fan_in)
    np.testing.assert_allclose(np.unique(np.abs(np.asarray(frozen["conv"]))),
                               [math.sqrt(2 / (fan_in * 0.5))], rtol=1e-6)
    info = randjax.export.save(tmp_path / "eqx", rp, trainable, frozen, key=jax.random.key(1))
    np.testing.assert_array_equal(randjax.export.load(info.path)["conv"],
                                  rp.apply(trainable, frozen)["conv"])
    assert rp.spec["output_axis"] == 0 and "output_axis" not in randjax.edge_popup(
        0.5, weight_init="signed_constant").spec
    # Supermask's named weight_init reads the same layout.
    _, masked = randjax.supermask(weight_init="signed_constant", output_axis=0).init(
        jax.random.key(1), params)
    np.testing.assert_allclose(np.unique(np.abs(np.asarray(masked["conv"]))),
                               [math.sqrt(2 / fan_in)], rtol=1e-6)
    for make in (lambda: randjax.edge_popup(0.5, output_axis=1),
                 lambda: randjax.supermask(output_axis=-2)):
        with pytest.raises(ValueError, match="output_axis must be -1"):
            make()
