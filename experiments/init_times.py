"""Seconds `randjax.train.init_state` takes for each zoo model, cold and warm.

    python -m experiments.benchmark --init_times=all
    python -m experiments.benchmark --init_times=lenet300_100,resnet20 --init_method=laperm
    python -m experiments.benchmark --init_times=all --repeats=3   # medians of 3 rounds

Each model is initialised in its own process (``python -m
experiments.init_times --model=<name> --compilation_cache_dir=<dir>``), on
28x28x1 inputs with 10 classes: **cold** with an empty compilation cache,
then **warm** with the cache the cold run filled, as a second run of the
same config finds it. The time is that of `init_state` (the model's, the
method's and the optimizer's initial state, one jitted program) until its
arrays are ready: tracing, lowering, compiling or loading the program, and
running it. ``init_method`` picks the method's and optimizer's init: the
dense network with SGD (momentum 0.9), or LaPerm around Adam, which sorts
every weight vector.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import optax
from absl import app, flags

import randjax
from experiments import compile_cache

METHODS = ("dense", "laperm")
_REPO = pathlib.Path(__file__).resolve().parent.parent


def init_seconds(model_name: str, method: str = "dense") -> float:
    """Seconds of one `init_state` of the zoo's ``model_name`` on 28x28x1, 10 classes."""
    model = randjax.models.get(model_name, num_classes=10)
    tx = optax.sgd(0.1, momentum=0.9)
    if method == "laperm":
        tx = randjax.laperm(optax.adam(1e-3), 20)
    elif method != "dense":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    start = time.perf_counter()
    state = randjax.train.init_state(model, randjax.dense(), tx, (28, 28, 1),
                                     jax.random.key(0))
    jax.block_until_ready(state)
    return time.perf_counter() - start


def measure(names: list[str], method: str = "dense", root: str | None = None,
            repeats: int = 1) -> dict:
    """``{model: {"cold": seconds, "warm": seconds}}``: medians of ``repeats`` rounds.

    Every run is a fresh process; in every round each model runs cold (an
    empty cache of its own) then warm, the models taking turns, so a slow
    minute on a shared machine hits them alike.

    Raises:
        ValueError: a name that is not a zoo model.
    """
    unknown = sorted(set(names) - set(randjax.models.names()))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {randjax.models.names()}")
    runs = {name: {"cold": [], "warm": []} for name in names}
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        for round_ in range(repeats):
            for name in names:
                cache = pathlib.Path(scratch, f"{name}-{round_}")
                for seconds in runs[name].values():   # cold, then warm
                    seconds.append(_one_process(name, method, cache))
    return {name: {mode: statistics.median(s) for mode, s in modes.items()}
            for name, modes in runs.items()}


def _one_process(name: str, method: str, cache: pathlib.Path) -> float:
    command = [sys.executable, "-m", "experiments.init_times", f"--model={name}",
               f"--method={method}", f"--compilation_cache_dir={cache}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=_REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(_REPO)})
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["init_seconds"]


def table(report: dict) -> str:
    """The report as a fixed-width table, one line per model."""
    lines = ["model".ljust(16) + "cold".rjust(9) + "warm".rjust(9)]
    lines += [name.ljust(16) + f"{r['cold']:.3f}".rjust(9) + f"{r['warm']:.3f}".rjust(9)
              for name, r in report.items()]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    compile_cache.use_from_flags()
    gc.freeze()   # as experiments.train does: init_state timed as a run finds it
    seconds = init_seconds(flags.FLAGS.model, flags.FLAGS.method)
    print(json.dumps({"model": flags.FLAGS.model, "init_seconds": seconds}))


if __name__ == "__main__":
    flags.DEFINE_string("model", None, "Zoo model name (randjax.models.names()).",
                        required=True)
    flags.DEFINE_enum("method", "dense", METHODS, "The method's and optimizer's init.")
    compile_cache.define_flags()
    app.run(main)
