"""What every study script shares: its config, resumable records, plots, ``main``.

A study script (``experiments/*_sweeps.py``) has a ``get_config()`` whose
``ml_collections.ConfigDict`` holds the studies to run, the data set, the
budget and the values swept, and one function per study,
``study(config, out)``: a notebook builds the config and calls them, the
command line overrides every field with a flag of its name (`define_flags`,
``--epochs=3 --models=conv2,conv4``) and runs `main`.

`run_config` is the config of one run (the method's registered reference
config, the study's budget, the run's overrides); `Records` keeps one
study's results as a JSON list, one record per run, written after every
run: a study that is interrupted and started again skips the runs it has.
`plot` draws accuracy lines with dashed baselines.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import ml_collections
from absl import app, flags, logging
from matplotlib import ticker

from experiments import compile_cache, registry, train

#: Models trained for ``config.epochs`` on every image; the others (conv
#: nets) for ``config.conv_epochs`` on the first ``config.conv_train_limit``.
MLPS = ("lenet300_100", "mlp400x3", "f1", "f2")


def run_config(study: ml_collections.ConfigDict, method: str, model: str,
               **overrides) -> ml_collections.ConfigDict:
    """One run's config: ``method``'s reference config, the study's budget, ``overrides``.

    The budget: ``study.dataset`` without a validation split, ``study.seed``,
    and ``study.epochs`` on every training image for the MLPs, or
    ``study.conv_epochs`` on the first ``study.conv_train_limit`` images (0:
    all) for the conv nets.
    """
    config = registry.get_config(method)
    mlp = model in MLPS
    config.update(dataset=study.dataset, val_fraction=0.0, model=model, seed=study.seed,
                  epochs=study.epochs if mlp else study.conv_epochs,
                  train_limit=None if mlp else (study.conv_train_limit or None))
    config.update(**overrides)
    return config


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

    def __init__(self, path: pathlib.Path, *, verbose: bool = True):
        self.path, self.verbose = path, verbose
        self.rows = json.loads(path.read_text()) if path.exists() else []

    def get(self, name: str) -> dict | None:
        return next((row for row in self.rows if row["name"] == name), None)

    def add(self, row: dict) -> dict:
        """Appends ``row`` and rewrites the file."""
        self.rows.append(row)
        self.path.write_text(json.dumps(self.rows, indent=1) + "\n")
        if self.verbose and "test_accuracy" in row:
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


def _unknown(studies: Mapping[str, Callable], config: ml_collections.ConfigDict) -> str:
    unknown = sorted(set(config.studies) - set(studies))
    return f"unknown studies {unknown}; choose from {list(studies)}" if unknown else ""


def run_studies(studies: Mapping[str, Callable], config: ml_collections.ConfigDict):
    """Runs ``studies[name](config, out)`` for each name in ``config.studies``.

    ``out`` is ``config.out_dir`` (created). Unknown names raise before any
    study runs.
    """
    unknown = _unknown(studies, config)
    if unknown:
        raise ValueError(unknown)
    out = pathlib.Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in config.studies:
        studies[name](config, out)
        print(f"wrote {out / name}.json and its figure", flush=True)


# ---------------------------------------------------------------------------
# The command line: one flag per field of the study's config.


def define_flags(defaults: ml_collections.ConfigDict, help: Mapping[str, str],
                 flag_values: flags.FlagValues = flags.FLAGS):
    """Defines an absl flag per field of ``defaults``, of its type and default.

    Tuples become list flags (``--ks=2,8``), converted back to the type of
    the default's items. ``help[name]`` describes each field. The
    compilation cache's flags (`experiments.compile_cache`) come with them.
    """
    compile_cache.define_flags(flag_values)
    for name, value in defaults.items():
        text = help.get(name, name)
        if isinstance(value, (tuple, list)):
            flags.DEFINE_list(name, [str(v) for v in value], text, flag_values=flag_values)
        elif isinstance(value, bool):
            flags.DEFINE_bool(name, value, text, flag_values=flag_values)
        elif isinstance(value, int):
            flags.DEFINE_integer(name, value, text, flag_values=flag_values)
        elif isinstance(value, float):
            flags.DEFINE_float(name, value, text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, value, text, flag_values=flag_values)


def config_from_flags(defaults: ml_collections.ConfigDict,
                      flag_values: flags.FlagValues = flags.FLAGS) -> ml_collections.ConfigDict:
    """``defaults`` with every field set from its flag (see `define_flags`)."""
    config = ml_collections.ConfigDict(defaults.to_dict())
    for name, value in defaults.items():
        given = flag_values[name].value
        if isinstance(value, (tuple, list)):
            kind = type(value[0]) if value else str
            given = tuple(kind(v) for v in given)
        config[name] = given
    return config


def main(get_config: Callable[[], ml_collections.ConfigDict],
         studies: Mapping[str, Callable], argv):
    """Every study script's ``main``: its config from the flags, then `run_studies`."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    compile_cache.use_from_flags()
    config = config_from_flags(get_config())
    unknown = _unknown(studies, config)
    if unknown:
        raise app.UsageError(unknown)
    run_studies(studies, config)
