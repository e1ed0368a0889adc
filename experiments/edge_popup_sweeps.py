"""Edge-popup studies of Ramanujan et al. (CVPR 2020) at CPU scale.

    python -m experiments.edge_popup_sweeps --sweeps=density,width,init,supermask \
        --out_dir=experiments/results/edge_popup

Four sweeps, each a JSON file of one record per run (written after every run,
so an interrupted sweep resumes where it stopped) and a PNG:

* ``density``: accuracy against the kept fraction for each ``--models``, with
  the learned dense network of the same model as a horizontal line (paper
  Fig. 3);
* ``width``: Conv4 with width multipliers ``--widths`` at density 0.5 and
  0.3, dense baseline per width (Fig. 4);
* ``init``: kaiming normal, signed constant and their scaled variants over
  the densities (Fig. 7);
* ``supermask``: edge-popup against Zhou et al.'s supermask, whose density is
  learned (its final expected kept fraction is recorded) (Fig. 6).

Every run uses the reference's setup (`experiments/configs/edge_popup.py`:
SGD lr 0.1, momentum 0.9, weight decay 1e-4 on scores, cosine schedule, batch
128), dense baselines `experiments/configs/dense.py` with SGD lr 0.01 (as
hidden-networks' baselines). The budget flags (``--epochs``,
``--conv_epochs``, ``--conv_train_limit``) keep a full run within about an
hour on a 2-core CPU; the paper trains 100 epochs on CIFAR-10.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from experiments import train  # noqa: E402
from experiments.configs import dense, edge_popup, supermask  # noqa: E402

_SWEEPS = flags.DEFINE_list("sweeps", ["density", "width", "init", "supermask"],
                            "Which studies to run.")
_OUT_DIR = flags.DEFINE_string("out_dir", "experiments/results/edge_popup",
                               "Where the JSON records and PNGs go.")
_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", "Data set (randjax.data.load).")
_MODELS = flags.DEFINE_list("models", ["lenet300_100", "conv2", "conv4"],
                            "Models of the density sweep.")
_DENSITIES = flags.DEFINE_list("densities", ["0.05", "0.1", "0.3", "0.5", "0.7", "0.9"],
                               "Kept fractions.")
_WIDTHS = flags.DEFINE_list("widths", ["0.25", "0.5", "1.0"], "Conv4 width multipliers.")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "Epochs per LeNet run.")
_CONV_EPOCHS = flags.DEFINE_integer("conv_epochs", 2, "Epochs per conv-net run.")
_CONV_TRAIN_LIMIT = flags.DEFINE_integer(
    "conv_train_limit", 10_000, "Training images for conv nets (CPU budget); 0: all.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every run.")


def run_config(method: str, model: str, **overrides) -> ml_collections.ConfigDict:
    """The config of one run: the method's reference setup plus ``overrides``."""
    base = {"dense": dense, "edge_popup": edge_popup, "supermask": supermask}[method]
    config = base.get_config()
    conv = model != "lenet300_100"
    config.update(dataset=_DATASET.value, val_fraction=0.0, model=model, use_bias=False,
                  epochs=_CONV_EPOCHS.value if conv else _EPOCHS.value,
                  train_limit=(_CONV_TRAIN_LIMIT.value or None) if conv else None,
                  seed=_SEED.value, schedule="cosine_epoch")
    if method == "dense":  # hidden-networks' learned baselines
        config.update(optimizer="sgd", learning_rate=0.01, weight_decay=1e-4)
    config.update(**overrides)
    return config


class Records:
    """One sweep's JSON records, saved after each run; finished runs are skipped."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.rows = json.loads(path.read_text()) if path.exists() else []

    def run(self, name: str, method: str, model: str, **overrides) -> dict:
        for row in self.rows:
            if row["name"] == name:
                return row
        config = run_config(method, model, **overrides)
        start = time.perf_counter()
        result = train.train_and_evaluate(config, None, progress=False)
        row = {"name": name, "method": method, "model": model, **overrides,
               "epochs": config.epochs, "train_limit": config.train_limit,
               "test_accuracy": result.summary["test_accuracy"],
               "test_accuracy_per_epoch": [r["test_accuracy"] for r in result.history],
               "median_epoch_seconds": result.summary["median_epoch_seconds"],
               "wall_seconds": time.perf_counter() - start}
        if method == "supermask":
            logits = jax.tree.leaves(result.state.trainable)
            kept = sum(float(jax.nn.sigmoid(l).sum()) for l in logits)
            row["expected_density"] = kept / sum(l.size for l in logits)
        self.rows.append(row)
        self.path.write_text(json.dumps(self.rows, indent=1) + "\n")
        print(f"{self.path.stem}: {name}: test {row['test_accuracy']:.4f} "
              f"({row['wall_seconds']:.0f} s)", flush=True)
        return row


def _densities() -> list[float]:
    return [float(d) for d in _DENSITIES.value]


def _plot(path: pathlib.Path, title: str, series: dict, baselines: dict, xlabel: str,
          xscale: str = "linear"):
    """Lines of ``{label: [(x, accuracy)]}``; dashed horizontal ``baselines``."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    colors = {}
    for label, points in series.items():
        xs, ys = zip(*sorted(points))
        (line,) = ax.plot(xs, ys, "o-", label=label)
        colors[label] = line.get_color()
    for label, value in baselines.items():
        ax.axhline(value, ls="--", color=colors.get(label, "gray"),
                   label=f"{label}: learned dense")
    ax.set(xlabel=xlabel, ylabel="test accuracy", title=title, xscale=xscale)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def density_sweep(out: pathlib.Path):
    records = Records(out / "density.json")
    series, baselines = {}, {}
    for model in _MODELS.value:
        baselines[model] = records.run(f"{model}/dense", "dense", model)["test_accuracy"]
        series[model] = [(d, records.run(f"{model}/{d}", "edge_popup", model,
                                         density=d)["test_accuracy"])
                         for d in _densities()]
    _plot(out / "density.png", f"edge-popup on {_DATASET.value}: kept fraction",
          series, baselines, "kept fraction (density)")


def width_sweep(out: pathlib.Path):
    records = Records(out / "width.json")
    series, baselines = {}, {}
    for density in (0.5, 0.3):
        series[f"edge-popup {density}"] = [
            (float(w), records.run(f"{w}/{density}", "edge_popup", "conv4", width=float(w),
                                   density=density)["test_accuracy"])
            for w in _WIDTHS.value]
    series["learned dense"] = [
        (float(w), records.run(f"{w}/dense", "dense", "conv4", width=float(w))["test_accuracy"])
        for w in _WIDTHS.value]
    _plot(out / "width.png", f"Conv4 on {_DATASET.value}: width", series, baselines,
          "width multiplier", "log")


def init_sweep(out: pathlib.Path):
    records = Records(out / "init.json")
    series = {}
    for init in ("kaiming_normal", "signed_constant", "scaled_kaiming_normal",
                 "scaled_signed_constant"):
        series[init] = [(d, records.run(f"{init}/{d}", "edge_popup", "lenet300_100",
                                        init=init, density=d)["test_accuracy"])
                        for d in _densities()]
    baseline = records.run("dense", "dense", "lenet300_100")["test_accuracy"]
    _plot(out / "init.png", f"LeNet-300-100 on {_DATASET.value}: weight init", series,
          {"LeNet-300-100": baseline}, "kept fraction (density)")


def supermask_sweep(out: pathlib.Path):
    records = Records(out / "supermask.json")
    series = {"edge-popup": [(d, records.run(f"edge_popup/{d}", "edge_popup", "lenet300_100",
                                             density=d)["test_accuracy"])
                             for d in _densities()]}
    row = records.run("supermask", "supermask", "lenet300_100")
    series["supermask (learned density)"] = [(row["expected_density"], row["test_accuracy"])]
    baseline = records.run("dense", "dense", "lenet300_100")["test_accuracy"]
    _plot(out / "supermask.png", f"LeNet-300-100 on {_DATASET.value}", series,
          {"LeNet-300-100": baseline}, "kept fraction (density)")


SWEEPS = {"density": density_sweep, "width": width_sweep, "init": init_sweep,
          "supermask": supermask_sweep}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    unknown = set(_SWEEPS.value) - set(SWEEPS)
    if unknown:
        raise app.UsageError(f"unknown --sweeps {sorted(unknown)}; choose from {list(SWEEPS)}")
    out = pathlib.Path(_OUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    for name in _SWEEPS.value:
        SWEEPS[name](out)
        print(f"wrote {out / name}.json and .png", flush=True)


if __name__ == "__main__":
    app.run(main)
