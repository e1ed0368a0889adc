"""Edge-popup studies of Ramanujan et al. (CVPR 2020) at CPU scale.

    python -m experiments.edge_popup_sweeps --studies=density,width,init,supermask \
        --out_dir=experiments/results/edge_popup

Four studies, each a JSON file of one record per run (written after every run,
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
128, no biases), dense baselines hidden-networks' (`dense.hidden_networks`:
SGD lr 0.01). The settings are the fields of `get_config` (each a flag of
its name); the budget (``epochs``, ``conv_epochs``, ``conv_train_limit``)
keeps a full run within about an hour on a 2-core CPU; the paper trains 100
epochs on CIFAR-10. From Python: ``density_sweep(get_config(), out_dir)``.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import ml_collections
from absl import app

from experiments import sweeps
from experiments.configs import dense
from experiments.sweeps import Records, plot

HELP = {
    "studies": "Which studies to run.",
    "out_dir": "Where the JSON records and PNGs go.",
    "dataset": "Data set (randjax.data.load).",
    "models": "Models of the density sweep.",
    "densities": "Kept fractions.",
    "widths": "Conv4 width multipliers.",
    "epochs": "Epochs per LeNet run.",
    "conv_epochs": "Epochs per conv-net run.",
    "conv_train_limit": "Training images for conv nets (CPU budget); 0: all.",
    "seed": "Seed of every run.",
}


def get_config() -> ml_collections.ConfigDict:
    """The studies' default settings (see `HELP`)."""
    return ml_collections.ConfigDict(dict(
        studies=("density", "width", "init", "supermask"),
        out_dir="experiments/results/edge_popup", dataset="fashion_mnist",
        models=("lenet300_100", "conv2", "conv4"),
        densities=(0.05, 0.1, 0.3, 0.5, 0.7, 0.9), widths=(0.25, 0.5, 1.0),
        epochs=5, conv_epochs=2, conv_train_limit=10_000, seed=0))


def run_config(study, method: str, model: str, **overrides) -> ml_collections.ConfigDict:
    """The config of one run: the method's reference setup plus ``overrides``."""
    config = sweeps.run_config(study, method, model, use_bias=False,
                               schedule="cosine_epoch")
    if method == "dense":  # hidden-networks' learned baselines
        dense.hidden_networks(config)
    config.update(**overrides)
    return config


def _expected_density(result) -> dict:
    """A supermask's final expected kept fraction (mean sigmoid of its logits)."""
    logits = jax.tree.leaves(result.state.trainable)
    kept = sum(float(jax.nn.sigmoid(z).sum()) for z in logits)
    return {"expected_density": kept / sum(z.size for z in logits)}


def _run(study, records: Records, name: str, method: str, model: str,
         **overrides) -> dict:
    measure = _expected_density if method == "supermask" else None
    return records.run(name, run_config(study, method, model, **overrides),
                       measure=measure, method=method, model=model, **overrides)


def density_sweep(study: ml_collections.ConfigDict, out: pathlib.Path):
    run = functools.partial(_run, study, Records(out / "density.json"))
    series, baselines = {}, {}
    for model in study.models:
        baselines[model] = run(f"{model}/dense", "dense", model)["test_accuracy"]
        series[model] = [(d, run(f"{model}/{d}", "edge_popup", model,
                                 density=d)["test_accuracy"])
                         for d in study.densities]
    plot(out / "density.png", f"edge-popup on {study.dataset}: kept fraction",
         series, baselines, "kept fraction (density)")


def width_sweep(study: ml_collections.ConfigDict, out: pathlib.Path):
    run = functools.partial(_run, study, Records(out / "width.json"))
    series = {}
    for density in (0.5, 0.3):
        series[f"edge-popup {density}"] = [
            (w, run(f"{w}/{density}", "edge_popup", "conv4", width=w,
                    density=density)["test_accuracy"])
            for w in study.widths]
    series["learned dense"] = [
        (w, run(f"{w}/dense", "dense", "conv4", width=w)["test_accuracy"])
        for w in study.widths]
    plot(out / "width.png", f"Conv4 on {study.dataset}: width", series, {},
         "width multiplier", "log2")


def init_sweep(study: ml_collections.ConfigDict, out: pathlib.Path):
    run = functools.partial(_run, study, Records(out / "init.json"))
    series = {}
    for init in ("kaiming_normal", "signed_constant", "scaled_kaiming_normal",
                 "scaled_signed_constant"):
        series[init] = [(d, run(f"{init}/{d}", "edge_popup", "lenet300_100",
                                init=init, density=d)["test_accuracy"])
                        for d in study.densities]
    baseline = run("dense", "dense", "lenet300_100")["test_accuracy"]
    plot(out / "init.png", f"LeNet-300-100 on {study.dataset}: weight init", series,
         {"LeNet-300-100": baseline}, "kept fraction (density)")


def supermask_sweep(study: ml_collections.ConfigDict, out: pathlib.Path):
    run = functools.partial(_run, study, Records(out / "supermask.json"))
    series = {"edge-popup": [(d, run(f"edge_popup/{d}", "edge_popup", "lenet300_100",
                                     density=d)["test_accuracy"])
                             for d in study.densities]}
    row = run("supermask", "supermask", "lenet300_100")
    series["supermask (learned density)"] = [(row["expected_density"], row["test_accuracy"])]
    baseline = run("dense", "dense", "lenet300_100")["test_accuracy"]
    plot(out / "supermask.png", f"LeNet-300-100 on {study.dataset}", series,
         {"LeNet-300-100": baseline}, "kept fraction (density)")


STUDIES = {"density": density_sweep, "width": width_sweep, "init": init_sweep,
           "supermask": supermask_sweep}


if __name__ == "__main__":
    sweeps.define_flags(get_config(), HELP)
    app.run(functools.partial(sweeps.main, get_config, STUDIES))
