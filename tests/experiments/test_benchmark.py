"""The benchmark's model-API comparison (``--model_apis``), end-to-end and init modes, run tiny.

`experiments.benchmark` defines absl flags that other experiment modules
define too (``--epochs``), so it runs in its own process here, as the
benchmark tests of ``test_train.py`` do.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import conv_phases, end_to_end, init_times
from randjax import models

SCRIPT = """
import json, optax
from absl import app
from experiments import benchmark
from randjax import data
digits = data.load("digits", val_fraction=0.0)
report = benchmark.model_api_seconds("lenet300_100", digits, 64,
                                     optax.sgd(0.1, momentum=0.9), repeats=2)
try:
    benchmark.model_api_seconds("conv4", digits, 64, optax.sgd(0.1), repeats=1)
except app.UsageError as error:
    report["conv4"] = str(error)
print(json.dumps(report))
"""


def test_model_apis_time_the_same_computation():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    apis = ["linen", "nnx", "functions"]
    assert list(report["epoch_seconds"]) == apis
    assert all(report["epoch_seconds"][api] > 0 for api in apis)
    # LeNet-300-100 with the same initial weights: the same numbers, bit for
    # bit, after the compiling epoch and the 2 timed ones.
    for field in ("same_losses", "identical_losses", "identical_params"):
        assert report[field] == dict.fromkeys(apis, True), field
    seconds = report["epoch_seconds"]
    assert report["nnx_over_linen"] == seconds["nnx"] / seconds["linen"]
    assert report["functions_over_linen"] == seconds["functions"] / seconds["linen"]
    assert "times an MLP of the zoo" in report["conv4"] and "conv4" in report["conv4"]


def test_end_to_end_times_every_phase_cold_and_warm(tmp_path):
    report = end_to_end.run(["adam_lenet_fmnist"], root=str(tmp_path), overrides=(
        "--config.epochs=2", "--config.train_limit=3000"))["adam_lenet_fmnist"]
    cold, warm = report["cold"], report["warm"]
    for r in (cold, warm):
        assert r["epochs"] == 2 and all(r[phase] >= 0 for phase in end_to_end.PHASES)
        parts = sum(r[p] for p in end_to_end.PHASES if p not in ("other", "total"))
        assert parts + r["other"] == pytest.approx(r["total"])
        assert 0 < r["first_epoch"] < r["total"]
        assert r["wall_over_median"] >= 1
    # The warm run loads what the cold one compiled, and computes the same.
    assert warm["params_sha256"] == cold["params_sha256"]
    assert warm["init"] + warm["compile"] < cold["init"] + cold["compile"]
    assert "adam_lenet_fmnist" in end_to_end.table({"adam_lenet_fmnist": report})
    with pytest.raises(ValueError, match="unknown presets"):
        end_to_end.run(["lth_lenet_fmnist"])


def test_init_times_cold_then_warm(tmp_path):
    report = init_times.measure(["lenet300_100"], "laperm", root=str(tmp_path), repeats=2)
    seconds = report["lenet300_100"]
    # The warm processes load the program the cold ones compiled.
    assert 0 < seconds["warm"] < seconds["cold"]
    assert init_times.table(report).splitlines()[1].startswith("lenet300_100")
    with pytest.raises(ValueError, match="method must be one of"):
        init_times.init_seconds("lenet300_100", "adam")
    with pytest.raises(ValueError, match="unknown models"):
        init_times.measure(["lenet5"])


FACTORED = """
import sys
from absl import flags
from experiments import benchmark
flags.FLAGS(["benchmark", "--optimizer=sgd", "--k=4"])
import optax
method = benchmark.build("slot_machine_factored", optax.sgd(0.1, momentum=0.9))
print(method.reparam.spec["mode"], method.reparam.spec["k"], type(method.optimizer).__name__)
flags.FLAGS(["benchmark", "--optimizer=adam"])
try:
    benchmark.build("slot_machine_factored", optax.adam(1e-3))
except ValueError as error:
    print("refused:", "SGD only" in str(error))
"""


def test_benchmark_builds_the_factored_slot_machine_with_slot_sgd():
    proc = subprocess.run([sys.executable, "-c", FACTORED], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["factored 4 GradientTransformation",
                                           "refused: True"]


def test_conv_phases_time_every_layer_of_conv4():
    layers = conv_phases.conv4_layers(2)
    assert [layer["kind"] for layer in layers] == ["conv", "conv", "pool", "conv", "conv",
                                                    "pool", "dense", "dense", "dense"]
    params = jax.eval_shape(models.get("conv4", num_classes=10).init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)))["params"]
    kernels = [params[f"Conv_{i}"]["kernel"].shape for i in range(4)]
    assert kernels == [layer["kernel"] for layer in layers if layer["kind"] == "conv"]
    assert [params[f"Dense_{i}"]["kernel"].shape for i in range(3)] == [
        layer["kernel"] for layer in layers if layer["kind"] == "dense"]
    report = conv_phases.conv4_phase_ms(batch=2, repeats=1, in_loop=2)
    assert set(report["model"]) == {"forward", "backward", "step", "step_in_loop"}
    alone = {"forward", "input_grad", "input_grad_xla", "kernel_grad"}
    assert set(report["conv1"]) == {*alone, "kernel_grad_xla", *(f"{p}_in_loop" for p in alone)}
    assert set(report["pool2"]) == {"pool", "pool_in_loop"}
    assert set(report["dense8"]) == {"forward", "input_grad", "kernel_grad", "forward_in_loop",
                                     "input_grad_in_loop", "kernel_grad_in_loop"}
    assert all(ms > 0 for phases in report.values() for ms in phases.values())
