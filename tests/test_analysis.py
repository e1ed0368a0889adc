"""Analysis: frame potential, subspaces, spectra, clustering, dynamics, ranking distance, cycles."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import randjax
from randjax import analysis, data, models
from randjax.analysis import cycles, ranking_distance


def test_ranking_distance_by_hand():
    prev = jnp.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    now = jnp.array([[3.0, 10.0], [2.0, 20.0], [1.0, 30.0]])
    # Column 0 reverses (|d| = 2, 0, 2), column 1 keeps its order (0, 0, 0).
    mean, std = ranking_distance(prev, now)
    np.testing.assert_allclose([mean, std], [4 / 6, np.std([2, 0, 2, 0, 0, 0])], rtol=1e-6)
    # Conv layout: vectors are the (h, w, in) entries of each output filter.
    conv_prev, conv_now = prev.reshape(1, 3, 1, 2), now.reshape(1, 3, 1, 2)
    np.testing.assert_allclose(ranking_distance(conv_prev, conv_now), (mean, std))
    # A 1-D array is one vector: a cyclic shift by one of 4 moves ranks 1, 1, 1, 3.
    mean, std = ranking_distance(jnp.arange(4.0), jnp.array([3.0, 0.0, 1.0, 2.0]))
    np.testing.assert_allclose([mean, std], [1.5, np.std([3, 1, 1, 1])], rtol=1e-6)
    assert float(ranking_distance(prev, prev)[0]) == 0.0


def test_ranking_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        ranking_distance(jnp.ones((2, 3)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="non-empty"):
        ranking_distance(jnp.ones((0, 3)), jnp.ones((0, 3)))


def test_cycles_by_hand():
    assert cycles([0, 1, 2]) == [(0,), (1,), (2,)]
    assert cycles([1, 2, 0]) == [(0, 1, 2)]
    assert cycles(np.array([1, 0, 3, 2])) == [(0, 1), (2, 3)]
    assert cycles([4, 3, 0, 1, 2]) == [(0, 4, 2), (1, 3)]
    assert cycles([]) == []
    for bad in ([0, 0], [[0, 1]], [0.0, 1.0], [1, 2]):
        with pytest.raises(ValueError, match="permutation"):
            cycles(bad)


# --------------------------------------------------------------------------- #
# Frame potential, subspaces, spectra, clustering, the dynamics hook



def _direct_fp(w_rows: np.ndarray, n: int) -> float:
    """The reference's definition: normalised rows, trace(T T) / N^2."""
    norms = np.linalg.norm(w_rows, axis=1, keepdims=True)
    v = w_rows / np.maximum(norms, 1e-12)
    t = v @ v.T
    return float(np.trace(t @ t) / n**2)


def test_frame_potential_matches_the_direct_definition():
    w = np.asarray(jax.random.normal(jax.random.key(0), (20, 12)), np.float64)
    w[:, 3] = 0.0  # a pruned unit still counts in N
    np.testing.assert_allclose(analysis.frame_potential(w), _direct_fp(w.T, 12), rtol=1e-5)
    # Conv kernel (h, w, in, out): filters flattened over (h, w, in); Equinox layout axis=0.
    conv = np.asarray(jax.random.normal(jax.random.key(1), (3, 3, 4, 6)))
    rows = np.moveaxis(conv, -1, 0).reshape(6, -1)
    np.testing.assert_allclose(analysis.frame_potential(conv), _direct_fp(rows, 6), rtol=1e-5)
    np.testing.assert_allclose(analysis.frame_potential(np.moveaxis(conv, -1, 0), axis=0),
                               _direct_fp(rows, 6), rtol=1e-5)
    assert float(analysis.frame_potential(np.eye(5))) == pytest.approx(0.2)
    assert float(analysis.frame_potential(np.ones((4, 5)))) == pytest.approx(1.0)
    # Without normalisation (the reference's fp_mod) scale matters.
    assert float(analysis.frame_potential(2 * np.eye(5), normalize=False)) == pytest.approx(3.2)


def test_leave_one_out_fp_matches_zeroing_each_unit():
    w = np.array(jax.random.normal(jax.random.key(2), (30, 16)))
    w[:, 5] = 0.0
    expected = [_direct_fp(np.where(np.arange(16)[:, None] == i, 0.0, w.T), 16)
                for i in range(16)]
    got = jax.jit(analysis.leave_one_out_fp)(w)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(got[5]) == pytest.approx(float(analysis.frame_potential(w)))


def test_unit_functions_reject_bad_input():
    with pytest.raises(ValueError, match="ndim >= 2"):
        analysis.frame_potential(jnp.ones(4))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        analysis.leave_one_out_fp(jnp.ones((3, 4)), axis=2)
    with pytest.raises(ValueError, match="exceeds the rank"):
        analysis.low_rank(jnp.ones((5, 3)), 4)
    with pytest.raises(ValueError, match="k must be"):
        analysis.low_rank(jnp.ones((5, 3)), -1)
    with pytest.raises(ValueError, match="shapes differ"):
        analysis.project_update(jnp.ones((5, 3)), jnp.ones((3, 5)), 1)
    with pytest.raises(ValueError, match="exceeds the layer's 3 units"):
        analysis.cluster_angles(np.ones((5, 3)), 4)
    with pytest.raises(ValueError, match="zero"):
        analysis.cluster_angles(np.zeros((5, 3)), 2)


def test_low_rank_project_update_and_spectrum_agree_with_numpy():
    w = np.asarray(jax.random.normal(jax.random.key(3), (40, 12)), np.float32)
    w0 = np.asarray(jax.random.normal(jax.random.key(4), (40, 12)), np.float32)
    u, s, vt = np.linalg.svd(w.T, full_matrices=False)  # rows are units
    for k in (0, 1, 5, 12):
        np.testing.assert_allclose(analysis.low_rank(w, k), ((u[:, :k] * s[:k]) @ vt[:k]).T,
                                   atol=1e-4)
    np.testing.assert_allclose(analysis.low_rank(w, 12), w, atol=1e-4)
    np.testing.assert_allclose(analysis.project_update(w, w0, 12), w, atol=1e-4)
    np.testing.assert_allclose(analysis.project_update(w, w0, 0), w0)
    np.testing.assert_allclose(analysis.spectrum(w), s**2, rtol=1e-4)
    # Conv kernels: the spectrum of the (out, h*w*in) unit matrix, either layout.
    conv = np.asarray(jax.random.normal(jax.random.key(5), (3, 3, 2, 4)))
    expected = np.linalg.svd(np.moveaxis(conv, -1, 0).reshape(4, -1), compute_uv=False) ** 2
    np.testing.assert_allclose(analysis.spectrum(conv), expected, rtol=1e-4)
    np.testing.assert_allclose(analysis.spectrum(np.moveaxis(conv, -1, 0), axis=0), expected,
                               rtol=1e-4)
    assert analysis.low_rank(conv, 2).shape == conv.shape


def test_cluster_angles_are_small_for_clustered_units():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 50))
    clustered = (np.repeat(centres, 10, axis=0) + 0.05 * rng.normal(size=(30, 50))).T
    spread = rng.normal(size=(50, 30))
    tight = analysis.cluster_angles(clustered, 3)
    loose = analysis.cluster_angles(spread, 3)
    assert tight.shape == (30,) and tight.max() < 10
    assert np.median(loose) > 40


def test_weight_profile_and_distance():
    w = jnp.arange(10.0).reshape(5, 2)
    np.testing.assert_allclose(analysis.weight_profile(w, 3), [0.0, 4.5, 9.0])
    assert float(analysis.distance_from_init(w, w + 1)) == pytest.approx(np.sqrt(10))
    with pytest.raises(ValueError, match="non-empty"):
        analysis.weight_profile(jnp.ones((0, 3)))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("points", [2, 7, 33])
def test_weight_profile_is_jnp_quantile(points, jit):
    # Ties, both zeros and negatives, as a trained or pruned layer has them.
    rng = np.random.default_rng(points)
    w = rng.normal(size=(97, 13)).astype(np.float32)
    w[rng.random(w.shape) < 0.2] = 0.0
    w[:5] = -0.0
    w[5:9] = w[9:13]
    profile = (jax.jit(analysis.weight_profile, static_argnums=1) if jit
               else analysis.weight_profile)(w, points)
    expected = jnp.quantile(jnp.asarray(w).ravel(), jnp.linspace(0.0, 1.0, points))
    chex.assert_shape(profile, (points,))
    np.testing.assert_allclose(profile, expected, rtol=1e-6, atol=1e-7)


def test_dynamics_hook_records_every_kernel_inside_fit():
    dataset = data.load("digits", val_fraction=0.0)
    model = models.get("lenet300_100", num_classes=10)
    initial = model.init(randjax.train.model_key(0),
                         jnp.zeros((1, *dataset.input_shape)))["params"]
    hook = analysis.dynamics_hook(randjax.dense(), initial, spectra=True, profile_points=5)
    steps = randjax.train.epoch_steps(len(dataset.train.y), 128)
    result = randjax.fit(model, dataset, optax.sgd(0.05), epochs=2, batch_size=128,
                         epoch_hook=hook, snapshot_steps=(steps,), progress=False)
    first, last = (r["dynamics"] for r in result.history)
    assert set(last) == {"Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"}
    final = result.state.trainable["Dense_0"]["kernel"]
    layer = last["Dense_0/kernel"]
    assert layer["frame_potential"] == pytest.approx(float(analysis.frame_potential(final)),
                                                     rel=1e-5)
    assert layer["distance_from_init"] == pytest.approx(
        float(analysis.distance_from_init(final, initial["Dense_0"]["kernel"])), rel=1e-5)
    assert layer["distance_from_init"] > first["Dense_0/kernel"]["distance_from_init"] > 0
    assert len(layer["spectrum"]) == 64 and len(layer["profile"]) == 5  # 8x8 digits: 64 inputs
    # Epoch 2 against epoch 1: the ranks kept from the previous call.
    after_one = result.snapshots[steps]
    mean, std = ranking_distance(after_one.trainable["Dense_0"]["kernel"], final)
    np.testing.assert_allclose(layer["ranking_distance"], [mean, std], rtol=1e-5)
    mean, std = ranking_distance(initial["Dense_0"]["kernel"],
                                 after_one.trainable["Dense_0"]["kernel"])
    np.testing.assert_allclose(first["Dense_0/kernel"]["ranking_distance"], [mean, std],
                               rtol=1e-5)
    assert mean > 0
    assert (first["Dense_0/kernel"]["ranking_since"], layer["ranking_since"]) == (0, 1)
    with pytest.raises(ValueError, match="selects no leaf"):
        analysis.dynamics_hook(randjax.dense(), {"b": jnp.ones(3)})
    with pytest.raises(ValueError, match="every"):
        analysis.dynamics_hook(randjax.dense(), initial, every=0)


def test_dynamics_hook_axis_0_measures_transposed_kernels_alike():
    rng = np.random.default_rng(5)
    w0, w1 = (jnp.asarray(rng.normal(size=(7, 4)), jnp.float32) for _ in range(2))
    state = lambda w: randjax.train.TrainState(0, {"Dense_0": {"kernel": w}}, {}, {}, None)
    flax_hook = analysis.dynamics_hook(randjax.dense(), {"Dense_0": {"kernel": w0}},
                                       spectra=True)
    torch_hook = analysis.dynamics_hook(randjax.dense(), {"Dense_0": {"kernel": w0.T}},
                                        spectra=True, axis=0)
    flax = flax_hook(1, state(w1))["dynamics"]["Dense_0/kernel"]
    torch = torch_hook(1, state(w1.T))["dynamics"]["Dense_0/kernel"]
    assert flax.keys() == torch.keys()
    for key in flax:
        np.testing.assert_allclose(torch[key], flax[key], rtol=1e-5, err_msg=key)


def test_dynamics_hook_every_other_epoch_ranks_since_its_last_record():
    params = {"Dense_0": {"kernel": jnp.arange(12.0).reshape(4, 3)}}
    rp = randjax.dense()
    hook = analysis.dynamics_hook(rp, params, every=2)
    state = lambda w: randjax.train.TrainState(0, {"Dense_0": {"kernel": w}}, {}, {}, None)
    reversed_rows = params["Dense_0"]["kernel"][::-1]
    assert hook(1, state(reversed_rows)) == {}
    second = hook(2, state(reversed_rows))["dynamics"]["Dense_0/kernel"]
    mean, std = ranking_distance(params["Dense_0"]["kernel"], reversed_rows)
    assert second["ranking_since"] == 0 and second["ranking_distance"] == [mean, std]
    assert hook(3, state(params["Dense_0"]["kernel"])) == {}
    fourth = hook(4, state(reversed_rows))["dynamics"]["Dense_0/kernel"]
    assert fourth["ranking_since"] == 2 and fourth["ranking_distance"] == [0.0, 0.0]


def test_frame_potential_of_equinox_layers_with_axis_0():
    # Equinox (and PyTorch) keep a unit's output first: (out, in, ...).
    eqx = pytest.importorskip("equinox")
    k1, k2 = jax.random.split(jax.random.key(0))
    linear = eqx.nn.Linear(20, 7, key=k1).weight                   # (7, 20)
    conv = eqx.nn.Conv2d(3, 5, 3, key=k2).weight                   # (5, 3, 3, 3)
    for w in (linear, conv):
        flax_layout = jnp.moveaxis(w, 0, -1)
        np.testing.assert_allclose(analysis.frame_potential(w, axis=0),
                                   analysis.frame_potential(flax_layout), rtol=1e-6)
        assert analysis.unit_vectors(w, axis=0).shape == (w.shape[0], w[0].size)
    # Units are rows: 7 orthonormal rows of a (7, 20) weight give 1/7.
    q = jnp.linalg.qr(jax.random.normal(k1, (20, 7)))[0].T
    np.testing.assert_allclose(analysis.frame_potential(q, axis=0), 1 / 7, rtol=1e-5)
