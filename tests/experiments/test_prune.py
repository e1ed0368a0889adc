"""The pruning driver: rounds, variants, resumption after SIGKILL, bad configs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import randjax
from experiments import prune
from experiments.configs import gimp, presets


def tiny(**overrides):
    config = gimp.get_config()
    config.update(width=0.5, epochs=2, density_multiplier=0.5, target_density=0.25,
                  batch_size=64)
    config.update(**overrides)
    return config


def rounds(workdir):
    return prune.read_rounds(workdir)


def test_lottery_ticket_rounds_files_and_export(tmp_path):
    summary = prune.run(tiny(), tmp_path, progress=False)
    records = rounds(tmp_path)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert [r["density"] for r in records] == pytest.approx([1.0, 0.5, 0.25], abs=1e-3)
    for r in records:
        for key in ("density_all", "test_accuracy", "steps", "seconds", "train_loss"):
            assert r[key] is not None, key
        assert r["steps"] == records[0]["steps"]  # full retraining every round
    assert records[-1]["density_all"] > records[-1]["density"]  # biases unpruned
    assert summary["params_sha256"] == records[-1]["params_sha256"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "accuracy_vs_density.png").stat().st_size > 0
    assert summary["export_ratio"] > 1
    loaded = randjax.export.load(tmp_path / "network.npz")
    kernels = [np.asarray(x) for x in jax.tree.leaves(randjax.pruning.select(loaded))]
    kept = sum(int((k != 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert kept <= 0.25 + 1e-3
    # A rerun resumes every finished round from disk: nothing changes.
    assert prune.run(tiny(), tmp_path, progress=False)["params_sha256"] == \
        summary["params_sha256"]
    assert rounds(tmp_path) == records


@pytest.mark.parametrize("variant, extra", [("wr", {}), ("lrr", {}),
                                            ("swr", {"rewind_step": 5}),
                                            ("sgimp", {"rewind_fraction": 0.25})])
def test_rounds_start_where_the_variant_rewinds_to(tmp_path, variant, extra):
    pruner = prune.Pruner(tiny(variant=variant, **extra), tmp_path, progress=False)
    dense = pruner.train_round(0, None, None)
    start = pruner.start_variables(1, [dense])["params"]
    if variant == "wr":  # the initial weights
        x = np.zeros((1, *pruner.dataset.input_shape), np.float32)
        expected = pruner.model.init(randjax.train.model_key(0), x)["params"]
    elif variant == "lrr":  # the trained weights
        expected = dense.result.state.trainable
    elif variant == "swr":  # the dense run after 5 steps
        expected = dense.result.snapshots[5].trainable
    else:  # a quarter of the previous round's steps back into its own run
        total = dense.result.summary["steps"]
        assert sorted(dense.result.snapshots) == [total - round(0.25 * total)]
        expected = dense.result.snapshots[total - round(0.25 * total)].trainable
    assert randjax.train.params_sha256(start) == randjax.train.params_sha256(expected)


@pytest.mark.parametrize("variant, extra", [
    ("ft", {}), ("lrr", {}), ("sgimp", {"rewind_fraction": 0.5}),
    ("swr", {"rewind_step": 7, "schedule_rewind": "fast_forward"}),
    ("lrr", {"rewind_step": 7, "schedule_rewind": "fast_forward"}),
    ("swr", {"rewind_step": 7, "rewind_source": "previous"}),
])
def test_variants_schedules_and_steps(tmp_path, variant, extra):
    config = tiny(variant=variant, target_density=0.5, schedule="cosine", **extra)
    prune.run(config, tmp_path, progress=False)
    dense, retrain = rounds(tmp_path)
    lrs = [r["learning_rate"] for r in randjax.train.read_metrics(tmp_path / "round_1")]
    dense_lrs = [r["learning_rate"] for r in randjax.train.read_metrics(tmp_path / "round_0")]
    if variant == "ft":  # the dense schedule's last rate, constant
        assert lrs == pytest.approx([lrs[0]] * len(lrs)) and lrs[0] < dense_lrs[0]
    elif extra.get("schedule_rewind") == "fast_forward":
        assert retrain["steps"] == dense["steps"] - 7 and retrain["start_step"] == 7
        assert lrs == pytest.approx(dense_lrs)  # the same step gets the same rate
    else:
        assert retrain["steps"] == dense["steps"] and lrs == pytest.approx(dense_lrs)


def test_one_shot_and_pruning_at_init(tmp_path):
    prune.run(tiny(pruning="oneshot", variant="lrr", target_density=0.1), tmp_path / "a",
              progress=False)
    assert [r["density"] for r in rounds(tmp_path / "a")] == pytest.approx([1, 0.1], abs=1e-3)
    accuracy = {}
    for criterion in ("snip", "random", "magnitude"):
        work = tmp_path / criterion
        prune.run(tiny(pruning="at_init", criterion=criterion, target_density=0.3), work,
                  progress=False)
        (only,) = rounds(work)
        assert only["round"] == 0 and only["density"] == pytest.approx(0.3, abs=1e-3)
        accuracy[criterion] = only["test_accuracy"]
    # At init SNIP keeps the connections that matter: it beats random pruning.
    assert accuracy["snip"] > accuracy["random"] + 0.05
    assert min(accuracy.values()) > 0.5


def test_training_optimal_masks_learns_the_masks_of_one_shot_pruning(tmp_path):
    config = tiny(pruning="oneshot", variant="lrr", criterion="tom", target_density=0.05,
                  epochs=1, retrain_epochs=2)
    config.tom.update(epochs=2, clip=0.01, penalty_scale=1e-3)
    summary = prune.run(config, tmp_path, progress=False)
    dense, sparse = rounds(tmp_path)
    assert sparse["density"] == pytest.approx(0.05, abs=1e-3)
    steps = dense["steps"]
    assert sparse["mask_steps"] == 2 * steps and sparse["steps"] == 2 * steps
    assert 0 < sparse["mask_expected_density"] < 0.99 and sparse["mask_test_accuracy"] > 0.1
    # The masks' own run resumes from tom_masks/: a rerun changes nothing.
    assert (tmp_path / "tom_masks" / "summary.json").exists()
    assert prune.run(config, tmp_path, progress=False)["params_sha256"] == \
        summary["params_sha256"]
    kernels = jax.tree.leaves(randjax.pruning.select(
        randjax.export.load(tmp_path / "network.npz")))
    kept = sum(int((np.asarray(k) != 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert kept <= 0.05 + 1e-3


def test_snip_scores_differ_from_magnitude(tmp_path):
    pruner = prune.Pruner(tiny(criterion="snip"), tmp_path, progress=False)
    variables = pruner.initial_variables()
    snip = pruner.next_masks(0, variables, None)
    pruner.config = tiny(criterion="magnitude")
    magnitude = pruner.next_masks(0, variables, None)
    a, b = (np.concatenate([np.ravel(m) for m in jax.tree.leaves(t)]) for t in (snip, magnitude))
    assert a.sum() == b.sum() and (a != b).any()


@pytest.mark.parametrize("overrides, message", [
    (dict(density_multiplier=0.4), r"density_multiplier must be in \[0.5, 1.0\]"),
    (dict(density_multiplier=1.0), r"density_multiplier must be in \[0.5, 1\)"),
    (dict(target_density=0.0), r"density must be in \(0, 1\]"),
    (dict(target_density=1.5), r"density must be in \(0, 1\]"),
    (dict(target_density=0.6), "above the first round's density"),
    (dict(variant="swr"), "needs rewind_step"),
    (dict(variant="lrr", rewind_step=3), "rewind_step is read by swr"),
    (dict(variant="wr", rewind_fraction=0.5), "rewind_fraction is sgimp's"),
    (dict(variant="ft", schedule_rewind="fast_forward"), "applies to swr and lrr"),
    (dict(variant="swr", rewind_step=100_000), "past the training length"),
    (dict(variant="sgimp", rewind_fraction=1.5), "rewind_fraction must be in"),
    (dict(criterion="hessian"), "criterion must be one of"),
    (dict(exclude=("Dense_0", "Dense_1", "Dense_2")), "selects no leaf"),
    (dict(exclude=("Conv_0",)), "matches no prunable leaf"),
    (dict(pruning="at_init", variant="lrr"), "takes variant='wr'"),
    (dict(criterion="tom"), "use pruning='oneshot'"),
    (dict(pruning="at_init", criterion="tom"), "use pruning='oneshot'"),
])
def test_bad_configs_fail_before_training(tmp_path, overrides, message):
    config = tiny(**overrides)
    with pytest.raises(ValueError, match=message):
        prune.run(config, tmp_path, progress=False)
    assert not (tmp_path / "round_0" / "checkpoints").exists()


def test_tom_settings_without_tom_are_refused(tmp_path):
    config = tiny()
    config.tom.penalty_scale = 1e-3
    with pytest.raises(ValueError, match="read by criterion='tom' only"):
        prune.make_plan(config)


def test_unknown_fields_are_refused(tmp_path):
    config = tiny()
    config.sync_period = 3
    with pytest.raises(ValueError, match=r"\['sync_period'\] are not settings"):
        prune.make_plan(config)


def test_presets_validate():
    plan = prune.make_plan(presets.lth_lenet_fmnist())
    assert prune.round_count(plan) == 15  # 16 levels with the dense one
    rewind = prune.make_plan(presets.lth_rewind500_lenet_fmnist())
    assert rewind.rewind_step == 500 and rewind.fast_forward
    assert rewind.rewind_source == "dense"


def _driver(workdir, env):
    args = ["--config=experiments/configs/gimp.py", "--config.width=0.5",
            "--config.epochs=3", "--config.density_multiplier=0.5",
            "--config.target_density=0.25", "--config.batch_size=32", f"--workdir={workdir}"]
    return [sys.executable, "-m", "experiments.prune", *args]


def test_sigkilled_driver_resumes_to_the_same_parameters(tmp_path):
    env = dict(os.environ)
    reference = tmp_path / "reference"
    subprocess.run(_driver(reference, env), check=True, capture_output=True, env=env,
                   timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_driver(killed, env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    # Kill inside round 1, after its first epoch's checkpoint.
    checkpoints = killed / "round_1" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoints.exists() and any(
            p.name.isdigit() for p in checkpoints.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(rounds(killed)) == 1  # round 0 finished, round 1 did not
    subprocess.run(_driver(killed, env), check=True, capture_output=True, env=env,
                   timeout=600)
    final = json.loads((killed / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert final["params_sha256"] == expected["params_sha256"]
    assert [r["round"] for r in rounds(killed)] == [0, 1, 2]
    assert [r["params_sha256"] for r in rounds(killed)] == \
        [r["params_sha256"] for r in rounds(reference)]
