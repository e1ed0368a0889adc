"""What every sweep script shares: resumable JSON records, plots, the main loop.

`Records` keeps one sweep's results as a JSON list, one record per run,
written after every run: a sweep that is interrupted and started again skips
the runs it has. `plot` draws accuracy lines with dashed baselines;
`dense_from` starts dense training from transformed weights; `run_studies`
is every sweep script's ``main``.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import ml_collections
from absl import app, logging
from matplotlib import ticker

import randjax
from experiments import train


def result_row(name: str, config: ml_collections.ConfigDict, result, **fields) -> dict:
    """The record of one `randjax.fit` result: ``fields``, accuracy, timings."""
    return {"name": name, **fields, "epochs": config.epochs,
            "train_limit": config.train_limit,
            "test_accuracy": result.summary["test_accuracy"],
            "test_accuracy_per_epoch": [r["test_accuracy"] for r in result.history],
            "median_epoch_seconds": result.summary["median_epoch_seconds"],
            "wall_seconds": result.summary["wall_seconds"]}


class Records:
    """One sweep's JSON records, saved after each run; finished runs are skipped."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.rows = json.loads(path.read_text()) if path.exists() else []

    def get(self, name: str) -> dict | None:
        return next((row for row in self.rows if row["name"] == name), None)

    def add(self, row: dict) -> dict:
        """Appends ``row`` and rewrites the file."""
        self.rows.append(row)
        self.path.write_text(json.dumps(self.rows, indent=1) + "\n")
        if "test_accuracy" in row:
            print(f"{self.path.stem}: {row['name']}: test {row['test_accuracy']:.4f} "
                  f"({row['wall_seconds']:.0f} s)", flush=True)
        return row

    def run(self, name: str, config: ml_collections.ConfigDict, *,
            measure: Callable[[Any], dict] | None = None, fit_kwargs: dict | None = None,
            **fields) -> dict:
        """Trains ``config`` unless ``name`` is recorded; returns its record.

        The record is `result_row` plus ``measure(result)`` (of the
        `randjax.train.FitResult`) if given; ``fit_kwargs`` go to `randjax.fit`.
        """
        row = self.get(name)
        if row is not None:
            return row
        result = train.train_and_evaluate(config, None, progress=False,
                                          **(fit_kwargs or {}))
        return self.add({**result_row(name, config, result, **fields),
                         **(measure(result) if measure else {})})


def plot(path: pathlib.Path, title: str, series: dict, baselines: dict, xlabel: str,
         xscale: str = "linear", ylabel: str = "test accuracy"):
    """Lines of ``{label: [(x, y)]}``; dashed horizontal ``baselines``.

    A baseline whose label is also a series' label takes that line's colour.
    """
    plot_panels(path, {title: (series, baselines)}, xlabel, xscale, ylabel)


def plot_panels(path: pathlib.Path, panels: dict, xlabel: str, xscale: str = "linear",
                ylabel: str = "test accuracy"):
    """One `plot` panel per ``{title: (series, baselines)}``, side by side."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 3.8),
                             squeeze=False)
    for ax, (title, (series, baselines)) in zip(axes[0], panels.items()):
        colors = {}
        for label, points in series.items():
            xs, ys = zip(*sorted(points))
            (line,) = ax.plot(xs, ys, "o-", label=label)
            colors[label] = line.get_color()
        for label, value in baselines.items():
            ax.axhline(value, ls="--", color=colors.get(label, "gray"),
                       label=f"{label}: learned dense")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if xscale == "log2":  # K, widths: ticks at the measured values
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({x for points in series.values() for x, _ in points}))
            ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
            ax.xaxis.set_minor_locator(ticker.NullLocator())
        else:
            ax.set_xscale(xscale)
            if xscale == "linear" and all(isinstance(x, int) for pts in series.values()
                                          for x, _ in pts):
                ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dense_from(transform: Callable[[Any, Any], Any]) -> randjax.Reparam:
    """Dense training from ``transform(key, model_params)`` instead of the init.

    ``transform`` returns parameters of the model's structure: pruned or
    single-valued initial weights, or trained weights to fine-tune.
    """
    base = randjax.dense()

    def init(key, params):
        start = transform(key, params)
        jax.tree.map(lambda a, b: None, params, start)  # raises on another structure
        return base.init(key, start)

    return randjax.Reparam(init, base.apply)


def run_studies(studies: dict[str, Callable[[pathlib.Path], None]], names: list[str],
                out_dir: str, flag: str = "studies"):
    """Runs ``studies[name](out)`` for each of ``names`` (``--flag``) into ``out_dir``."""
    logging.set_verbosity(logging.WARNING)
    unknown = set(names) - set(studies)
    if unknown:
        raise app.UsageError(f"unknown --{flag} {sorted(unknown)}; choose from {list(studies)}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        studies[name](out)
        print(f"wrote {out / name}.json and its figure", flush=True)
