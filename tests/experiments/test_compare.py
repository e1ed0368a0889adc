"""experiments.compare: every method side by side, and the quick start that runs it."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import compare, prune, quickstart, train
from experiments.configs import presets


def test_on_lenet_and_fashion_mnist_every_run_is_its_preset():
    settings = compare.get_config()
    for method, preset in compare.METHODS.items():
        assert compare.run_config(settings, method, 0).to_dict() == preset().to_dict(), method
        other, same = compare.run_config(settings, method, 3).to_dict(), preset().to_dict()
        assert {k for k in other if other[k] != same[k]} == {"seed"}
    assert compare.METHODS["slot_machine"] is presets.slot_lenet_fmnist_k8


def test_budget_overrides_reach_every_run():
    settings = compare.get_config()
    settings.update(model="conv2", dataset="digits", epochs=3, train_limit=500,
                    density_multiplier=0.5, target_density=0.1, checkpoint_every=3)
    for method in compare.METHODS:
        config = compare.run_config(settings, method, 1)
        assert (config.model, config.dataset, config.epochs, config.train_limit,
                config.checkpoint_every, config.seed) == ("conv2", "digits", 3, 500, 3, 1)
        if compare.is_pruning(method):
            assert (config.density_multiplier, config.target_density) == (0.5, 0.1)
    # swr rewinds to the same share of the dense run: 500 of 4,690 steps,
    # of 3 epochs of 4 batches of 128 here.
    assert compare.run_config(settings, "swr", 0).rewind_step == round(500 * 12 / 4690)
    assert compare.run_config(settings, "edge_popup", 0, density=0.1).density == 0.1
    # A step schedule keeps its milestones' share of the run (Mikler: 1/2, 3/4).
    assert compare.run_config(settings, "lrr", 0).lr_milestones == (2,)
    settings.epochs = 40
    assert compare.run_config(settings, "sgimp", 0).lr_milestones == (20, 28)


@pytest.mark.parametrize("change, message", [
    (dict(methods=("dense", "nope")), "unknown methods ['nope']"),
    (dict(methods=("dense", "dense")), "names a method twice"),
    (dict(seeds=0), "--seeds"),
    (dict(density_multiplier=1.0), "--density_multiplier"),
    (dict(target_density=-0.1), "--target_density"),
])
def test_bad_settings_are_refused(change, message):
    settings = compare.get_config()
    settings.update(**change)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compare.check_settings(settings)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A small comparison on digits: 4 methods, 2 seeds, pruning to 25%."""
    settings = compare.get_config()
    settings.update(methods=("dense", "edge_popup", "laperm", "lrr"), dataset="digits",
                    epochs=2, seeds=2, density_multiplier=0.5, target_density=0.3,
                    checkpoint_every=2, workdir=str(tmp_path_factory.mktemp("compare")))
    return settings, compare.run(settings, progress=False)


def test_the_table_has_every_method_and_the_matched_edge_popup(digits):
    settings, rows = digits
    assert [r["method"] for r in rows] == ["dense", "edge_popup", "edge_popup@0.25",
                                           "laperm", "lrr"]
    runs = json.loads((pathlib.Path(settings.workdir) / "runs.json").read_text())
    by_name = {r["name"]: r for r in runs}
    for row in rows:
        accuracies = [by_name[f"{row['method']}/seed_{s}"]["test_accuracy"] for s in (0, 1)]
        assert row["test_accuracy"] == accuracies
        assert row["test_accuracy_mean"] == pytest.approx(np.mean(accuracies))
        assert row["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    lrr = rows[-1]
    # Edge-popup keeps the share of kernel entries the pruning run keeps.
    assert rows[2]["density"] == pytest.approx(lrr["density"], abs=1e-4)
    assert rows[0]["density"] == 1.0 and rows[1]["density"] == 0.5
    # open_lth's count takes half of *all* kernel entries per level from the
    # prunable ones (the output layer is never pruned).
    assert [level["density"] for level in lrr["levels"]] == pytest.approx([1, 0.5, 0.25], abs=1e-4)
    assert lrr["kept"] < 0.3 * lrr["params"] and lrr["epochs"] == 6
    assert rows[1]["export_bytes"] < rows[1]["float32_bytes"] / 20   # one bit per weight
    assert rows[0]["export_bytes"] is None                            # no compact codec
    table = (pathlib.Path(settings.workdir) / "compare.md").read_text()
    assert "| edge_popup (matched density) | " in table and "± " in table
    written = json.loads((pathlib.Path(settings.workdir) / "compare.json").read_text())
    assert written["rows"] == json.loads(json.dumps(rows))
    assert (pathlib.Path(settings.workdir) / "compare.png").stat().st_size > 20_000


def test_a_run_is_the_method_run_alone(digits):
    # Same config and seed: the same network as experiments.train / .prune.
    settings, _ = digits
    runs = {r["name"]: r for r in json.loads(
        (pathlib.Path(settings.workdir) / "runs.json").read_text())}
    alone = train.train_and_evaluate(compare.run_config(settings, "edge_popup", 1), None,
                                     progress=False)
    assert alone.summary["params_sha256"] == runs["edge_popup/seed_1"]["params_sha256"]
    assert alone.summary["test_accuracy"] == runs["edge_popup/seed_1"]["test_accuracy"]
    summary = prune.run(compare.run_config(settings, "lrr", 0),
                        pathlib.Path(settings.workdir) / "alone", progress=False)
    assert summary["params_sha256"] == runs["lrr/seed_0"]["params_sha256"]


def test_a_finished_comparison_trains_nothing_again(digits, monkeypatch):
    settings, rows = digits

    def refuse(*args, **kwargs):
        raise AssertionError("retrained a finished run")

    monkeypatch.setattr(train, "train_and_evaluate", refuse)
    monkeypatch.setattr(prune, "run", refuse)
    assert compare.run(settings, progress=False) == rows
    changed = compare.get_config()
    changed.update(settings.to_dict())
    changed.epochs = 3
    with pytest.raises(ValueError, match="with other settings"):
        compare.run(changed, progress=False)


def test_cli_refuses_an_unknown_method_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compare", "--methods=dense,edge_pop",
         f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("FATAL unknown methods ['edge_pop']")


def test_the_quick_start_compares_every_method_on_digits():
    settings = quickstart.get_config()
    assert settings.dataset == "digits" and settings.seeds >= 2
    assert set(settings.methods) == {"dense", "edge_popup", "supermask", "slot_machine",
                                     "laperm", "lth", "lrr", "sgimp"}
    compare.check_settings(settings)
