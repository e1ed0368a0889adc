"""Two OS processes on localhost train as one (jax.distributed, gloo, 4 CPU devices each)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from experiments import distributed, local_cluster
from randjax.train import read_metrics

ARGS = ["experiments.train", "--config=experiments/configs/dense.py",
        "--config.model=lenet300_100", "--config.epochs=6", "--config.batch_size=64"]
TIMEOUT = 300   # seconds per run; every process is killed after it


def _summary(workdir):
    return json.loads((workdir / "summary.json").read_text())


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """An uninterrupted 2-process run (8 devices in all)."""
    workdir = tmp_path_factory.mktemp("mp") / "straight"
    status = local_cluster.launch([*ARGS, f"--workdir={workdir}"], 2, 4, timeout=TIMEOUT)
    assert status == 0
    return workdir


def test_two_processes_follow_the_one_process_trajectory(two_processes, tmp_path):
    one = tmp_path / "one"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    subprocess.run([sys.executable, "-m", *ARGS, f"--workdir={one}"], env=env, check=True,
                   timeout=TIMEOUT, capture_output=True)
    two, single = _summary(two_processes), _summary(one)
    assert (two["num_devices"], two["num_processes"]) == (8, 2)
    assert (single["num_devices"], single["num_processes"]) == (8, 1)
    assert two["steps"] == single["steps"] == 6 * 21
    for key in ("train_loss", "val_loss", "test_loss"):
        np.testing.assert_allclose([r[key] for r in read_metrics(two_processes)],
                                   [r[key] for r in read_metrics(one)], rtol=1e-4)
    assert two["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=2e-3)
    assert two["test_accuracy"] > 0.9
    # Only process 0 wrote the run's files: one record per epoch.
    assert [r["epoch"] for r in read_metrics(two_processes)] == list(range(1, 7))


def test_both_processes_killed_resume_to_the_same_parameters(two_processes, tmp_path):
    killed = tmp_path / "killed"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "experiments.local_cluster", f"--timeout={TIMEOUT}", "--",
         *ARGS, f"--workdir={killed}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    try:
        while not (killed / "checkpoints" / "2" / "randjax_files.json").exists():
            assert launcher.poll() is None and time.time() < deadline
            time.sleep(0.005)
    finally:
        launcher.send_signal(signal.SIGTERM)   # the launcher SIGKILLs both processes
        status = launcher.wait(timeout=60)
    assert status == 128 + signal.SIGTERM
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"
    assert local_cluster.launch([*ARGS, f"--workdir={killed}"], 2, 4, timeout=TIMEOUT) == 0
    assert _summary(killed)["params_sha256"] == _summary(two_processes)["params_sha256"]
    assert _summary(killed)["epochs"] == 6


def test_processes_running_different_runs_stop_before_training(tmp_path):
    # Each process passes its own seed: fit refuses on every process.
    program = textwrap.dedent("""
        import jax, optax, sys
        from experiments import distributed
        distributed.initialize(distributed.initialize_args())
        import randjax
        randjax.fit(randjax.models.get("lenet300_100"), randjax.data.load("digits"),
                    optax.sgd(0.1), epochs=1, batch_size=64, seed=jax.process_index(),
                    progress=False)
    """)
    port = local_cluster.free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "JAX_PLATFORMS": "cpu",
                        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                        "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
        for i in range(2)]
    try:
        outputs = [proc.communicate(timeout=TIMEOUT)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode != 0
        assert "processes [1] differ from process 0" in output, output[-2000:]


def test_initialize_args():
    env = {}
    assert distributed.initialize_args(environ=env) is None
    assert distributed.initialize_args("h:1", 2, 1, environ=env) == {
        "coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    assert distributed.initialize_args(environ={
        "JAX_COORDINATOR_ADDRESS": "h:2", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}) == {
        "coordinator_address": "h:2", "num_processes": 4, "process_id": 3}
    assert distributed.initialize_args(distributed=True, environ=env) == {}
    with pytest.raises(ValueError, match=r"--process_id=2 is outside \[0, 2\)"):
        distributed.initialize_args("h:1", 2, 2, environ=env)
    with pytest.raises(ValueError, match="missing: --coordinator_address, --process_id"):
        distributed.initialize_args(num_processes=2, environ=env)
    with pytest.raises(ValueError, match="--num_processes must be >= 1"):
        distributed.initialize_args("h:1", 0, 0, environ=env)
    with pytest.raises(ValueError, match=r"\$JAX_PROCESS_ID must be an integer"):
        distributed.initialize_args("h:1", 2, environ={"JAX_PROCESS_ID": "one"})


def test_cli_refuses_an_inconsistent_process_set(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", *ARGS, f"--workdir={tmp_path}", "--coordinator_address=h:1",
         "--num_processes=2", "--process_id=2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "FATAL distributed setup error: --process_id=2 is outside [0, 2)")


PRUNE = ["experiments.prune", "--config=experiments/configs/gimp.py",
         "--config.model=lenet300_100", "--config.width=0.5", "--config.epochs=2",
         "--config.batch_size=64", "--config.variant=swr", "--config.rewind_step=15",
         "--config.density_multiplier=0.5", "--config.target_density=0.25"]


def test_two_processes_prune_as_one_process(tmp_path):
    # Stable weight rewinding: each round rewinds to the dense run's snapshot
    # at step 15, taken and saved (collectively) by both processes.
    two, one = tmp_path / "two", tmp_path / "one"
    assert local_cluster.launch([*PRUNE, f"--workdir={two}"], 2, 4, timeout=TIMEOUT) == 0
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    subprocess.run([sys.executable, "-m", *PRUNE, f"--workdir={one}"], env=env, check=True,
                   timeout=TIMEOUT, capture_output=True)
    rounds = [[json.loads(line) for line in (w / "rounds.jsonl").read_text().splitlines()]
              for w in (two, one)]
    assert [r["round"] for r in rounds[0]] == [0, 1, 2]          # written once, by process 0
    assert [r["density"] for r in rounds[0]] == [r["density"] for r in rounds[1]]
    for key in ("train_loss", "test_accuracy"):
        np.testing.assert_allclose([r[key] for r in rounds[0]], [r[key] for r in rounds[1]],
                                   rtol=1e-3)
    assert (two / "round_0" / "snapshots").is_dir()
    assert json.loads((two / "summary.json").read_text())["rounds"] == 3
