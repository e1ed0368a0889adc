"""The study scripts: records, resumption, figures (tiny budgets on digits)."""

import json
import subprocess
import sys


def run_module(*args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _rows(path):
    return {r["name"]: r for r in json.loads(path.read_text())}


def test_slot_sweeps_write_records_and_figures(tmp_path):
    args = ["experiments.slot_sweeps", "--dataset=digits", "--models=lenet300_100",
            "--ks=2,8", "--epochs=2", "--memory_models=lenet300_100", "--memory_ks=8",
            f"--out_dir={tmp_path}"]
    run_module(*args)
    k = _rows(tmp_path / "k.json")
    assert set(k) == {"lenet300_100/dense", *(f"lenet300_100/{m}/{n}" for m in
                                              ("greedy", "sample") for n in (2, 8))}
    assert k["lenet300_100/greedy/8"]["learning_rate"] == 0.1
    assert k["lenet300_100/sample/8"]["learning_rate"] == 25.0
    assert k["lenet300_100/greedy/8"]["test_accuracy"] > 0.5  # chance: 0.1
    assert set(_rows(tmp_path / "sharing.json")) == {"shared/2", "shared/8"}
    tune = _rows(tmp_path / "finetune.json")
    assert set(tune) == {"slots", "finetuned", "dense"}
    assert tune["dense"]["epochs"] == 4 and len(tune["finetuned"]["test_accuracy_per_epoch"]) == 2
    memory = _rows(tmp_path / "memory.json")["lenet300_100/8"]
    # Lean mode keeps two uint32 per kernel instead of 8 options per weight.
    assert memory["frozen_bytes_lean"] == 3 * 8
    assert memory["frozen_bytes_stored"] == 8 * 4 * (64 * 300 + 300 * 100 + 100 * 10)
    assert memory["bits_per_connection"] == 3 and memory["export_ratio"] > 8
    for name in ("k", "sharing", "finetune"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    out = run_module(*args)  # everything recorded: nothing trains again
    assert ": test " not in out and "memory: " not in out
