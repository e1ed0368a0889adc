"""The method registry, and a new method added as one module plus one config file."""

import importlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

import randjax
from experiments import registry, train

CONFIGS = pathlib.Path(__file__).parent.parent.parent / "experiments" / "configs"


def test_every_method_config_registers_itself():
    files = sorted(p.stem for p in CONFIGS.glob("*.py")
                   if p.stem not in ("__init__", "presets", "gimp"))
    for name in files:
        entry = registry.entry(name)   # imports experiments/configs/<name>.py if needed
        config = entry.get_config()
        assert config.method == name
        method = registry.build(config, optax.sgd(0.1))
        assert isinstance(method, registry.Method)
        assert isinstance(method.reparam, randjax.Reparam)
    assert set(files) <= set(registry.names())
    assert {"dense", "edge_popup", "supermask", "slot_machine", "laperm",
            "lookahead", "masked"} <= set(files)


def test_pruning_configs_point_to_their_driver():
    config = registry.get_config("gimp")
    with pytest.raises(ValueError, match="python -m experiments.prune"):
        registry.build(config, optax.sgd(0.1))


@pytest.mark.parametrize("criterion", ["random", "magnitude"])
def test_masked_config_trains_under_a_mask_of_its_density(criterion):
    config = registry.get_config("masked")
    config.update(density=0.3, criterion=criterion, epochs=5)
    result = train.train_and_evaluate(config, None, progress=False)
    state = result.state
    kernels = [m for m in jax.tree.leaves(state.frozen) if m is not None]
    assert sum(int(m.sum()) for m in kernels) == round(0.3 * sum(m.size for m in kernels))
    assert result.summary["test_accuracy"] > 0.5


def test_tom_config_trains_masks_through_train_and_evaluate():
    config = registry.get_config("tom")
    config.update(density=0.2, epochs=2, val_fraction=0.0)
    config.tom.penalty_scale = 1e-3
    result = train.train_and_evaluate(config, None, progress=False)
    logits = [b for b in jax.tree.leaves(result.state.trainable) if b is not None]
    assert all(float(abs(b).max()) <= config.tom.bound for b in logits)
    assert float(randjax.methods.tom.expected_density(result.state.trainable)) < 0.98
    assert 0.1 < result.summary["test_accuracy"] <= 1.0
    config.tom.divide_by_weight = True
    with pytest.raises(ValueError, match="experiments.prune"):
        registry.build(config, optax.sgd(0.1))


def test_unknown_method_and_unread_fields_are_refused():
    config = registry.get_config("dense")
    config.method = "nope"
    with pytest.raises(ValueError, match=r"unknown method 'nope'; choose one of \["):
        registry.build(config, optax.sgd(0.1))
    config = registry.get_config("slot_machine")
    config.density = 0.5   # an edge-popup setting
    with pytest.raises(ValueError, match=r"\['density'\] are not settings of method"):
        registry.build(config, optax.sgd(0.1))


def test_a_name_belongs_to_one_file():
    def build(config, optimizer):
        return registry.Method(randjax.dense(), optimizer)

    with pytest.raises(ValueError, match="method 'dense' is registered by"):
        registry.register("dense", get_config=lambda: None, build=build)


# A new method: a fixed random mask over trained weights. The module stands
# for randjax/methods/fixed_mask.py (its Reparam and export codec), the config
# file for experiments/configs/fixed_mask.py; nothing else is edited.

METHOD = '''
"""A fixed random mask: train only the weights a random binary mask keeps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from randjax import export, tree
from randjax.reparam import Reparam


@functools.cache
def _mask_init(density):
    def draw(key, shape, dtype):
        return (jax.random.uniform(key, shape) < density).astype(dtype)
    return draw


def fixed_mask(density):
    density = tree.check_density(density)

    def init(key, params):
        return tree.split(key, params, filter=tree.is_kernel,
                          make_trainable=lambda key, leaf: leaf,
                          weight_init=_mask_init(density), train_others=True,
                          method="fixed_mask")

    def apply(trainable, frozen, *, key=None, train=True):
        paired = tree.pair(trainable, frozen, "fixed_mask")
        return paired.rebuild(w * m for w, m in paired.selected())

    return Reparam(init, apply, {"method": "fixed_mask", "density": density})


def _encode(spec, selected, key):
    return [({"mask": np.packbits(np.asarray(m).ravel() != 0),
              "values": np.asarray(w)[np.asarray(m) != 0]}, w.shape)
            for w, m, _ in selected]


def _decode(spec, arrays):
    def rebuild(leaf, stored):
        shape = tuple(leaf["shape"])
        kept = np.unpackbits(stored["mask"], count=int(np.prod(shape))).reshape(shape)
        out = np.zeros(shape, leaf["dtype"])
        out[kept != 0] = stored["values"]
        return jnp.asarray(out)
    return rebuild


export.register_codec("fixed_mask", export.Codec(decode=_decode, encode=_encode))
'''

CONFIG = '''
"""A fixed random mask (the test's example method)."""

import fixed_mask

from experiments import registry
from experiments.configs import dense


def get_config():
    config = dense.get_config()
    config.method = "fixed_mask"
    config.density = 0.3
    return config


def build(config, optimizer):
    return registry.Method(fixed_mask.fixed_mask(config.density), optimizer)


registry.register("fixed_mask", get_config=get_config, build=build)
'''


@pytest.fixture
def new_method(tmp_path, monkeypatch):
    (tmp_path / "fixed_mask.py").write_text(textwrap.dedent(METHOD))
    (tmp_path / "fixed_mask_config.py").write_text(textwrap.dedent(CONFIG))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_new_method_trains_through_the_cli_exports_and_loads(new_method, tmp_path):
    # The CLI, as a user runs it.
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{new_method}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train",
         f"--config={new_method / 'fixed_mask_config.py'}", "--config.epochs=3",
         "--config.batch_size=32", "--config.width=0.5", f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=600, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["test_accuracy"] > 0.8   # chance: 0.1
    assert json.loads((workdir / "config.json").read_text())["method"] == "fixed_mask"

    # The same method from Python, then exported and loaded.
    config_module = importlib.import_module("fixed_mask_config")
    config = config_module.get_config()
    config.update(epochs=3, batch_size=32, width=0.5)
    result = train.train_and_evaluate(config, None, progress=False)
    assert result.summary["params_sha256"] == summary["params_sha256"]   # one run
    reparam = registry.build(config, optax.identity()).reparam
    state = result.state
    effective = reparam.apply(state.trainable, state.frozen)
    kernel = np.asarray(effective["Dense_0"]["kernel"])
    assert 0.25 < np.mean(kernel != 0) < 0.35   # the mask keeps ~30%
    info = randjax.export.save(tmp_path / "net", reparam, state.trainable, state.frozen)
    assert "fixed_mask" in randjax.export.codec_names()
    loaded = randjax.export.load(info.path)
    model = train.make_model(config, 10)
    x = randjax.data.load("digits").test.x
    np.testing.assert_array_equal(model.apply({"params": loaded}, x),
                                  model.apply({"params": effective}, x))
