"""Tests of the model zoo (randjax.models): shapes, parameter counts, options."""

import functools
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from randjax import models

NAMES = [
    "conv13", "conv2", "conv4", "conv6", "conv7", "conv8", "f1", "f2",
    "lenet300_100", "mlp400x3", "resnet20", "resnet56", "vgg19", "wrn16_8",
]
BN_MODELS = ["conv13", "resnet20", "resnet56", "vgg19", "wrn16_8"]
SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]
KEY = jax.random.key(0)


def rkey(seed):
    """A key for dropout/init draws in tests: "rbg" compiles ~5x faster than
    threefry on CPU (the default impl is covered in `test_dropout`)."""
    return jax.random.key(seed, impl="rbg")


@functools.cache
def abstract_variables(name, shape, **options):
    """Shapes of the variables and output of ``name`` on a batch of 2 (no FLOPs)."""
    model = models.get(name, **options)
    out, variables = jax.eval_shape(
        lambda k: model.init_with_output(k, jnp.zeros((2, *shape))), KEY)
    return variables, out


def variables_of(name, shape=(8, 8, 1), **options):
    return abstract_variables(name, shape, **options)[0]


def leaves(tree, leaf_name):
    return {k: v for k, v in flatten_dict(dict(tree)).items() if k[-1] == leaf_name}


def n_kernel(variables):
    return sum(v.size for v in leaves(variables["params"], "kernel").values())


def is_bn(path):
    return any(p.startswith("BatchNorm") for p in path)


def test_names():
    assert models.names() == NAMES


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_all_inputs(name, shape):
    variables, out = abstract_variables(name, shape)
    assert out.shape == (2, 10)
    assert out.dtype == jnp.float32
    assert ("batch_stats" in variables) == (name in BN_MODELS)


def numpy_variables(name, shape=(8, 8, 1), **options):
    """Random variables of the right shapes without running ``model.init``
    (on this CPU every jitted random draw costs ~1 s of compilation)."""
    rng = np.random.default_rng(0)

    def fill(path, s):
        leaf = path[-1].key
        if leaf in ("scale", "var"):
            return rng.uniform(0.5, 1.5, s.shape)
        if leaf in ("bias", "mean"):
            return 0.1 * rng.standard_normal(s.shape)
        return rng.standard_normal(s.shape) / math.sqrt(math.prod(s.shape[:-1]))

    return jax.tree_util.tree_map_with_path(
        lambda p, s: jnp.asarray(fill(p, s), s.dtype), variables_of(name, shape, **options))


@pytest.mark.parametrize("name", NAMES)
def test_real_forward(name):
    """One real forward per model on a small input (eval mode, and train mode
    with BatchNorm and dropout where the model has them)."""
    model = models.get(name)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    variables = numpy_variables(name)
    y = model.apply(variables, x)
    chex.assert_shape(y, (2, 10))
    chex.assert_tree_all_finite(y)
    if name in BN_MODELS:
        # Train mode: batch statistics are used and the running averages move.
        y_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                       rngs={"dropout": rkey(2)})
        chex.assert_shape(y_train, (2, 10))
        chex.assert_tree_all_finite(y_train)
        assert not np.allclose(y, y_train)
        chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])
        old = jax.tree.leaves(variables["batch_stats"])
        new = jax.tree.leaves(updates["batch_stats"])
        assert all(not np.allclose(a, b) for a, b in zip(old, new))


@pytest.mark.parametrize("name", ["conv4", "resnet20"])
def test_jit_matches_eager(name):
    model = models.get(name)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    variables = numpy_variables(name)
    chex.assert_trees_all_close(model.apply(variables, x), jax.jit(model.apply)(variables, x),
                                rtol=1e-5, atol=1e-5)


# Kernel-only parameter counts, computed by hand:
#   lenet300_100 (28x28x1): 784*300 + 300*100 + 100*10                     =    266,200
#   mlp400x3     (28x28x1): 784*400 + 2*400*400 + 400*10                   =    637,600
#   f1 (28x28x1): 7,840;  f2 (28x28x1): 784*128 + 128*64 + 64*10           =    109,184
#   conv2 (32x32x3): 27*64 + 576*64 | 16384*256 + 256*256 + 256*10        =  4,300,992
#   conv4: convs 259,776 | 8192*256 + 65,536 + 2,560                       =  2,425,024
#   conv6: convs 1,144,512 | 4096*256 + 65,536 + 2,560                     =  2,261,184
#   conv8: convs 4,683,456 | 2048*256 + 65,536 + 2,560                     =  5,275,840
#   conv7 (28x28x1): 9*32 + 9*32*32 + 25*32*32 + 9*32*64 + 9*64*64
#                    + 25*64*64 + 16*64*128 + 128*10                       =    325,152
#   conv13 (32x32x3): 13 convs 14,710,464 + 512*512 + 512*10               = 14,977,728
#   vgg19: convs 27*64 + 576*64 + 576*128 + 1152*128 + 1152*256 + 3*2304*256
#          + 2304*512 + 7*4608*512 = 20,018,880; + 512*10                  = 20,024,000
#   resnet20: stem 432; stage1 6*2304 = 13,824; stage2 4,608 + 9,216 + 512
#             + 4*9,216 = 51,200; stage3 18,432 + 36,864 + 2,048 + 4*36,864
#             = 204,800; fc 640                                            =    270,896
#   resnet56: 432 + 18*2304 + (14,336 + 16*9,216) + (57,344 + 16*36,864) + 640
#                                                                          =    851,504
#   resnet20 with shortcut="padding": 270,896 - 512 - 2,048               =    268,336
#   wrn16_8: stem 432; stage1 16*128*9 + 128*128*9*3 + 16*128 = 462,848;
#            stage2 128*256*9 + 256*256*9*3 + 128*256 = 2,097,152;
#            stage3 256*512*9 + 512*512*9*3 + 256*512 = 8,388,608; fc 5,120 = 10,954,160
KERNEL_COUNTS = [
    ("lenet300_100", (28, 28, 1), {"use_bias": False}, 266_200),
    ("mlp400x3", (28, 28, 1), {}, 637_600),
    ("f1", (28, 28, 1), {}, 7_840),
    ("f2", (28, 28, 1), {}, 109_184),
    ("conv2", (32, 32, 3), {}, 4_300_992),
    ("conv4", (32, 32, 3), {}, 2_425_024),
    ("conv6", (32, 32, 3), {}, 2_261_184),
    ("conv8", (32, 32, 3), {}, 5_275_840),
    ("conv7", (28, 28, 1), {}, 325_152),
    ("conv13", (32, 32, 3), {}, 14_977_728),
    ("vgg19", (32, 32, 3), {}, 20_024_000),
    ("resnet20", (32, 32, 3), {}, 270_896),
    ("resnet20", (32, 32, 3), {"shortcut": "padding"}, 268_336),
    ("resnet56", (32, 32, 3), {}, 851_504),
    ("wrn16_8", (32, 32, 3), {}, 10_954_160),
]


@pytest.mark.parametrize("name,shape,options,count", KERNEL_COUNTS,
                         ids=[f"{n}-{c}" for n, _, _, c in KERNEL_COUNTS])
def test_kernel_counts(name, shape, options, count):
    variables = abstract_variables(name, shape, **options)[0]
    assert n_kernel(variables) == count


def test_lenet_without_bias_has_only_kernels():
    variables = variables_of("lenet300_100", (28, 28, 1), use_bias=False)
    shapes = [v.shape for v in jax.tree.leaves(variables["params"])]
    assert shapes == [(784, 300), (300, 100), (100, 10)]


@pytest.mark.parametrize("name", NAMES)
def test_width_scales_hidden_layers(name):
    """width=2 doubles every hidden width; input and output sizes stay."""
    k1 = leaves(variables_of(name, num_classes=7)["params"], "kernel")
    k2 = leaves(variables_of(name, num_classes=7, width=2.0)["params"], "kernel")
    assert k1.keys() == k2.keys()
    for i, (path, a) in enumerate(k1.items()):   # sorted: Conv_0 / Dense_0, the input layer, first
        b = k2[path].shape
        out = 7 if a.shape[-1] == 7 else 2 * a.shape[-1]
        assert b[-1] == out, (path, a.shape, b)
        assert b[-2] == (a.shape[-2] if i == 0 else 2 * a.shape[-2]), (path, a.shape, b)


def test_width_examples():
    params = variables_of("lenet300_100", (28, 28, 1), width=2.0, use_bias=False)["params"]
    assert [v.shape for v in jax.tree.leaves(params)] == [(784, 600), (600, 200), (200, 10)]
    params = variables_of("conv2", (32, 32, 3), width=0.5)["params"]
    assert [v.shape for v in jax.tree.leaves(params)] == [
        (3, 3, 3, 32), (3, 3, 32, 32), (16 * 16 * 32, 128), (128, 128), (128, 10)]
    # Rounded and at least 1.
    params = variables_of("f2", width=0.001)["params"]
    assert [v.shape for v in jax.tree.leaves(params)] == [(64, 1), (1, 1), (1, 10)]


def bias_paths(name, **options):
    return [k for k in leaves(variables_of(name, **options)["params"], "bias") if not is_bn(k)]


@pytest.mark.parametrize("name", NAMES)
def test_use_bias(name):
    n_layers = len(leaves(variables_of(name)["params"], "kernel"))
    assert len(bias_paths(name, use_bias=True)) == n_layers
    assert bias_paths(name, use_bias=False) == []


def test_bias_defaults():
    n_bias = {name: len(bias_paths(name)) for name in NAMES}
    for name in ["conv2", "conv4", "conv6", "conv8", "f1", "f2"]:
        assert n_bias[name] == 0
    for name in ["lenet300_100", "mlp400x3", "conv7", "conv13", "vgg19"]:
        assert n_bias[name] == len(leaves(variables_of(name)["params"], "kernel"))
    for name in ["resnet20", "resnet56", "wrn16_8"]:   # classifier only
        assert [p[0] for p in bias_paths(name)] == ["Dense_0"]


@pytest.mark.parametrize("name", [n for n in NAMES if n != "f1"])   # f1: no hidden layer
def test_batch_norm_option(name):
    with_bn = variables_of(name, batch_norm=True)
    without = variables_of(name, batch_norm=False)
    assert "batch_stats" in with_bn and "batch_stats" not in without
    assert any(is_bn(k) for k in flatten_dict(dict(with_bn["params"])))
    assert not any(is_bn(k) for k in flatten_dict(dict(without["params"])))


@pytest.mark.parametrize("name", ["conv4", "resnet20", "wrn16_8", "vgg19", "conv13"])
def test_bn_affine_false(name):
    variables = variables_of(name, batch_norm=True, bn_affine=False)
    assert not any(is_bn(k) for k in flatten_dict(dict(variables["params"])))
    stats = flatten_dict(dict(variables["batch_stats"]))
    assert stats and {k[-1] for k in stats} == {"mean", "var"}


def test_eval_uses_running_averages():
    """In eval mode an example's output does not depend on the rest of the batch."""
    model = models.get("resnet20")
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    variables = numpy_variables("resnet20")
    other = x.at[1].set(0.0)
    np.testing.assert_allclose(model.apply(variables, x)[0], model.apply(variables, other)[0],
                               rtol=1e-5, atol=1e-5)
    train = lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    assert not np.allclose(train(x)[0], train(other)[0])


@pytest.mark.parametrize("name,options", [
    ("lenet300_100", {"dropout": 0.5}),    # with the default (threefry) keys
    ("conv4", {"dropout": 0.5}),
    ("conv7", {}),                         # reference default 0.4
    ("conv13", {}),                        # reference default (0.3, 0.4, 0.5)
    ("resnet20", {"dropout": 0.3}),
    ("wrn16_8", {"dropout": 0.3}),
])
def test_dropout(name, options):
    model = models.get(name, **options)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    variables = numpy_variables(name, **options)

    key = jax.random.key if name == "lenet300_100" else rkey

    def train(seed):
        return model.apply(variables, x, train=True, rngs={"dropout": key(seed)},
                           mutable=["batch_stats"])[0]

    a, a2, b = train(3), train(3), train(4)
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


def test_dropout_off_needs_no_rng():
    model = models.get("conv4")
    x = jnp.ones((2, 8, 8, 1))
    model.apply(numpy_variables("conv4"), x, train=True)   # no "dropout" rng required
    with pytest.raises(Exception, match="dropout"):
        models.get("conv7").apply(numpy_variables("conv7"), x, train=True)


def test_default_initializers():
    key = jax.random.key(5)
    for name in NAMES:
        model = models.get(name)
        keras = name in ("conv7", "conv13")
        assert model.kernel_init is (models.he_uniform if keras else models.kaiming_normal), name
        open_lth = name in ("vgg19", "resnet20", "resnet56")
        scale = np.asarray(model.bn_scale_init(key, (1000,)))
        assert np.all((scale >= 0) & (scale < 1)) if open_lth else np.all(scale == 1), name
    # Kaiming-He normal, fan-in, untruncated.
    w = np.asarray(models.kaiming_normal(key, (3, 3, 64, 128)))
    std = math.sqrt(2 / (3 * 3 * 64))
    assert abs(w.std() / std - 1) < 0.02 and np.abs(w).max() > 3.5 * std
    # Keras he_uniform: U(+-sqrt(6 / fan_in)); a bias uses its own length as fan_in.
    w = np.asarray(models.he_uniform(key, (5, 5, 32, 64)))
    bound = math.sqrt(6 / (5 * 5 * 32))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    b = np.asarray(models.he_uniform(key, (64,)))
    assert np.abs(b).max() <= math.sqrt(6 / 64) and np.abs(b).max() > 0.8 * math.sqrt(6 / 64)


def test_initializers_reach_the_layers():
    """Real ``init``: each initializer option lands on its leaves, in float32."""
    fives = jax.nn.initializers.constant(5.0)
    model = models.get("conv2", width=0.125, use_bias=True, batch_norm=True,
                       kernel_init=jax.nn.initializers.ones, bias_init=fives,
                       bn_scale_init=jax.nn.initializers.zeros, dtype=jnp.bfloat16)
    variables = model.init(rkey(0), jnp.zeros((1, 8, 8, 1)))
    chex.assert_trees_all_equal_shapes(variables, variables_of(
        "conv2", (8, 8, 1), width=0.125, use_bias=True, batch_norm=True))
    for path, v in flatten_dict(dict(variables["params"])).items():
        assert v.dtype == jnp.float32
        want = 0.0 if is_bn(path) else {"kernel": 1.0, "bias": 5.0}[path[-1]]
        np.testing.assert_array_equal(v, want)
    assert model.apply(variables, jnp.ones((1, 8, 8, 1))).dtype == jnp.bfloat16


def test_padding_shortcut_has_no_parameters():
    params = variables_of("resnet20", shortcut="padding")["params"]
    shapes = [v.shape for k, v in leaves(params, "kernel").items()]
    assert all(s[:2] == (3, 3) or len(s) == 2 for s in shapes)


@pytest.mark.parametrize("name", NAMES)
def test_num_classes(name):
    assert abstract_variables(name, (8, 8, 1), num_classes=3)[1].shape == (2, 3)


def test_errors():
    with pytest.raises(ValueError, match="conv4.*lenet300_100"):
        models.get("lenet")
    with pytest.raises(TypeError, match="'depth'"):
        models.get("resnet20", depth=32)
    with pytest.raises(TypeError, match="'shortcut'"):
        models.get("conv4", shortcut="padding")
    with pytest.raises(ValueError, match="width"):
        models.get("conv4", width=0)
    with pytest.raises(ValueError, match="dropout"):
        models.get("lenet300_100", dropout=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        models.get("f1", num_classes=0)
    with pytest.raises(ValueError, match="shortcut"):
        models.get("resnet20", shortcut="identity")
    with pytest.raises(ValueError, match="3 rates"):
        models.get("conv13", dropout=(0.1, 0.2))
    with pytest.raises(ValueError, match="dropout"):
        models.get("conv13", dropout=(0.1, 0.2, 1.5))


@pytest.mark.parametrize("options, message", [
    (dict(use_bias="no"), "use_bias must be a Python bool, got 'no'"),
    (dict(batch_norm=1), "batch_norm must be a Python bool, got 1"),
    (dict(bn_affine=None), "bn_affine must be a Python bool, got None"),
    (dict(fast_conv_grad="yes"), "fast_conv_grad must be a Python bool"),
    (dict(bn_epsilon=-1e-5), r"bn_epsilon must be > 0 .*got -1e-05"),
    (dict(bn_epsilon=0.0), "bn_epsilon must be > 0"),
    (dict(bn_epsilon=float("nan")), "bn_epsilon must be a finite Python real"),
    (dict(bn_momentum=1.5), r"bn_momentum must be in \[0.0, 1.0\], got 1.5"),
    (dict(bn_momentum=-0.1), r"bn_momentum must be in \[0.0, 1.0\]"),
    (dict(width=float("inf")), "width must be a finite Python real"),
    (dict(width="1"), "width must be a finite Python real"),
    (dict(num_classes=True), "num_classes must be a Python int >= 1, got True"),
    (dict(num_classes=10.0), "num_classes must be a Python int >= 1, got 10.0"),
    (dict(dropout="0.1"), "dropout must be a finite Python real"),
    (dict(dropout=(0.1, 0.2, 0.3)), "dropout must be one rate in"),
    (dict(kernel_init="he_uniform"), "kernel_init must be a callable init"),
    (dict(bias_init=None), "bias_init must be a callable init"),
    (dict(bn_scale_init=1.0), "bn_scale_init must be a callable init"),
    (dict(dtype=jnp.int32), "dtype must be a floating dtype"),
    (dict(dtype="no-such-dtype"), "dtype must be a floating dtype"),
])
def test_every_option_is_checked_when_built(options, message):
    with pytest.raises(ValueError, match=message):
        models.get("conv4", **options)
    with pytest.raises(ValueError, match=message):  # direct construction checks too
        models.Conv4(**options)


def test_option_checks_of_the_families():
    with pytest.raises(ValueError, match="use_bias must be a Python bool, got 'no'"):
        models.get("resnet20", use_bias="no")
    assert models.get("resnet20", use_bias=None).use_bias is None  # the family's choice
    with pytest.raises(ValueError, match="features must be a Python int >= 1"):
        models.BasicBlock(features=0)
    with pytest.raises(ValueError, match="strides must be a Python int >= 1"):
        models.WideBlock(strides=1.0)
    with pytest.raises(ValueError, match="unknown model 3"):
        models.get(3)
    with pytest.raises(ValueError, match="unknown model"):
        models.get(["conv4"])
    assert models.get("conv13", dropout=(0.1, 0.2, 0.3)).dropout == (0.1, 0.2, 0.3)
    assert models.get("conv4", dtype=None, bn_momentum=0, bn_epsilon=1e-3).dtype is None


def test_bn_momentum_one_warns_that_statistics_never_update():
    with pytest.warns(UserWarning, match="bn_momentum=1.0 never updates"):
        models.get("resnet20", bn_momentum=1.0)


def test_spec_describes_a_zoo_model_by_name_and_options():
    model = models.get("conv4", width=0.5, kernel_init=models.he_uniform, dtype=jnp.bfloat16,
                       use_bias=True)
    spec = models.spec(model)
    assert spec == {"model": "conv4", "options": {
        "width": 0.5, "kernel_init": {"initializer": "he_uniform"},
        "dtype": {"dtype": "bfloat16"}, "use_bias": True}}
    assert json.loads(json.dumps(spec)) == spec
    assert models.from_spec(spec) == model
    assert models.spec(models.get("lenet300_100")) == {"model": "lenet300_100", "options": {}}
    with pytest.raises(ValueError, match="not a registered initializer"):
        models.spec(models.get("conv4", kernel_init=lambda k, s, d=jnp.float32: None))
    with pytest.raises(ValueError, match="is not a randjax.models zoo model"):
        models.spec(nn.Dense(3))
