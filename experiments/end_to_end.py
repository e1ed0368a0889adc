"""Time to result: a config run as a user runs it, phase by phase, cold and warm.

    python -m experiments.benchmark --end_to_end=adam_lenet_fmnist,laperm_lenet_fmnist
    python -m experiments.benchmark --end_to_end=all --repeats=3

Each training preset of `experiments.configs.presets` (``all``: every one
but the pruning presets) runs as its own process,
``python -m experiments.train --config=...presets.py:<name> --workdir=<fresh>``,
twice per repeat: **cold** with an empty compilation cache and **warm** with
the cache the cold run filled (`experiments.compile_cache`), each in a fresh
workdir. The presets take turns within every repeat, so a slow minute on a
shared machine hits them alike; the medians over repeats are reported.

The phases, in seconds of the process (from its launch here to its exit):

* ``imports``: interpreter start and the imports, up to ``main`` (the
  process's ``timings.json``);
* ``data``: loading the data set (``timings.json``);
* ``init``: model, method and optimizer state (`randjax.train.init_state`)
  put on the devices; ``compile``: the epoch's ahead-of-time compilation;
  ``train``: the epochs; ``eval``: validation and test evaluation;
  ``checkpoint``: orbax saves (all from ``summary.json``);
* ``other``: the rest (flag parsing, device start-up, the workdir's checks,
  writing metrics, the exit), so the phases add up to ``total``.

It also reports ``first_epoch``, the seconds from launch to the first
epoch's start, ``median_epoch`` and ``wall_over_median``: fit's
``wall_seconds / epochs`` over its median epoch, the per-epoch overhead of
compilation, evaluation and checkpoints.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from experiments.configs import presets

PHASES = ("imports", "data", "init", "compile", "train", "eval", "checkpoint", "other",
          "total")
_REPO = pathlib.Path(__file__).resolve().parent.parent


def preset_names() -> list[str]:
    """The presets `experiments.train` runs (the pruning ones run `experiments.prune`)."""
    return sorted(name for name, make in presets.PRESETS.items() if "pruning" not in make())


def run_once(preset: str, workdir: pathlib.Path, cache_dir: pathlib.Path,
             overrides: tuple[str, ...] = ()) -> dict:
    """One process training ``preset`` in ``workdir``; its phases and results.

    ``overrides`` are more flags, e.g. ``("--config.epochs=1",)``.
    """
    command = [sys.executable, "-m", "experiments.train",
               f"--config={_REPO / 'experiments/configs/presets.py'}:{preset}",
               f"--workdir={workdir}", f"--compilation_cache_dir={cache_dir}", *overrides]
    launched = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=_REPO,
                          env={**os.environ, "PYTHONPATH": str(_REPO)}, check=False)
    total = time.time() - launched
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    summary = json.loads((workdir / "summary.json").read_text())
    timings = json.loads((workdir / "timings.json").read_text())
    phases = {"imports": timings["main_unix"] - launched, "data": timings["data_seconds"],
              "init": summary["init_seconds"], "compile": summary["compile_seconds"],
              "train": summary["train_seconds"], "eval": summary["eval_seconds"],
              "checkpoint": summary["checkpoint_seconds"]}
    phases["other"] = total - sum(phases.values())
    phases["total"] = total
    median = summary["median_epoch_seconds"]
    return {**phases, "first_epoch": summary["first_epoch_unix"] - launched,
            "median_epoch": median,
            "wall_over_median": summary["wall_seconds"] / summary["epochs"] / median,
            "epochs": summary["epochs"], "test_accuracy": summary["test_accuracy"],
            "params_sha256": summary["params_sha256"]}


def run(names: list[str], repeats: int = 1, root: str | None = None,
        overrides: tuple[str, ...] = ()) -> dict:
    """``{preset: {"cold": medians, "warm": medians}}`` over ``repeats`` rounds.

    ``root`` holds the scratch workdirs and caches (default: the system's
    temporary directory); ``overrides`` go to every run (`run_once`).
    """
    unknown = sorted(set(names) - set(preset_names()))
    if unknown:
        raise ValueError(f"unknown presets {unknown}; choose from {preset_names()}")
    runs = {name: {"cold": [], "warm": []} for name in names}
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        for repeat in range(repeats):
            for name in names:
                base = pathlib.Path(scratch, f"{name}-{repeat}")
                for mode in ("cold", "warm"):   # warm reuses the cache cold filled
                    runs[name][mode].append(run_once(name, base / mode, base / "cache",
                                                     overrides))
    return {name: {mode: _medians(rows) for mode, rows in modes.items()}
            for name, modes in runs.items()}


def _medians(rows: list[dict]) -> dict:
    first = rows[0]
    out = {k: statistics.median(r[k] for r in rows) for k, v in first.items()
           if isinstance(v, float)}
    out.update(epochs=first["epochs"], params_sha256=first["params_sha256"],
               same_result=all(r["params_sha256"] == first["params_sha256"] for r in rows))
    return out


def table(report: dict) -> str:
    """The report as a fixed-width table, one line per preset and mode."""
    columns = [*PHASES, "first_epoch", "median_epoch", "wall_over_median"]
    lines = ["preset".ljust(26) + "mode".ljust(6) + "".join(c[:12].rjust(13) for c in columns)
             + "  test_acc  params_sha256"]
    for name, modes in report.items():
        for mode, r in modes.items():
            lines.append(name.ljust(26) + mode.ljust(6)
                         + "".join(f"{r[c]:.3f}".rjust(13) for c in columns)
                         + f"  {r['test_accuracy']:.4f}  {r['params_sha256'][:12]}")
    return "\n".join(lines)
