"""Pruning scores, masks and densities, against the references' own rules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from randjax import pruning


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(30, 20)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=20), jnp.float32)},
            "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(20, 10)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=10), jnp.float32)}}


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_select_keeps_kernels_and_honours_exclusions():
    targets = pruning.select(params())
    assert targets["Dense_0"]["bias"] is None and targets["Dense_1"]["bias"] is None
    assert targets["Dense_0"]["kernel"].shape == (30, 20)
    excluded = pruning.select(params(), exclude=("Dense_1",))
    assert excluded["Dense_1"]["kernel"] is None
    assert pruning.select(params(), exclude=("Dense_1/k*",))["Dense_1"]["kernel"] is None
    with pytest.raises(ValueError, match="matches no prunable leaf"):
        pruning.select(params(), exclude=("Dense_7",))
    with pytest.raises(ValueError, match="selects no leaf"):
        pruning.select(params(), exclude=("Dense_0", "Dense_1"))
    with pytest.raises(ValueError, match="selects no leaf"):
        pruning.select({"bias": jnp.ones(3)})


def test_exact_global_pruning_removes_the_smallest_over_all_layers():
    p = pruning.select(params())
    scores = pruning.magnitude(p)
    masks = pruning.prune_remaining(scores, pruning.ones(scores), 0.2)
    n = 30 * 20 + 20 * 10
    assert int(flat(masks).sum()) == round(0.8 * n)
    kept, pruned = flat(scores)[flat(masks)], flat(scores)[~flat(masks)]
    assert kept.min() > pruned.max()  # one threshold across both layers
    # A second round removes 20% of what remains, and never revives a weight.
    again = pruning.prune_remaining(scores, masks, 0.2)
    assert int(flat(again).sum()) == round(0.8 * round(0.8 * n))
    assert not (flat(again) & ~flat(masks)).any()


def test_layer_scope_prunes_each_layer_by_the_fraction():
    scores = pruning.magnitude(pruning.select(params()))
    masks = pruning.masks_at_density(scores, 0.25, scope="layer")
    assert int(masks["Dense_0"]["kernel"].sum()) == 150
    assert int(masks["Dense_1"]["kernel"].sum()) == 50


def test_exact_counts_break_ties_by_position():
    scores = {"a": jnp.ones(10), "b": None}
    masks = pruning.masks_at_density(scores, 0.3)
    assert masks["a"].tolist() == [True] * 3 + [False] * 7
    assert masks["b"] is None


def open_lth_prune(weights: dict, mask: dict, fraction: float, ignored: int) -> dict:
    """open_lth's sparse_global.Strategy.prune, restated in NumPy."""
    remaining = sum(m.sum() for m in mask.values()) + ignored
    n_prune = math.ceil(fraction * remaining)
    vector = np.concatenate([v[mask[k] == 1] for k, v in weights.items()])
    threshold = np.sort(np.abs(vector))[n_prune]
    return {k: np.where(np.abs(v) > threshold, mask[k], 0) for k, v in weights.items()}


def test_open_lth_count_matches_its_rule_over_rounds():
    p = pruning.select(params(), exclude=("Dense_1",))
    ignored = 20 * 10
    weights = {"k": np.asarray(p["Dense_0"]["kernel"])}
    ref = {"k": np.ones((30, 20))}
    masks = pruning.ones(pruning.magnitude(p))
    for _ in range(4):
        ref = open_lth_prune(weights, ref, 0.2, ignored)
        masks = pruning.prune_remaining(pruning.magnitude(p), masks, 0.2,
                                        count="open_lth", ignored=ignored)
        np.testing.assert_array_equal(np.asarray(masks["Dense_0"]["kernel"]), ref["k"] == 1)


def test_mikler_count_is_the_interpolated_percentile_with_ties_kept():
    p = pruning.select(params(1))
    scores = pruning.magnitude(p)
    masks = pruning.prune_remaining(scores, pruning.ones(scores), 0.3, count="mikler")
    values = flat(scores)
    threshold = np.percentile(values, 30)
    np.testing.assert_array_equal(flat(masks), values >= threshold)
    # The second round prunes to 49% over all weights, the pruned ones scoring 0.
    again = pruning.prune_remaining(scores, masks, 0.3, count="mikler")
    zeroed = np.where(flat(masks), values, 0)
    density = 0.7 * flat(masks).sum() / values.size
    np.testing.assert_array_equal(
        flat(again), flat(masks) & (values >= np.percentile(zeroed, 100 * (1 - density))))


def test_snip_and_random_scores():
    p = pruning.select(params())
    grads = jax.tree.map(lambda x: 2 * jnp.ones_like(x), params())
    snip = pruning.snip(p, grads)
    np.testing.assert_allclose(snip["Dense_0"]["kernel"], 2 * np.abs(p["Dense_0"]["kernel"]))
    assert snip["Dense_0"]["bias"] is None
    a = pruning.random(jax.random.key(0), p)
    b = pruning.random(jax.random.key(1), p)
    assert not np.array_equal(flat(a), flat(b))
    masks = pruning.masks_at_density(a, 0.1)
    assert int(flat(masks).sum()) == 80


def test_report_counts_prunable_and_all_parameters():
    ps = params()
    masks = pruning.masks_at_density(pruning.magnitude(pruning.select(ps)), 0.5)
    report = pruning.report(masks, ps)
    assert report.kept == 400 and report.prunable == 800
    assert report.density == 0.5
    assert report.density_all == pytest.approx((400 + 30) / 830)
    assert set(report.layers) == {"Dense_0/kernel", "Dense_1/kernel"}


def test_apply_masks_writes_exact_zeros():
    ps = params()
    masks = pruning.masks_at_density(pruning.magnitude(pruning.select(ps)), 0.5)
    pruned = pruning.apply_masks(ps, masks)
    kernel = np.asarray(pruned["Dense_0"]["kernel"])
    assert (kernel[~np.asarray(masks["Dense_0"]["kernel"])] == 0).all()
    np.testing.assert_array_equal(pruned["Dense_0"]["bias"], ps["Dense_0"]["bias"])


@pytest.mark.parametrize("call, message", [
    (lambda s, m: pruning.prune_remaining(s, m, 1.0), r"fraction must be in \[0, 1\)"),
    (lambda s, m: pruning.prune_remaining(s, m, -0.1), "fraction must be in"),
    (lambda s, m: pruning.masks_at_density(s, 0.0), r"density must be in \(0, 1\]"),
    (lambda s, m: pruning.masks_at_density(s, 1.5), r"density must be in \(0, 1\]"),
    (lambda s, m: pruning.prune_remaining(s, m, 0.2, scope="net"), "scope must be one of"),
    (lambda s, m: pruning.prune_remaining(s, m, 0.2, ignored=3), "only for count='open_lth'"),
    (lambda s, m: pruning.prune_remaining(s, {"Dense_0": m["Dense_0"]}, 0.2),
     "tree structure of the parameters"),
    (lambda s, m: pruning.prune_remaining(
        s, {**m, "Dense_1": {"kernel": jnp.ones((3, 3), bool), "bias": None}}, 0.2),
     "has shape"),
])
def test_bad_input(call, message):
    scores = pruning.magnitude(pruning.select(params()))
    with pytest.raises(ValueError, match=message):
        call(scores, pruning.ones(scores))


# Sparse-mask modifications (Mikler Table 3.1)
# --------------------------------------------------------------------------- #

def _pruned(seed=0, density=0.3):
    p = params(seed)
    masks = pruning.masks_at_density(pruning.magnitude(pruning.select(p)), density)
    return pruning.apply_masks(p, masks), masks


def _layer_counts(masks):
    return [int(m.sum()) for m in jax.tree.leaves(masks)]


@pytest.mark.parametrize("how", pruning.MODIFICATIONS)
def test_modify_masks_keeps_every_layers_density(how):
    p, masks = _pruned()
    fresh = params(7)
    init = fresh if "reinit" in how else None
    new_p, new_m = pruning.modify_masks(jax.random.key(1), p, masks, how, init_params=init)
    pruning.check_masks(new_m, new_p)
    assert _layer_counts(new_m) == _layer_counts(masks)
    for name in ("Dense_0", "Dense_1"):
        w, m, old_w, old_m = (new_p[name]["kernel"], new_m[name]["kernel"],
                              p[name]["kernel"], masks[name]["kernel"])
        assert m.dtype == bool and (np.asarray(w)[~np.asarray(m)] == 0).all()
        survivors, old_survivors = np.sort(np.asarray(w)[m]), np.sort(np.asarray(old_w)[old_m])
        if how in ("shuffle_weights", "shuffle_layer"):
            np.testing.assert_array_equal(survivors, old_survivors)  # the same multiset
            np.testing.assert_array_equal(new_p[name]["bias"], p[name]["bias"])
        else:  # the fresh initialisation, biases included
            np.testing.assert_array_equal(np.asarray(w)[m], np.asarray(fresh[name]["kernel"])[m])
            np.testing.assert_array_equal(new_p[name]["bias"], fresh[name]["bias"])
        if how in ("shuffle_weights", "reinit"):
            np.testing.assert_array_equal(m, old_m)
        else:
            assert not np.array_equal(m, old_m)
        if how == "shuffle_weights":
            assert not np.array_equal(w, old_w)
        if how == "shuffle_layer":  # values move with their mask bits
            moved = {float(v) for v in np.asarray(w)[m]}
            assert moved == {float(v) for v in np.asarray(old_w)[old_m]}


def test_modify_masks_is_a_uniform_shuffle_and_reproducible():
    w = jnp.arange(1.0, 7.0)
    masks = {"w": jnp.array([True, False, True, True, False, True])}
    first = [pruning.modify_masks(jax.random.key(s), {"w": w}, masks, "shuffle_weights")[0]["w"]
             for s in range(400)]
    again = pruning.modify_masks(jax.random.key(3), {"w": w}, masks, "shuffle_weights")[0]["w"]
    np.testing.assert_array_equal(first[3], again)
    # Position 0 gets each of the 4 survivors about a quarter of the time.
    counts = np.unique(np.asarray([float(f[0]) for f in first]), return_counts=True)
    assert counts[0].tolist() == [1.0, 3.0, 4.0, 6.0] and counts[1].min() > 60


def test_modify_masks_rejects_bad_input():
    p, masks = _pruned()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="how"):
        pruning.modify_masks(key, p, masks, "shuffle")
    with pytest.raises(ValueError, match="needs init_params"):
        pruning.modify_masks(key, p, masks, "reinit")
    with pytest.raises(ValueError, match="ignored"):
        pruning.modify_masks(key, p, masks, "shuffle_layer", init_params=params(1))
    with pytest.raises(ValueError, match="shape"):
        pruning.modify_masks(key, p, {**masks, "Dense_0": {"kernel": jnp.ones((3, 3), bool),
                                                           "bias": None}}, "shuffle_layer")
    wrong = {**params(1), "Dense_1": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(10)}}
    with pytest.raises(ValueError, match="init_params"):
        pruning.modify_masks(key, p, masks, "reinit", init_params=wrong)
