"""`fit` trains every JAX model API: one small CNN in Linen, NNX and Equinox.

The network (conv 3x3, 8 filters -> ReLU -> 2x2 max-pool -> dense 10, on the
8x8 digits) is written four times: a Linen module whose ``__call__`` takes
``train`` (the zoo's convention), a Linen module without it (flax's
``examples/mnist`` CNN convention), an ``nnx.Module`` and an Equinox module
given to `fit` as functions (`randjax.models.from_functions` over
``eqx.partition``). Every model draws its kernels as Linen does (LeCun
normal, zero biases), each from its own random stream.

Accuracies (test split of digits, fit seed 0, last epoch) are stated in
`METHODS`: each API reaches the Linen model's accuracy minus ``margin``
and the absolute ``floor``. Equinox keeps a unit's output on the FIRST
axis (``(out, in, kh, kw)``, ``(out, in)``) and its conv bias as
``(out, 1, 1)``; the methods get its layout from the test: the leaves
named ``weight`` are the ones a method selects (`randjax.is_kernel` would
pick the ``(8, 1, 1)`` bias too), edge-popup's scores are drawn with
Equinox's fan-in (`equinox_fan_in_uniform`) and LaPerm gets
``output_axis=0`` (its weight vectors: all weights of one output unit).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import randjax
from randjax.models import as_model, from_functions
from randjax.train import cross_entropy, model_key

FEATURES, CLASSES, BATCH = 8, 10, 64
INPUT = (8, 8, 1)
STEPS_PER_EPOCH = math.ceil(1294 / BATCH)   # digits' default train split: 20 full + 1


# --------------------------------------------------------------------------- #
# The same CNN in every API
# --------------------------------------------------------------------------- #

class LinenCNN(nn.Module):
    """The zoo's convention: ``__call__(x, train)``; optional BatchNorm."""

    batch_norm: bool = False
    num_classes: int = CLASSES

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(FEATURES, (3, 3))(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


class FlaxExampleCNN(nn.Module):
    """flax ``examples/mnist``'s convention: ``__call__(x)``, no ``train``."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(features=FEATURES, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(features=CLASSES)(x)


class NnxCNN(nnx.Module):
    """The CNN in NNX; optional BatchNorm (as `LinenCNN`'s) and dropout before the dense."""

    def __init__(self, rngs: nnx.Rngs, *, batch_norm=False, dropout=0.0,
                 num_classes=CLASSES, groups=1):
        self.conv = nnx.Conv(1, FEATURES, (3, 3), rngs=rngs)
        self.bn = (nnx.BatchNorm(FEATURES, momentum=0.9, epsilon=1e-5, rngs=rngs)
                   if batch_norm else None)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout else None
        self.dense = nnx.Linear(FEATURES * 16, num_classes * groups, rngs=rngs)
        self.groups = groups

    def __call__(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        x = nnx.max_pool(nnx.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.dense(x)
        return x if self.groups == 1 else x.reshape((x.shape[0], self.groups, -1))


class EquinoxCNN(eqx.Module):
    """The CNN in Equinox: channels first, weights ``(out, in, ...)``, one example."""

    conv: eqx.nn.Conv2d
    dense: eqx.nn.Linear

    def __init__(self, key):
        conv_key, dense_key, init_key = jax.random.split(key, 3)
        conv = eqx.nn.Conv2d(1, FEATURES, 3, padding=1, key=conv_key)
        dense = eqx.nn.Linear(FEATURES * 16, CLASSES, key=dense_key)
        # Kernels drawn as Linen draws them (LeCun normal over the fan-in, zero biases).
        k1, k2 = jax.random.split(init_key)
        lecun = jax.nn.initializers.lecun_normal
        self.conv = eqx.tree_at(
            lambda c: (c.weight, c.bias), conv,
            (lecun(in_axis=(1, 2, 3), out_axis=0)(k1, conv.weight.shape),
             jnp.zeros_like(conv.bias)))
        self.dense = eqx.tree_at(
            lambda d: (d.weight, d.bias), dense,
            (lecun(in_axis=1, out_axis=0)(k2, dense.weight.shape), jnp.zeros_like(dense.bias)))

    def __call__(self, x):
        x = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(self.conv(x)))
        return self.dense(x.reshape(-1))


_EQX_STATIC = eqx.partition(EquinoxCNN(jax.random.key(0)), eqx.is_inexact_array)[1]


def equinox_init(key, x):
    del x
    return eqx.partition(EquinoxCNN(key), eqx.is_inexact_array)[0], {}


def equinox_apply(params, model_state, x, *, train, key):
    del train, key
    net = eqx.combine(params, _EQX_STATIC)
    return jax.vmap(net)(jnp.transpose(x, (0, 3, 1, 2))), model_state   # NHWC -> NCHW


def equinox_model(apply=equinox_apply):
    return from_functions(equinox_init, apply, name="tests equinox CNN")


def equinox_weights(path, leaf) -> bool:
    """Equinox's kernels: the ``weight`` leaves (not the conv's (out, 1, 1) bias)."""
    return getattr(path[-1], "name", None) == "weight"


def make_model(api: str):
    return {"linen": LinenCNN, "linen_no_train": FlaxExampleCNN,
            "nnx": lambda: NnxCNN(nnx.Rngs(0)), "equinox": equinox_model}[api]()


# --------------------------------------------------------------------------- #
# Methods, their settings and the accuracies stated
# --------------------------------------------------------------------------- #

def cosine_sgd(learning_rate, epochs):
    return optax.sgd(optax.cosine_decay_schedule(learning_rate, epochs * STEPS_PER_EPOCH),
                     momentum=0.9)


@dataclasses.dataclass(frozen=True)
class Setting:
    epochs: int
    floor: float    # every API's test accuracy exceeds this
    margin: float   # ... and the Linen model's minus this

    def reparam(self, method, equinox):
        # Equinox: (out, in, ...) kernels, so the fans are read from axis 0.
        layout = dict(filter=equinox_weights, output_axis=0) if equinox else {}
        if method == "edge_popup":
            return randjax.edge_popup(0.5, **layout)
        if method == "slot_machine":
            return randjax.slot_machine(8, **layout)
        return None

    def optimizer(self, method, equinox):
        if method == "laperm":
            # A sync every 7 steps: every epoch (21 steps) ends on one, so the
            # accuracy is that of a permutation of the initial weights.
            layout = dict(filter=equinox_weights, output_axis=0) if equinox else {}
            return randjax.laperm(optax.adam(1e-2), 7, **layout)
        return cosine_sgd(0.2 if method == "edge_popup" else 0.1, self.epochs)


# Test accuracies measured with these settings, Linen / NNX / Equinox, at
# fit seeds 0, 1, 2 (the tests run seed 0; NNX draws its weights from its
# own nnx.Rngs(0), so its seeds change the data order only):
#   dense          0.981 0.981 0.983 / 0.972 0.978 0.983 / 0.975 0.986 0.978
#   edge_popup     0.788 0.783 0.786 / 0.830 0.808 0.855 / 0.827 0.811 0.747
#   slot_machine   0.964 0.930 0.922 / 0.964 0.930 0.922 / 0.953 0.928 0.947
#   laperm         0.903 0.914 0.891 / 0.861 0.872 0.852 / 0.891 0.919 0.903
# (the Slot Machine draws its options and scores afresh, so Linen and NNX,
# whose leaves sort alike, train the same network). The floors and margins
# hold at all three seeds.
METHODS = {
    "dense": Setting(epochs=10, floor=0.95, margin=0.02),
    "edge_popup": Setting(epochs=20, floor=0.72, margin=0.05),
    "slot_machine": Setting(epochs=10, floor=0.90, margin=0.03),
    "laperm": Setting(epochs=20, floor=0.82, margin=0.06),
}


def run(model, method, *, seed=0, **kwargs):
    setting = METHODS[method]
    equinox = isinstance(model, randjax.models.ModelFunctions)
    return randjax.fit(model, load_digits(), setting.optimizer(method, equinox),
                       reparam=setting.reparam(method, equinox), epochs=setting.epochs,
                       batch_size=BATCH, seed=seed, progress=False, **kwargs)


@functools.cache
def load_digits():
    """The embedded digits (default split: 1,294 train, 144 val, 359 test), loaded once."""
    return randjax.data.load("digits")


@pytest.fixture(scope="module")
def trained():
    """``trained(api, method)``: the `FitResult` of that pair, computed once."""
    cache = {}

    def get(api, method):
        if (api, method) not in cache:
            cache[api, method] = run(make_model(api), method)
        return cache[api, method]

    return get


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("api", ["linen", "nnx", "equinox"])
def test_every_api_trains_every_method(trained, api, method):
    setting = METHODS[method]
    result = trained(api, method)
    linen = trained("linen", method).history[-1]["test_accuracy"]
    accuracy = result.history[-1]["test_accuracy"]
    assert accuracy > setting.floor
    assert accuracy >= linen - setting.margin, (api, method, accuracy, linen)
    assert result.summary["steps"] == setting.epochs * STEPS_PER_EPOCH


def test_linen_without_train_argument_trains_as_with_it(trained):
    # flax's examples/mnist convention (no `train`) runs the same computation.
    for method in ("dense", "laperm"):
        result = run(FlaxExampleCNN(), method)
        reference = trained("linen", method)
        np.testing.assert_array_equal(result.step_losses, reference.step_losses)
        assert result.summary["params_sha256"] == reference.summary["params_sha256"]


@pytest.mark.parametrize("api", ["linen", "nnx", "equinox"])
def test_laperm_keeps_every_weight_vector_a_permutation_of_its_initial_values(trained, api):
    # Every epoch ends on a sync: each output unit's incoming weights are its
    # initial ones, rearranged; in Equinox's layout the unit is the first axis.
    initial, _ = as_model(make_model(api)).init(model_key(0), jnp.zeros((1, *INPUT)))
    final = trained(api, "laperm").state.trainable
    if api == "equinox":
        selected, vectors = equinox_weights, lambda a: np.reshape(a, (a.shape[0], -1))
    else:
        selected = lambda path, leaf: leaf.ndim >= 2
        vectors = lambda a: np.reshape(a, (-1, a.shape[-1])).T
    final_leaves = dict(jax.tree_util.tree_flatten_with_path(final)[0])
    checked = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(initial)[0]:
        if selected(path, leaf):
            moved = final_leaves[path]
            assert not np.array_equal(moved, leaf)
            np.testing.assert_array_equal(np.sort(vectors(moved), axis=1),
                                          np.sort(vectors(leaf), axis=1))
            checked += 1
    assert checked == 2


# --------------------------------------------------------------------------- #
# Linen and NNX: the same numbers for the same initial weights
# --------------------------------------------------------------------------- #

LINEN_TO_NNX = {"Conv_0": "conv", "Dense_0": "dense", "BatchNorm_0": "bn"}


def nnx_with_linen_weights(module: nnx.Module, variables) -> nnx.Module:
    """``module`` with the Linen model's variables (every collection) copied in."""
    pure = {}
    for collection in variables.values():
        for name, leaves in collection.items():
            pure.setdefault(LINEN_TO_NNX[name], {}).update(leaves)
    graphdef, state = nnx.split(module)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)
    return module


def linen_as_nnx_names(tree):
    """A Linen ``params`` or model state tree with NNX's names (one level of collections)."""
    if "batch_stats" in tree:
        tree = tree["batch_stats"]
    return {LINEN_TO_NNX[name]: leaves for name, leaves in tree.items()}


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_linen_and_nnx_agree_exactly_for_the_same_initial_weights(trained):
    # Edge-popup on the CNN: the scores are drawn leaf by leaf in the same
    # order, the model computes the same; every loss and weight is equal.
    variables = LinenCNN().init(model_key(0), jnp.zeros((1, *INPUT)))
    nnx_model = nnx_with_linen_weights(NnxCNN(nnx.Rngs(1)), variables)
    linen, nnx_run = trained("linen", "edge_popup"), run(nnx_model, "edge_popup")
    np.testing.assert_array_equal(nnx_run.step_losses, linen.step_losses)
    assert_trees_equal(nnx_run.state.trainable, linen_as_nnx_names(linen.state.trainable))
    assert_trees_equal(nnx_run.state.frozen, linen_as_nnx_names(linen.state.frozen))
    assert nnx_run.history[-1]["test_accuracy"] == linen.history[-1]["test_accuracy"]


def test_linen_and_nnx_batchnorm_agree_exactly_in_training():
    # batch_stats (Linen) and nnx.BatchStat (NNX) updated in train mode,
    # running averages used in evaluation; momentum and epsilon set equal.
    variables = LinenCNN(batch_norm=True).init(model_key(0), jnp.zeros((1, *INPUT)))
    assert set(variables) == {"params", "batch_stats"}
    nnx_model = nnx_with_linen_weights(NnxCNN(nnx.Rngs(1), batch_norm=True), variables)
    kwargs = dict(epochs=2, batch_size=BATCH, progress=False)
    tx = optax.sgd(0.1, momentum=0.9)
    linen = randjax.fit(LinenCNN(batch_norm=True), load_digits(), tx, **kwargs)
    nnx_run = randjax.fit(nnx_model, load_digits(), tx, **kwargs)
    np.testing.assert_array_equal(nnx_run.step_losses, linen.step_losses)
    assert_trees_equal(nnx_run.state.trainable, linen_as_nnx_names(linen.state.trainable))
    assert_trees_equal(nnx_run.state.model_state, linen_as_nnx_names(linen.state.model_state))
    # The statistics moved (train mode), and evaluation used them alike.
    assert not np.array_equal(nnx_run.state.model_state["bn"]["var"], np.ones(FEATURES))
    assert [h["test_loss"] for h in nnx_run.history] == [h["test_loss"] for h in linen.history]


# --------------------------------------------------------------------------- #
# Resuming, initial variables
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("api", ["nnx", "equinox"])
def test_interrupted_run_resumes_to_the_same_parameters(tmp_path, api):
    # NNX with BatchNorm statistics (model state) and dropout (reseeded RNG
    # streams); Equinox's parameters are an eqx.Module pytree.
    make = {"nnx": lambda: NnxCNN(nnx.Rngs(0), batch_norm=True, dropout=0.2),
            "equinox": equinox_model}[api]
    tx = optax.sgd(0.05, momentum=0.9)
    fit = lambda workdir, epochs: randjax.fit(make(), load_digits(), tx, epochs=epochs,
                                              batch_size=BATCH, workdir=workdir,
                                              progress=False)
    first = fit(tmp_path / "interrupted", 1)
    resumed = fit(tmp_path / "interrupted", 2)
    straight = fit(tmp_path / "straight", 2)
    assert first.summary["epochs"] == 1 and resumed.summary["epochs"] == 2
    assert len(resumed.step_losses) == STEPS_PER_EPOCH   # only epoch 2 was trained
    np.testing.assert_array_equal(resumed.step_losses, straight.step_losses[STEPS_PER_EPOCH:])
    assert resumed.summary["params_sha256"] == straight.summary["params_sha256"]
    summary = json.loads((tmp_path / "interrupted" / "summary.json").read_text())
    assert summary["params_sha256"] == straight.summary["params_sha256"]


def test_variables_replace_the_initial_weights_of_nnx_and_function_models():
    x = jnp.zeros((1, *INPUT))
    for model in (NnxCNN(nnx.Rngs(0), batch_norm=True), equinox_model()):
        params, model_state = as_model(model).init(model_key(0), x)
        given = jax.tree.map(lambda a: a + 1.0, params)
        state = jax.tree.map(lambda a: a * 2.0, model_state)
        result = randjax.fit(model, load_digits(), optax.sgd(0.1), epochs=0, batch_size=BATCH,
                             progress=False,
                             variables={"params": given, "model_state": state})
        assert_trees_equal(result.state.trainable, given)
        assert_trees_equal(result.state.model_state, state)
        with pytest.raises(ValueError, match=r"variables must be \{'params': ..., "
                                             r"'model_state': ...\}.*'batch_stats'"):
            randjax.fit(model, load_digits(), optax.sgd(0.1), epochs=1, batch_size=BATCH,
                        progress=False, variables={"params": given, "batch_stats": state})
        wrong = jax.tree.map(lambda a: a[..., :1], params)
        with pytest.raises(ValueError, match="variables must have the shapes"):
            randjax.fit(model, load_digits(), optax.sgd(0.1), epochs=1, batch_size=BATCH,
                        progress=False, variables={"params": wrong, "model_state": model_state})


# --------------------------------------------------------------------------- #
# Bad input: clear errors before any training step
# --------------------------------------------------------------------------- #

def _three_groups(params, model_state, x, *, train, key):
    logits, model_state = equinox_apply(params, model_state, x, train=train, key=key)
    return jnp.stack([logits] * 3, axis=1), model_state


class NoParams(nnx.Module):
    def __init__(self):
        self.count = nnx.BatchStat(jnp.zeros(()))

    def __call__(self, x):
        return jnp.zeros((x.shape[0], CLASSES))


def _bad_labels():
    digits = load_digits()
    y = digits.test.y.copy()
    y[5] = CLASSES
    return dataclasses.replace(digits, test=digits.test._replace(y=y))


@pytest.mark.parametrize("case, error, message", [
    ("nnx outputs (batch, 3, 10)", ValueError,
     r"logits of shape \(batch, classes\); it returns shape \(1, 3, 10\)"),
    ("functions output (batch, 3, 10)", ValueError,
     r"logits of shape \(batch, classes\); it returns shape \(1, 3, 10\)"),
    ("nnx outputs 5 classes", ValueError,
     "the model outputs 5 logits but data set 'digits' has 10 classes"),
    ("nnx module without nnx.Param", ValueError,
     "the NNX module NoParams has no nnx.Param variables"),
    ("no model", TypeError, "got function.*from_functions"),
    ("no model object", TypeError, "got EquinoxCNN.*from_functions"),
    ("loss_fn returns a scalar", ValueError,
     r"loss_fn\(logits, labels\) must return one float loss per example"),
    ("loss_fn fails", ValueError, "loss_fn fails on logits of shape"),
    ("label out of range", ValueError,
     "the test split has label 10 at index 5, outside its num_classes=10"),
])
def test_bad_input_raises_before_training(tmp_path, case, error, message):
    model, kwargs, dataset = NnxCNN(nnx.Rngs(0)), {}, load_digits()
    if case == "nnx outputs (batch, 3, 10)":
        model = NnxCNN(nnx.Rngs(0), groups=3)
    elif case == "functions output (batch, 3, 10)":
        model = equinox_model(_three_groups)
    elif case == "nnx outputs 5 classes":
        model = NnxCNN(nnx.Rngs(0), num_classes=5)
    elif case == "nnx module without nnx.Param":
        model = NoParams()
    elif case == "no model":
        model = equinox_apply
    elif case == "no model object":
        model = EquinoxCNN(jax.random.key(0))
    elif case == "loss_fn returns a scalar":
        kwargs["loss_fn"] = lambda logits, labels: cross_entropy(logits, labels).mean()
    elif case == "loss_fn fails":
        kwargs["loss_fn"] = lambda logits, labels: optax.softmax_cross_entropy(logits, labels)
    elif case == "label out of range":
        dataset = _bad_labels()
    hook_calls = []
    workdir = tmp_path / "run"
    with pytest.raises(error, match=message):
        randjax.fit(model, dataset, optax.sgd(0.1), epochs=1, batch_size=BATCH,
                    progress=False, workdir=workdir,
                    epoch_hook=lambda epoch, state: hook_calls.append(epoch) or {},
                    **kwargs)
    assert not hook_calls and not workdir.exists()   # nothing trained, nothing written


# --------------------------------------------------------------------------- #
# loss_fn, dropout
# --------------------------------------------------------------------------- #

def smoothed(logits, labels):
    return optax.softmax_cross_entropy(
        logits, optax.smooth_labels(jax.nn.one_hot(labels, CLASSES), 0.1))


def test_loss_fn_label_smoothing_trains_and_the_default_is_cross_entropy(trained):
    default = trained("linen", "dense")
    same = run(LinenCNN(), "dense", loss_fn=lambda logits, labels:
               optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    np.testing.assert_array_equal(same.step_losses, default.step_losses)
    smooth = run(LinenCNN(), "dense", loss_fn=smoothed)
    assert not np.allclose(smooth.step_losses, default.step_losses)
    assert smooth.step_losses[0] != default.step_losses[0]   # from the first step on
    assert smooth.history[-1]["test_accuracy"] > METHODS["dense"].floor
    # Smoothing keeps the loss off zero: its floor is the smoothed targets' entropy.
    floor = float(smoothed(jnp.log(optax.smooth_labels(jax.nn.one_hot(jnp.zeros(1, int),
                                                                       CLASSES), 0.1)),
                           jnp.zeros(1, int))[0])
    assert smooth.history[-1]["train_loss"] > floor > default.history[-1]["train_loss"]


def test_nnx_dropout_is_a_function_of_fits_seed():
    # The module's own dropout stream (nnx.Rngs) does not matter: fit reseeds
    # it from its seed and step.
    make = lambda stream: NnxCNN(nnx.Rngs(params=0, dropout=stream), dropout=0.5)
    fit = lambda model, seed: randjax.fit(model, load_digits(), optax.sgd(0.1, momentum=0.9),
                                          epochs=1, batch_size=BATCH, seed=seed,
                                          progress=False).step_losses
    first, again, other_stream = fit(make(1), 0), fit(make(1), 0), fit(make(2), 0)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, other_stream)
    assert not np.array_equal(first, fit(make(1), 1))
    # Dropout is on in training: without it the same weights train otherwise.
    no_dropout = nnx_with_dropout_off(make(1))
    assert not np.array_equal(first, fit(no_dropout, 0))


def nnx_with_dropout_off(model: NnxCNN) -> NnxCNN:
    model.dropout = None
    return model


class SowingCNN(NnxCNN):
    """`NnxCNN` that also sows its logits (``nnx.Intermediate``) at every call."""

    def __call__(self, x):
        logits = super().__call__(x)
        self.sow(nnx.Intermediate, "logits", logits)
        return logits


@pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning")
def test_nnx_sown_intermediates_are_no_model_state():
    # Sown values grow at every call: kept as model state, the scan's carry
    # would change structure. Also when the module was called before fit.
    called = SowingCNN(nnx.Rngs(0))
    called(jnp.zeros((2, *INPUT)))
    assert nnx.state(called, nnx.Intermediate)
    fit = lambda model: randjax.fit(model, load_digits(), optax.sgd(0.1), epochs=1,
                                    batch_size=BATCH, progress=False)
    fresh, after_call, plain = fit(SowingCNN(nnx.Rngs(0))), fit(called), fit(NnxCNN(nnx.Rngs(0)))
    assert fresh.state.model_state == {} == after_call.state.model_state
    np.testing.assert_array_equal(fresh.step_losses, plain.step_losses)
    np.testing.assert_array_equal(after_call.step_losses, plain.step_losses)
