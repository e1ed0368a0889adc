"""Structured unit pruning: orders against the reference's loops, the jitted curve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from randjax import analysis, data, models
from randjax.methods import structured


def _reference_fp_order(w: np.ndarray, count: int, least_decrease: bool) -> list[int]:
    """Heitmann's fp_pruning: recompute every candidate's 'all but one' potential."""
    rows = w.T.astype(np.float64)
    n, alive, order = len(rows), list(range(len(rows))), []
    for _ in range(count):
        scores = []
        for i in alive:
            v = rows[[j for j in alive if j != i]]
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
            scores.append((np.sum((v @ v.T) ** 2) / n**2, i))
        # Ties to the lowest index (the rule; the reference's max picks the highest).
        best = max(scores, key=lambda s: (s[0], -s[1])) if least_decrease else min(scores)
        order.append(best[1])
        alive.remove(best[1])
    return order


@pytest.mark.parametrize("most_correlated_first", [False, True])
def test_fp_order_matches_the_recompute_per_candidate_loop(most_correlated_first):
    w = np.array(jax.random.normal(jax.random.key(0), (24, 14)))
    w[:, :3] += 2.0 * w[:, 3:4]  # some correlated units
    order, potentials = jax.jit(structured.fp_order, static_argnums=1,
                                static_argnames="most_correlated_first")(
        w, 10, most_correlated_first=most_correlated_first)
    assert order.tolist() == _reference_fp_order(w, 10, not most_correlated_first)
    pruned = w.copy()
    for j, unit in enumerate(order.tolist()):
        np.testing.assert_allclose(potentials[j], analysis.frame_potential(pruned), rtol=1e-5)
        pruned[:, unit] = 0.0
    np.testing.assert_allclose(potentials[-1], analysis.frame_potential(pruned), rtol=1e-5)


def test_fp_order_skips_units_that_are_already_zero():
    w = np.array(jax.random.normal(jax.random.key(1), (10, 6)))
    w[:, 2] = 0.0
    order, _ = structured.fp_order(w, 5)
    assert 2 not in order.tolist() and sorted(order.tolist()) == [0, 1, 3, 4, 5]


def test_magnitude_and_random_orders():
    w = jnp.array([[1.0, 3.0, 2.0, 3.0]])
    assert structured.magnitude_order(w).tolist() == [0, 2, 1, 3]
    assert structured.magnitude_order(w, 2, largest_first=True).tolist() == [1, 3]
    orders = structured.random_orders(6, 4, rounds=3, seed=2019)
    rng = np.random.RandomState(2019)  # one stream continued over the rounds
    for row in orders:
        units = list(range(6))
        rng.shuffle(units)
        assert row.tolist() == units[:4]
    assert len({tuple(r) for r in orders}) == 3
    conv = jax.random.normal(jax.random.key(2), (3, 3, 2, 5))
    assert structured.removal_orders(conv, "fp", 3).shape == (1, 3)
    assert structured.removal_orders(conv, "random", 3, rounds=2).shape == (2, 3)


def test_orders_of_a_pytorch_layout_kernel_with_axis_0():
    # Equinox / PyTorch conv filters (out, in, h, w): the same units, other flattening.
    flax_kernel = np.random.default_rng(4).normal(size=(3, 3, 5, 12)).astype(np.float32)
    torch_kernel = np.transpose(flax_kernel, (3, 2, 0, 1))
    order, potentials = structured.fp_order(flax_kernel, 9)
    torch_order, torch_potentials = structured.fp_order(torch_kernel, 9, axis=0)
    np.testing.assert_array_equal(order, torch_order)
    np.testing.assert_allclose(potentials, torch_potentials, rtol=1e-5)
    np.testing.assert_array_equal(structured.magnitude_order(flax_kernel),
                                  structured.magnitude_order(torch_kernel, axis=0))


def test_bad_input_is_refused():
    w = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="more than the layer's 3 units"):
        structured.magnitude_order(w, 4)
    with pytest.raises(ValueError, match="more than the layer's 3 units"):
        structured.fp_order(w, 5)
    with pytest.raises(ValueError, match="criterion"):
        structured.removal_orders(w, "entropy")
    with pytest.raises(ValueError, match="ndim >= 2"):
        structured.fp_order(jnp.ones(3))
    params = {"Dense_0": {"kernel": w, "bias": jnp.ones(3)}}
    with pytest.raises(ValueError, match="'Dense_9' is not a module"):
        structured.prune_units(params, "Dense_9", jnp.ones(3, bool))
    with pytest.raises(ValueError, match="boolean vector of the layer's 3 units"):
        structured.prune_units(params, "Dense_0", jnp.ones(4, bool))


def test_prune_units_options():
    params = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
              "Dense_1": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    keep = jnp.array([True, False, True])
    out = structured.prune_units(params, "Dense_0", keep)
    assert out["Dense_0"]["kernel"][:, 1].tolist() == [0, 0]
    assert out["Dense_0"]["bias"].tolist() == [1, 1, 1]  # the reference keeps the bias
    assert out["Dense_1"] is params["Dense_1"]
    out = structured.prune_units(params, "Dense_0", keep, zero_bias=True,
                                 remove_outgoing="Dense_1")
    assert out["Dense_0"]["bias"].tolist() == [1, 0, 1]
    assert out["Dense_1"]["kernel"].tolist() == [[1, 1], [0, 0], [1, 1]]


@pytest.mark.parametrize("model_name,options", [("lenet300_100", {}),
                                                ("conv2", {"use_bias": True, "width": 0.25})])
def test_accuracy_curve_equals_evaluating_pruned_networks(model_name, options):
    dataset = data.load("digits", val_fraction=0.0)
    model = models.get(model_name, num_classes=10, **options)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *dataset.input_shape)))
    # Give the biases values so that keeping relu(b) differs from zeroing it.
    variables = jax.tree.map(lambda a: a + 0.3 if a.ndim == 1 else a, variables)
    kernel = variables["params"]["Dense_0"]["kernel"]
    n = kernel.shape[-1]
    orders = np.concatenate([structured.removal_orders(kernel, "fp", n - 1),
                             structured.removal_orders(kernel, "random", n - 1, rounds=2)])
    counts = [0, 1, n // 2, n - 1]
    x, y = dataset.test.x, dataset.test.y
    for removal in ({}, {"zero_bias": True, "remove_outgoing": "Dense_1"}):
        curve = structured.accuracy_curve(model, variables, x, y, layer="Dense_0",
                                          orders=orders, counts=counts, batch_size=128,
                                          **removal)
        assert curve.shape == (3, 4)
        for r, order in enumerate(orders):
            for c, count in enumerate(counts):
                keep = np.ones(n, bool)
                keep[order[:count]] = False
                params = structured.prune_units(variables["params"], "Dense_0",
                                                jnp.asarray(keep), **removal)
                logits = model.apply({**variables, "params": params}, x)
                assert curve[r, c] == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)),
                                                    abs=1.5 / len(y))
    with pytest.raises(ValueError, match="counts"):
        structured.accuracy_curve(model, variables, x, y, layer="Dense_0", orders=orders,
                                  counts=[n])
    with pytest.raises(ValueError, match="same unit twice"):
        structured.accuracy_curve(model, variables, x, y, layer="Dense_0",
                                  orders=np.zeros((1, 2), int))
