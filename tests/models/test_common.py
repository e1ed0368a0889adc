"""Tests of `randjax.models.common.conv_general_dilated`: the conv whose kernel
gradient is computed with matmuls on CPU must match
``lax.conv_general_dilated`` exactly in the forward pass and to float tolerance
in both gradients, and fall back to lax for what it does not handle."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict
from jax import lax

from randjax import models
from randjax.models.common import conv_general_dilated as fast_conv

NHWC = ("NHWC", "HWIO", "NHWC")
PADDINGS = {"same": "SAME", "valid": "VALID", "asym": ((0, 1), (1, 0)),
            "resnet": ((1, 1), (1, 1))}


def uses_fast_path(f, *args):
    return "name=_fast_conv" in str(jax.make_jaxpr(f)(*args))


def outputs(conv, x, w, dn=NHWC, **kw):
    """The conv's output and the gradients of a nonlinear loss of it wrt x and w."""
    f = lambda x, w: conv(x, w, dimension_numbers=dn, **kw)
    return f(x, w), jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1))(x, w)


def assert_match(fast, ref, msg=""):
    """Forward bitwise equal to lax; gradients wrt input and kernel close."""
    (y, grads), (y_ref, grads_ref) = fast, ref
    np.testing.assert_array_equal(y, y_ref, err_msg=msg)
    for g, g_ref in zip(grads, grads_ref):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype, msg
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5, err_msg=msg)


def check(x, w, dn=NHWC, jit=True, **kw):
    run = lambda conv: outputs(conv, x, w, dn, **kw)
    both = lambda: (run(fast_conv), run(lax.conv_general_dilated))
    assert_match(*(jax.jit(both)() if jit else both()))


def randn(seed, shape, dtype=jnp.float32):
    # numpy, not jax.random: on CPU each new shape of a jax draw compiles (~1 s)
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


# kernel size x stride x padding, on odd 7x9 inputs with 3 -> 4 channels
CONFIGS = list(itertools.product((1, 3, 5, 4), (1, 2), PADDINGS))


def config_args(i):
    k, s, pad = CONFIGS[i]
    batch = (1, 3)[i % 2]
    x, w = randn(i, (batch, 7, 9, 3)), randn(i + 1000, (k, k, 3, 4))
    return x, w, dict(window_strides=(s, s), padding=PADDINGS[pad])


def test_gradients_match_lax_jit():
    # every config in one jitted function: one compilation instead of dozens
    args = [config_args(i) for i in range(len(CONFIGS))]
    for x, w, kw in args:
        conv = lambda x, w, kw=kw: fast_conv(x, w, dimension_numbers=NHWC, **kw)
        assert uses_fast_path(conv, x, w)

    @jax.jit
    def run(xws):
        return [(outputs(fast_conv, x, w, **kw), outputs(lax.conv_general_dilated, x, w, **kw))
                for (x, w), (_, _, kw) in zip(xws, args)]

    for config, (fast, ref) in zip(CONFIGS, run([(x, w) for x, w, _ in args])):
        assert_match(fast, ref, f"kernel, stride, padding = {config}")


@pytest.mark.parametrize("i", [CONFIGS.index(c) for c in [(3, 1, "same"), (4, 2, "asym")]])
def test_gradients_match_lax_eager(i):
    x, w, kw = config_args(i)
    check(x, w, jit=False, **kw)


@pytest.mark.parametrize("platform,channels,convs,dots", [
    ("cpu", 3, 1, 1), ("cpu", 32, 1, 3), ("cuda", 3, 2, 0), ("tpu", 3, 2, 0)])
def test_platforms(platform, channels, convs, dots):
    """The kernel gradient is matmuls when compiled for CPU (one per kernel
    row, one for all nine taps of a 3-channel input), XLA's conv elsewhere
    (the forward conv is the other convolution)."""
    grad = jax.jit(jax.grad(lambda w, x: jnp.sum(
        fast_conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2)))
    x, w = randn(0, (2, 7, 9, channels)), randn(1, (3, 3, channels, 4))
    hlo = jax.export.export(grad, platforms=[platform])(w, x).mlir_module()
    assert hlo.count("stablehlo.convolution") == convs
    assert hlo.count("stablehlo.dot_general") == dots


@pytest.mark.parametrize("platform,swapped", [("cpu", False), ("cuda", True), ("tpu", True)])
def test_input_gradient_platforms(platform, swapped):
    """On CPU the input gradient is a plain conv with the flipped kernel's
    channels transposed (XLA:CPU runs XLA's own, whose dimension numbers
    swap them, several times slower inside a loop); XLA's own elsewhere."""
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(
        fast_conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2)))
    x, w = randn(0, (2, 7, 9, 3)), randn(1, (3, 3, 3, 4))
    hlo = jax.export.export(grad, platforms=[platform])(x, w).mlir_module()
    assert hlo.count("stablehlo.convolution") == 2
    assert ("x[0, 1, o, i]" in hlo) is swapped
    assert ("stablehlo.transpose" in hlo) is not swapped


@pytest.mark.parametrize("batch,strides,groups", [(6, (1, 1), 3), (7, (1, 2), 7)])
def test_kernel_gradient_over_several_batch_groups(batch, strides, groups):
    # 40x40 outputs: the matmuls run over groups of 2 images (6), or of one
    # image (7, prime), in a loop whose sums must add up to lax's gradient.
    # Sums of ~10,000 products: float32 tolerance relative to the largest.
    x, w = randn(0, (batch, 40, 40, 5)), randn(1, (3, 2, 5, 6))
    kw = dict(window_strides=strides, padding="SAME")
    kernel_grad = jax.grad(lambda w: jnp.sum(fast_conv(x, w, dimension_numbers=NHWC, **kw)))
    assert scan_lengths(jax.make_jaxpr(kernel_grad)(w).jaxpr) == [groups]
    (_, grads), (_, grads_ref) = jax.jit(lambda: (outputs(fast_conv, x, w, **kw),
                                                  outputs(lax.conv_general_dilated, x, w, **kw)))()
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-5 * float(jnp.abs(g_ref).max()))


def scan_lengths(jaxpr) -> list[int]:
    """The lengths of every loop over a static range (`lax.fori_loop`) in ``jaxpr``."""
    found = [eqn.params["length"] for eqn in jaxpr.eqns if eqn.primitive.name == "scan"]
    for eqn in jaxpr.eqns:
        for inner in jax.extend.core.jaxprs_in_params(eqn.params):
            found += scan_lengths(inner)
    return found


def test_negative_padding():
    x, w = randn(0, (2, 7, 9, 3)), randn(1, (3, 3, 3, 4))
    check(x, w, window_strides=(2, 1), padding=((-1, 0), (0, 1)))


@pytest.mark.parametrize("strides,padding", [((2, 1), "SAME"), ((1, 3), ((2, 0), (0, 2))),
                                             ((1, 1), "SAME_LOWER")])
def test_rectangular_and_mixed(strides, padding):
    x, w = randn(0, (2, 7, 9, 3)), randn(1, (2, 3, 3, 5))
    check(x, w, window_strides=strides, padding=padding)


@pytest.mark.parametrize("nd", [1, 3])
def test_other_spatial_ranks(nd):
    dn = {1: ("NWC", "WIO", "NWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[nd]
    x, w = randn(0, (2, *(5, 6, 7)[:nd], 3)), randn(1, (*(3, 2, 3)[:nd], 3, 4))
    kw = dict(window_strides=(2,) * nd, padding="SAME")
    assert uses_fast_path(lambda x, w: fast_conv(x, w, dimension_numbers=dn, **kw), x, w)
    check(x, w, dn=dn, **kw)


def test_empty_output():
    x, w = randn(0, (2, 2, 2, 3)), randn(1, (3, 3, 3, 4))
    check(x, w, window_strides=(1, 1), padding="VALID")


def test_bfloat16_kernel_gradient():
    x, w = randn(0, (3, 9, 9, 16)), randn(1, (3, 3, 16, 8))
    loss = lambda conv, x, w: jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC) ** 2)
    ref = jax.jit(jax.grad(lambda w: loss(lax.conv_general_dilated, x, w)))(w)
    g = jax.jit(jax.grad(lambda w: loss(fast_conv, x.astype(jnp.bfloat16),
                                        w.astype(jnp.bfloat16))))(w)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, ref, rtol=0.05, atol=0.05 * float(jnp.abs(ref).max()))


def test_vmap_of_grad():
    x, w = randn(0, (4, 1, 6, 6, 2)), randn(1, (3, 3, 2, 3))
    grads = {c: jax.jit(jax.vmap(jax.grad(lambda w, x, c=c: jnp.sum(jnp.sin(
        c(x, w, (2, 2), "SAME", dimension_numbers=NHWC)))), (None, 0)))(w, x)
        for c in (fast_conv, lax.conv_general_dilated)}
    np.testing.assert_allclose(grads[fast_conv], grads[lax.conv_general_dilated],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(rhs_dilation=(2, 2)),
    dict(lhs_dilation=(2, 1), padding=((1, 1), (1, 1))),
    dict(feature_group_count=2),
    dict(batch_group_count=2),
    dict(dimension_numbers=("NCHW", "OIHW", "NCHW")),
    dict(dimension_numbers=None),
    dict(preferred_element_type=jnp.float32),
], ids=["rhs_dilation", "lhs_dilation", "groups", "batch_groups", "nchw", "no_dn", "pet"])
def test_fallbacks(kw):
    kw = {"dimension_numbers": NHWC, **kw}
    dn = lax.conv_dimension_numbers((4, 4, 4, 4), (4, 4, 4, 4), kw["dimension_numbers"])
    # channels at the lhs / rhs positions the layout names; 4 input channels
    # (2 per group), 4 output channels; batch 4 (2 per batch group)
    x_shape, w_shape = [6] * 4, [3] * 4
    x_shape[dn.lhs_spec[0]], x_shape[dn.lhs_spec[1]] = 4, 4
    w_shape[dn.rhs_spec[0]] = 4
    w_shape[dn.rhs_spec[1]] = 4 // kw.get("feature_group_count", 1)
    x, w = randn(0, tuple(x_shape)), randn(1, tuple(w_shape))
    conv_kw = dict(window_strides=(1, 1), padding="SAME") | kw
    assert not uses_fast_path(lambda x, w: fast_conv(x, w, **conv_kw), x, w)
    dn_arg = conv_kw.pop("dimension_numbers")
    check(x, w, dn=dn_arg, **conv_kw)


@pytest.mark.parametrize("name,shape", [("conv2", (16, 16, 3)), ("resnet20", (8, 8, 3))])
def test_zoo_model_gradients(name, shape):
    """The same loss and loss gradient with and without ``fast_conv_grad``."""
    x = randn(0, (3, *shape))
    y = jnp.arange(3)
    built = {fast: models.get(name, width=0.25, fast_conv_grad=fast) for fast in (True, False)}
    # random variables of the right shapes, without compiling `init`: kernels
    # of std 1/sqrt(fan_in), BatchNorm scales and variances around 1
    rng = np.random.default_rng(1)

    def fill(path, s):
        if path[-1].key in ("scale", "var"):
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
        fan_in = math.prod(s.shape[:-1]) if path[-1].key == "kernel" else 10
        return jnp.asarray(rng.standard_normal(s.shape) / math.sqrt(fan_in), s.dtype)

    variables = jax.tree_util.tree_map_with_path(
        fill, jax.eval_shape(built[True].init, jax.random.key(0), x))
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss(model):
        def f(params):
            out = model.apply({"params": params, **rest}, x, train=True,
                              mutable=list(rest) or False)
            logits = out[0] if rest else out
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
        return f

    assert uses_fast_path(loss(built[True]), params)
    assert not uses_fast_path(loss(built[False]), params)
    both = jax.jit(lambda p: [jax.value_and_grad(loss(built[fast]))(p) for fast in (True, False)])
    (l_fast, g_fast), (l_slow, g_slow) = both(params)
    np.testing.assert_array_equal(l_fast, l_slow)
    conv_kernels = [g for p, g in flatten_dict(g_slow).items() if p[-2].startswith("Conv")]
    assert conv_kernels and all(float(jnp.abs(g).max()) > 1e-3 for g in conv_kernels)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 g_fast, g_slow)


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (3, 8, 8, 5), (2, 1, 6, 2), (1, 4, 1, 1)])
@pytest.mark.parametrize("use_jit", [False, True])
def test_max_pool_matches_flax_values_and_gradients_bitwise(shape, use_jit):
    from randjax.models.common import max_pool

    def flax_pool(x):
        w = tuple(min(2, s) for s in x.shape[1:3])
        return nn.max_pool(x, w, strides=w)

    x = jax.random.normal(jax.random.key(0), shape)
    for inputs in (x, jnp.round(jax.nn.relu(x) * 2)):  # the second is full of ties
        grads = [jax.grad(lambda x, f=f: jnp.sum(jnp.sin(f(x))))
                 for f in (max_pool, flax_pool)]
        if use_jit:
            grads = [jax.jit(g) for g in grads]
        np.testing.assert_array_equal(max_pool(inputs), flax_pool(inputs))
        np.testing.assert_array_equal(grads[0](inputs), grads[1](inputs))
