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

import pathlib

import jax
import ml_collections
from absl import app, flags

from experiments.configs import dense, edge_popup, supermask
from experiments.sweeps import Records, plot, run_studies

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


def _expected_density(result) -> dict:
    """A supermask's final expected kept fraction (mean sigmoid of its logits)."""
    logits = jax.tree.leaves(result.state.trainable)
    kept = sum(float(jax.nn.sigmoid(l).sum()) for l in logits)
    return {"expected_density": kept / sum(l.size for l in logits)}


def _run(records: Records, name: str, method: str, model: str, **overrides) -> dict:
    measure = _expected_density if method == "supermask" else None
    return records.run(name, run_config(method, model, **overrides), measure=measure,
                       method=method, model=model, **overrides)


def _densities() -> list[float]:
    return [float(d) for d in _DENSITIES.value]


def density_sweep(out: pathlib.Path):
    records = Records(out / "density.json")
    series, baselines = {}, {}
    for model in _MODELS.value:
        baselines[model] = _run(records, f"{model}/dense", "dense", model)["test_accuracy"]
        series[model] = [(d, _run(records, f"{model}/{d}", "edge_popup", model,
                                         density=d)["test_accuracy"])
                         for d in _densities()]
    plot(out / "density.png", f"edge-popup on {_DATASET.value}: kept fraction",
          series, baselines, "kept fraction (density)")


def width_sweep(out: pathlib.Path):
    records = Records(out / "width.json")
    series, baselines = {}, {}
    for density in (0.5, 0.3):
        series[f"edge-popup {density}"] = [
            (float(w), _run(records, f"{w}/{density}", "edge_popup", "conv4", width=float(w),
                                   density=density)["test_accuracy"])
            for w in _WIDTHS.value]
    series["learned dense"] = [
        (float(w), _run(records, f"{w}/dense", "dense", "conv4", width=float(w))["test_accuracy"])
        for w in _WIDTHS.value]
    plot(out / "width.png", f"Conv4 on {_DATASET.value}: width", series, baselines,
          "width multiplier", "log2")


def init_sweep(out: pathlib.Path):
    records = Records(out / "init.json")
    series = {}
    for init in ("kaiming_normal", "signed_constant", "scaled_kaiming_normal",
                 "scaled_signed_constant"):
        series[init] = [(d, _run(records, f"{init}/{d}", "edge_popup", "lenet300_100",
                                        init=init, density=d)["test_accuracy"])
                        for d in _densities()]
    baseline = _run(records, "dense", "dense", "lenet300_100")["test_accuracy"]
    plot(out / "init.png", f"LeNet-300-100 on {_DATASET.value}: weight init", series,
          {"LeNet-300-100": baseline}, "kept fraction (density)")


def supermask_sweep(out: pathlib.Path):
    records = Records(out / "supermask.json")
    series = {"edge-popup": [(d, _run(records, f"edge_popup/{d}", "edge_popup", "lenet300_100",
                                             density=d)["test_accuracy"])
                             for d in _densities()]}
    row = _run(records, "supermask", "supermask", "lenet300_100")
    series["supermask (learned density)"] = [(row["expected_density"], row["test_accuracy"])]
    baseline = _run(records, "dense", "dense", "lenet300_100")["test_accuracy"]
    plot(out / "supermask.png", f"LeNet-300-100 on {_DATASET.value}", series,
          {"LeNet-300-100": baseline}, "kept fraction (density)")


SWEEPS = {"density": density_sweep, "width": width_sweep, "init": init_sweep,
          "supermask": supermask_sweep}


def main(argv):
    del argv
    run_studies(SWEEPS, _SWEEPS.value, _OUT_DIR.value, "sweeps")


if __name__ == "__main__":
    app.run(main)
