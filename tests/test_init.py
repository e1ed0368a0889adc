"""Initializers: names, fans, signed constants and their scaled variants."""

import math

import jax
import numpy as np
import pytest

import randjax
from randjax import init as init_lib

# --------------------------------------------------------------------------- #
# Initializers
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("shape, fan", [((64, 300), 64), ((3, 3, 16, 8), 144)])
def test_signed_constant_is_exactly_plus_minus_gain_over_sqrt_fan_in(shape, fan):
    w = np.asarray(init_lib.get("signed_constant")(jax.random.key(1), shape))
    value = np.float32(math.sqrt(2.0) / math.sqrt(fan))
    assert set(np.unique(w).tolist()) == {-value, value}
    # Signs are those of the Kaiming-normal draw with the same key.
    kaiming = np.asarray(init_lib.get("kaiming_normal")(jax.random.key(1), shape))
    np.testing.assert_array_equal(np.sign(w), np.sign(kaiming))
    scaled = np.asarray(init_lib.get("scaled_signed_constant", density=0.3)(
        jax.random.key(1), shape))
    np.testing.assert_array_equal(
        np.abs(scaled), np.float32(math.sqrt(2.0) / math.sqrt(fan * 0.3)))
    np.testing.assert_allclose(scaled, w / math.sqrt(0.3), rtol=1e-6)


def test_scaled_kaiming_normal_divides_by_sqrt_density():
    key, shape = jax.random.key(2), (3, 3, 8, 16)
    base = init_lib.get("kaiming_normal")(key, shape)
    for d in (1.0, 0.5, 0.1):
        scaled = init_lib.scaled_kaiming_normal(d)(key, shape)
        np.testing.assert_allclose(scaled, base / math.sqrt(d), rtol=1e-5)
    assert init_lib.get("kaiming_normal", density=0.5) is init_lib.get("kaiming_normal")


def test_bad_initializer_arguments():
    with pytest.raises(ValueError, match="unknown initializer 'nope'.*signed_constant"):
        init_lib.get("nope")
    for d in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
            init_lib.get("scaled_signed_constant", density=d)
    with pytest.raises(ValueError, match="ndim >= 2"):
        init_lib.signed_constant(jax.random.key(0), (5,))


def test_fans_in_jax_convention():
    assert init_lib.fans((784, 300)) == (784, 300)
    assert init_lib.fans((3, 3, 16, 32)) == (144, 288)
    assert init_lib.fan_in((5, 5, 32, 64)) == 800
    with pytest.raises(ValueError, match="ndim >= 2"):
        init_lib.fans((7,))


def test_registry_names_and_resolve():
    assert {"he_uniform", "kaiming_normal", "signed_constant", "pytorch_default",
            "scaled_signed_constant"} <= set(init_lib.names())
    for name in ("he_uniform", "kaiming_normal", "xavier_uniform"):
        assert init_lib.name_of(init_lib.get(name)) == name
    assert init_lib.name_of(init_lib.scaled_signed_constant(0.5)) is None  # made per call
    # The zoo's defaults are the registered objects, so models describe themselves by name.
    assert randjax.models.kaiming_normal is init_lib.get("kaiming_normal")
    assert randjax.models.he_uniform is init_lib.get("he_uniform")
    assert init_lib.resolve(None, "w") is None
    assert init_lib.resolve(init_lib.he_uniform, "w") is init_lib.he_uniform
    w = init_lib.resolve("scaled_signed_constant", "w", density=0.25)(jax.random.key(0), (4, 2))
    np.testing.assert_allclose(np.abs(w), math.sqrt(2.0) / math.sqrt(4 * 0.25))
    with pytest.raises(ValueError, match="w must be None, an initializer name"):
        init_lib.resolve(3, "w")


# --------------------------------------------------------------------------- #
# output_axis=0: Equinox / PyTorch kernels (out, in, ...)
# --------------------------------------------------------------------------- #

def _equinox_shapes():
    eqx = pytest.importorskip("equinox")
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"linear": eqx.nn.Linear(300, 100, key=k1).weight.shape,   # (100, 300)
            "conv": eqx.nn.Conv2d(32, 64, 3, key=k2).weight.shape}    # (64, 32, 3, 3)


def test_fans_of_equinox_linear_and_conv2d():
    shapes = _equinox_shapes()
    assert shapes == {"linear": (100, 300), "conv": (64, 32, 3, 3)}
    assert init_lib.fans(shapes["linear"], output_axis=0) == (300, 100)
    assert init_lib.fans(shapes["conv"], output_axis=0) == (288, 576)
    assert init_lib.fans((3, 3, 32, 64)) == init_lib.fans(shapes["conv"], output_axis=0)
    assert init_lib.fan_in(shapes["conv"], output_axis=0) == 288
    for bad in (1, -2, True, "0"):
        with pytest.raises(ValueError, match="output_axis must be -1"):
            init_lib.fans((3, 4), output_axis=bad)
    with pytest.raises(ValueError, match="output_axis must be -1"):
        init_lib.get("kaiming_normal", output_axis=2)


@pytest.mark.parametrize("name", ["kaiming_normal", "kaiming_uniform", "he_uniform",
                                  "pytorch_default", "lecun_normal", "signed_constant",
                                  "scaled_kaiming_normal", "scaled_signed_constant",
                                  "xavier_normal", "xavier_uniform"])
def test_every_initializer_reads_fans_from_the_equinox_layout(name):
    # The std of a draw in (out, in, kh, kw) with output_axis=0 is the std the
    # Flax layout (kh, kw, in, out) gets; the default layout misreads the fans
    # of an Equinox conv (fan_in 3 * 64 * 32 instead of 32 * 3 * 3).
    shape = _equinox_shapes()["conv"]
    flax_shape = (3, 3, 32, 64)
    key = jax.random.key(1)
    std = lambda init, s: float(np.std(np.asarray(init(key, s))))
    equinox = std(init_lib.get(name, density=0.5, output_axis=0), shape)
    flax = std(init_lib.get(name, density=0.5), flax_shape)
    misread = std(init_lib.get(name, density=0.5), shape)
    assert equinox == pytest.approx(flax, rel=0.05)
    assert abs(misread - flax) > 0.3 * flax
    assert init_lib.get(name, 0.5, output_axis=0)(key, shape).shape == shape


def test_signed_constant_of_an_equinox_conv_is_exact():
    shape = _equinox_shapes()["conv"]
    w = np.asarray(init_lib.get("signed_constant", output_axis=0)(jax.random.key(2), shape))
    np.testing.assert_allclose(np.unique(np.abs(w)), [math.sqrt(2.0 / 288)], rtol=1e-6)
    assert init_lib.resolve("he_uniform", "w", output_axis=0) is not init_lib.he_uniform
    assert init_lib.resolve("he_uniform", "w") is init_lib.he_uniform
