"""Training Optimal Masks: sampling, final masks, the logits' gradient, training on digits."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import randjax
from randjax import models, pruning
from randjax.methods import tom as tom_lib
from randjax.methods.tom import final_masks, tom, tom_gradients


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    return {"a": {"kernel": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32),
                  "bias": jnp.ones(30)},
            "b": {"kernel": jnp.asarray(rng.normal(size=(30, 5)), jnp.float32)}}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("density", [0.013, 0.1, 0.5, 0.97, 1.0])
def test_final_masks_are_pruning_masks_at_density(density, scope, jit):
    rng = np.random.default_rng(1)
    logits = {"a": jnp.asarray(rng.integers(-3, 4, (20, 30)), jnp.float32),  # many ties
              "b": jnp.asarray(rng.normal(size=(30, 5)), jnp.float32), "c": None}
    make = (jax.jit(final_masks, static_argnums=1, static_argnames="scope") if jit
            else final_masks)
    got = make(logits, density, scope=scope)
    want = pruning.masks_at_density(logits, density, scope=scope)
    assert got["c"] is None
    for name in ("a", "b"):
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_final_masks_break_ties_by_weight_magnitude(scope, jit):
    rng = np.random.default_rng(2)
    # Clipped logits: most at the bounds, the threshold inside the -15 group.
    logits = {"a": jnp.asarray(rng.choice([15.0, -15.0, 1.0], (20, 30), p=[0.05, 0.9, 0.05]),
                               jnp.float32),
              "b": jnp.asarray(rng.choice([15.0, -15.0], (30, 5), p=[0.05, 0.95]), jnp.float32),
              "c": None}
    weights = {"a": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32),
               "b": jnp.asarray(rng.normal(size=(30, 5)), jnp.float32), "c": jnp.ones(3)}
    make = (jax.jit(final_masks, static_argnums=1, static_argnames="scope") if jit
            else final_masks)
    got = make(logits, 0.2, scope=scope, weights=weights)
    groups = [("a", "b")] if scope == "global" else [("a",), ("b",)]
    for names in groups:
        b = np.concatenate([np.ravel(logits[n]) for n in names])
        w = np.abs(np.concatenate([np.ravel(weights[n]) for n in names]))
        m = np.concatenate([np.ravel(got[n]) for n in names])
        # The reference: sort by logit, then by |w|, both descending.
        keep = np.lexsort((-w, -b))[:max(1, round(0.2 * b.size))]
        want = np.zeros(b.size, bool)
        want[keep] = True
        np.testing.assert_array_equal(m, want)
    with pytest.raises(ValueError, match="shape"):
        final_masks(logits, 0.2, weights={**weights, "b": jnp.ones((5, 30))})


def test_training_samples_and_the_gradient_goes_straight_through(params):
    rp = tom(0.3)
    logits, weights = rp.init(jax.random.key(0), params)
    np.testing.assert_array_equal(logits["a"]["kernel"], 4.0)
    assert logits["a"]["bias"] is None and weights["a"]["bias"] is not None  # frozen
    logits = jax.tree.map(lambda b: jnp.zeros_like(b), logits)  # p = 0.5
    apply = jax.jit(rp.apply, static_argnames="train")
    out = apply(logits, weights, key=jax.random.key(1))
    kept = out["a"]["kernel"] != 0
    np.testing.assert_array_equal(out["a"]["kernel"][kept], params["a"]["kernel"][kept])
    assert 0.4 < float(kept.mean()) < 0.6
    np.testing.assert_array_equal(out["a"]["bias"], params["a"]["bias"])
    again = apply(logits, weights, key=jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, out, again)

    upstream = jax.random.normal(jax.random.key(2), (20, 30))
    loss = lambda b: jnp.sum(rp.apply(b, weights, key=jax.random.key(1))["a"]["kernel"]
                             * upstream)
    grads = jax.grad(loss)(logits)
    # dL/db = dL/dc = upstream * w: no sigmoid slope (Zhou's would scale it by 1/4).
    np.testing.assert_allclose(grads["a"]["kernel"], upstream * params["a"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_array_equal(grads["b"]["kernel"], 0.0)
    with pytest.raises(ValueError, match="key"):
        rp.apply(logits, weights)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_evaluation_keeps_exactly_the_top_logits(params, scope):
    rp = tom(0.25, scope=scope)
    _, weights = rp.init(jax.random.key(0), params)
    rng = np.random.default_rng(3)
    logits = {"a": {"kernel": jnp.asarray(rng.normal(size=(20, 30)), jnp.float32), "bias": None},
              "b": {"kernel": jnp.asarray(rng.normal(size=(30, 5)), jnp.float32)}}
    out = jax.jit(rp.apply, static_argnames="train")(logits, weights, train=False)
    chosen = final_masks(logits, 0.25, scope=scope, weights=weights)
    np.testing.assert_array_equal(out["a"]["kernel"],
                                  jnp.where(chosen["a"]["kernel"], params["a"]["kernel"], 0))
    assert int(sum(m.sum() for m in jax.tree.leaves(chosen))) == (
        round(0.25 * 750) if scope == "global" else round(0.25 * 600) + round(0.25 * 150))


@pytest.mark.parametrize("jit", [False, True])
def test_tom_gradients_clip_penalise_divide_and_bound(jit):
    logits = {"w": jnp.array([0.0, 1.0, -2.0, 3.0]), "bias": None}
    weights = {"w": jnp.array([2.0, -0.5, 0.0, 1.0]), "bias": jnp.ones(1)}
    grads = {"w": jnp.array([0.4, -0.02, 7.0, -0.3]), "bias": None}

    def run(**options):
        tx = tom_gradients(**options)
        update = jax.jit(tx.update) if jit else tx.update
        updates, _ = update(grads, tx.init(logits), logits)
        assert updates["bias"] is None
        return np.asarray(updates["w"])

    np.testing.assert_allclose(run(clip=0.1, penalty="none"), [0.1, -0.02, 0.1, -0.1])
    np.testing.assert_allclose(run(clip=None, penalty="l1", penalty_scale=0.01),
                               [0.41, -0.01, 7.01, -0.29], rtol=1e-6)
    sigmoid = 1 / (1 + np.exp(-np.array([0.0, 1.0, -2.0, 3.0])))
    np.testing.assert_allclose(run(clip=None, penalty="l2", penalty_scale=0.01),
                               np.array([0.4, -0.02, 7.0, -0.3]) + 0.02 * sigmoid, rtol=1e-6)
    # Divided by |w| before clipping; a zero weight's logit gets no gradient.
    np.testing.assert_allclose(
        run(clip=1.0, penalty="none", divide_by_weight=True, weights=weights),
        [0.2, -0.04, 0.0, -0.3], rtol=1e-6)


def test_the_logits_stay_bounded_through_apply_updates():
    tx = optax.chain(tom_gradients(clip=None, penalty="none", bound=2.0), optax.sgd(1.0))
    logits = {"w": jnp.array([1.5, -1.5, 0.0])}
    state = tx.init(logits)
    updates, state = tx.update({"w": jnp.array([-3.0, 3.0, -0.5])}, state, logits)
    assert randjax.reparam.projections(state)
    new = randjax.apply_updates(logits, updates, state)
    np.testing.assert_array_equal(new["w"], [2.0, -2.0, 0.5])


def test_bad_input():
    for density in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="density"):
            tom(density)
        with pytest.raises(ValueError, match="density"):
            final_masks({"w": jnp.ones(3)}, density)
    with pytest.raises(ValueError, match="scope"):
        tom(0.5, scope="per_layer")
    with pytest.raises(ValueError, match="logit_init"):
        tom(0.5, logit_init=float("nan"))
    with pytest.raises(ValueError, match="penalty"):
        tom_gradients(penalty="l3")
    with pytest.raises(ValueError, match="clip"):
        tom_gradients(clip=0.0)
    with pytest.raises(ValueError, match="bound"):
        tom_gradients(bound=-1.0)
    with pytest.raises(ValueError, match="penalty_scale"):
        tom_gradients(penalty_scale=-1e-7)
    with pytest.raises(ValueError, match="weights"):
        tom_gradients(divide_by_weight=True)
    with pytest.raises(ValueError, match="no array"):
        final_masks({"w": None}, 0.5)
    tx = tom_gradients(divide_by_weight=True, weights={"v": jnp.ones(2)})
    with pytest.raises(ValueError, match="does not match"):
        tx.update({"w": jnp.ones(2)}, tx.init(None), {"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="gradient"):
        randjax.bernoulli_mask(jax.random.key(0), jnp.zeros(3), gradient="tanh")
    assert tom_lib.PENALTIES == ("l1", "l2", "none")


def test_masks_trained_on_digits_beat_magnitude_and_random_without_retraining(digits):
    """TOM's steps 1-3 on digits: the learned masks keep accuracy where others lose it."""
    model = models.get("lenet300_100")
    dense = randjax.fit(model, digits, optax.sgd(0.05, momentum=0.9), epochs=3, batch_size=64,
                        progress=False)
    pretrained = dense.state.trainable
    density = 0.03
    rp = tom(density)
    # The code's optimizer and clip (0.1 / lr); a penalty strong enough for the
    # expected density to fall near the target within the budget.
    tx = optax.chain(tom_gradients(clip=0.01, penalty_scale=1e-3),
                     optax.sgd(10.0, momentum=0.9, nesterov=True))
    result = randjax.fit(model, digits, tx, reparam=rp, epochs=8, batch_size=64,
                         variables={"params": pretrained}, progress=False)
    logits = result.state.trainable
    chex.assert_trees_all_equal_shapes(pruning.select(pretrained), logits)
    assert all(float(jnp.abs(b).max()) <= 15.0 for b in jax.tree.leaves(logits))
    assert float(tom_lib.expected_density(logits)) < 0.1
    learned = final_masks(logits, density)
    assert pruning.report(learned).density == pytest.approx(density, abs=1e-4)
    targets = pruning.select(pretrained)
    baselines = {"magnitude": pruning.masks_at_density(pruning.magnitude(targets), density),
                 "random": pruning.masks_at_density(
                     pruning.random(jax.random.key(0), targets), density)}

    def accuracy(masks):
        logits_out = model.apply({"params": pruning.apply_masks(pretrained, masks)},
                                 digits.test.x)
        return float(jnp.mean(jnp.argmax(logits_out, -1) == digits.test.y))

    tom_accuracy = accuracy(learned)
    assert result.summary["test_accuracy"] == pytest.approx(tom_accuracy, abs=1e-6)
    assert tom_accuracy > 0.8
    assert tom_accuracy > accuracy(baselines["magnitude"]) + 0.3
    assert tom_accuracy > accuracy(baselines["random"]) + 0.5


def test_apply_refuses_wrong_shapes_and_swapped_trees():
    rp = tom(0.5)
    logits, weights = rp.init(jax.random.key(0), {"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"leaf \['w'\]: a trainable leaf \(2, 3\) float32 "
                                         r"needs a frozen leaf of shape \(2, 3\)"):
        rp.apply(logits, {**weights, "w": jnp.ones((1, 3))}, train=False)
    with pytest.raises(ValueError, match=r"unselected leaf \['b'\] is in trainable.*swapped"):
        rp.apply(weights, logits, train=False)
