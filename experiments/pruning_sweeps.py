"""Pruning studies of Mikler's thesis (2021) at CPU scale, on Fashion-MNIST.

    python -m experiments.pruning_sweeps --studies=mlps,convs \
        --out_dir=experiments/results/pruning

Two studies, each a JSON file of one record per run (written after every run,
so an interrupted study resumes where it stopped; the rounds of a run resume
too) and a PNG of test accuracy against density (log x, as Mikler's Fig. 3.2):

* ``mlps``: FT, WR, SWR, LRR and sGIMP (rewind ``rewind_fraction``) on
  ``--mlps`` (LeNet-300-100, the 784-3x400 MLP), each round keeping
  ``mlp_multiplier`` of the weights down to ``mlp_target``; beside them, at
  the ``baseline_densities``, one-shot magnitude pruning of the dense
  network retrained by LRR, and SNIP and random pruning at initialisation;
* ``convs``: ``conv_variants`` on ``--convs`` (Conv2, Conv4, ResNet-20
  with BatchNorm) with a smaller budget (``conv_epochs`` per round on the
  first ``conv_train_limit`` images, ``conv_multiplier`` per round,
  ``conv_learning_rate``: Conv2 and Conv4 have no BatchNorm and diverge at
  the MLPs' 0.1).

Every run is one `experiments.prune` config (`experiments/configs/gimp.py`):
global magnitude pruning of every kernel (Mikler: first and last layer
included), exact counts, a fresh optimizer per round, SGD with Nesterov
momentum 0.9 and Mikler's L2 in the loss (``l2``), the learning rate
multiplied by 0.1 at half and three quarters of each round, Mikler's
shipped-config convention (every retraining restarts the schedule and runs
the full length; SWR rewinds to step ``swr_epochs`` epochs into the dense
run). Each record holds the run's rounds and its wall time. From Python:
``mlp_study(get_config(), out_dir)``. The committed results are
``--studies=mlps``, ``--studies=convs --convs=conv2,conv4`` and
``--studies=convs --convs=resnet20 --conv_variants=ft,lrr,sgimp
--out_dir=experiments/results/pruning/resnet20`` (see the README).
"""

from __future__ import annotations

import pathlib

import ml_collections
from absl import app, flags

from experiments import compile_cache, prune, sweeps, train
from experiments.configs import gimp
from experiments.sweeps import Records

HELP = {
    "studies": "Which studies to run.",
    "out_dir": "Where the JSON records and PNGs go.",
    "work_dir": "Where the runs' rounds and checkpoints go.",
    "dataset": "Data set (randjax.data.load).",
    "mlps": "Models of the mlps study.",
    "convs": "Models of the convs study.",
    "variants": "GIMP variants of the mlps study (experiments/configs/gimp.py).",
    "conv_variants": "GIMP variants of the convs study.",
    "epochs": "Epochs per round of the MLPs.",
    "conv_epochs": "Epochs per round of the conv nets.",
    "conv_train_limit": "Training images of the conv nets (CPU budget); 0: all.",
    "mlp_multiplier": "Kept share of the remaining weights per round (MLPs).",
    "mlp_target": "Last density of the MLPs' iterative runs.",
    "conv_multiplier": "Kept share per round (conv nets).",
    "conv_target": "Last density of the conv nets.",
    "baseline_densities": "Densities of the one-shot, SNIP and random baselines (MLPs).",
    "rewind_fraction": "sGIMP's rewind, as a fraction of a round's steps.",
    "swr_epochs": "SWR's rewind point, in epochs of the dense run.",
    "learning_rate": "SGD's initial learning rate (MLPs).",
    "conv_learning_rate": "SGD's initial learning rate (conv nets).",
    "l2": "Mikler's l2 * sum(w^2) in the loss.",
    "seed": "Seed of every run.",
}


#: What a study record keeps of each round (the mask fields: criterion="tom").
ROUND_FIELDS = ("round", "density", "density_all", "test_accuracy", "train_loss", "steps",
                "seconds", "mask_steps", "mask_test_accuracy", "mask_expected_density")


def get_config() -> ml_collections.ConfigDict:
    """The studies' default settings (see `HELP`)."""
    return ml_collections.ConfigDict(dict(
        studies=("mlps", "convs"), out_dir="experiments/results/pruning",
        work_dir="runs/pruning_sweeps", dataset="fashion_mnist",
        mlps=("lenet300_100", "mlp400x3"), convs=("conv2", "conv4", "resnet20"),
        variants=("ft", "wr", "swr", "lrr", "sgimp"),
        conv_variants=("ft", "wr", "lrr", "sgimp"), epochs=4, conv_epochs=2,
        conv_train_limit=2000, mlp_multiplier=0.7, mlp_target=0.02,
        conv_multiplier=0.5, conv_target=0.07,
        baseline_densities=(0.3, 0.1, 0.05, 0.02), rewind_fraction=0.75, swr_epochs=1,
        learning_rate=0.1, conv_learning_rate=0.01, l2=5e-5, seed=0))


def run_config(study: ml_collections.ConfigDict, model: str, **overrides):
    """One `experiments.prune` config: Mikler's optimiser on the study's budget."""
    config = gimp.get_config()
    mlp = model in sweeps.MLPS
    epochs = study.epochs if mlp else study.conv_epochs
    config.update(
        dataset=study.dataset, val_fraction=0.0, model=model, seed=study.seed,
        epochs=epochs, train_limit=None if mlp else (study.conv_train_limit or None),
        optimizer="sgd", learning_rate=study.learning_rate if mlp else study.conv_learning_rate,
        momentum=0.9, nesterov=True,
        weight_decay=0.0, l2=study.l2, schedule="step",
        lr_milestones=(epochs // 2, (3 * epochs) // 4) if epochs >= 4 else (epochs - 1,),
        lr_gamma=0.1, batch_size=128, checkpoint_every=epochs,
        density_multiplier=study.mlp_multiplier if mlp else study.conv_multiplier,
        target_density=study.mlp_target if mlp else study.conv_target)
    config.update(**overrides)
    return config


def variant_config(study, model: str, variant: str) -> ml_collections.ConfigDict:
    """The iterative run of ``variant`` on ``model``."""
    config = run_config(study, model, variant=variant)
    if variant == "sgimp":
        config.rewind_fraction = study.rewind_fraction
    if variant == "swr":
        dataset = train.load_dataset(config)
        config.rewind_step = study.swr_epochs * train.epoch_length(config, len(dataset.train.y))
    return config


def run_record(study, records: Records, name: str, config: ml_collections.ConfigDict) -> dict:
    """Runs (or resumes) one pruning config; its record holds every round."""
    row = records.get(name)
    if row is not None:
        return row
    workdir = pathlib.Path(study.work_dir) / records.path.stem / name
    summary = prune.run(config, workdir, progress=False)
    rounds = prune.read_rounds(workdir)
    return records.add({
        "name": name, "model": config.model, "variant": config.variant,
        "pruning": config.pruning, "criterion": config.criterion,
        "epochs": config.epochs, "train_limit": config.train_limit,
        "test_accuracy": summary["test_accuracy"], "density": summary["density"],
        "wall_seconds": summary["seconds"],
        "rounds": [{k: r[k] for k in ROUND_FIELDS if k in r} for r in rounds]})


def _variants(study, records, model: str, variants) -> dict:
    """Each variant's iterative run on ``model``: ``{label: [(density, accuracy)]}``."""
    series = {}
    for variant in variants:
        row = run_record(study, records, f"{model}/{variant}",
                         variant_config(study, model, variant))
        label = (f"sGIMP ({100 * study.rewind_fraction:.0f}%)" if variant == "sgimp"
                 else variant.upper())
        series[label] = [(r["density"], r["test_accuracy"]) for r in row["rounds"]]
    return series


def _plot(out: pathlib.Path, name: str, panels: dict, title: str):
    sweeps.plot_panels(out / f"{name}.png",
                       {f"{model} {title}": (lines, {}) for model, lines in panels.items()},
                       "density (kept fraction of the kernels)", "log")


def mlp_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    records = Records(out / "mlps.json")
    panels = {}
    for model in study.mlps:
        series = _variants(study, records, model, study.variants)
        for label, overrides in (("one-shot magnitude + LRR",
                                  dict(pruning="oneshot", variant="lrr")),
                                 ("SNIP at init", dict(pruning="at_init", criterion="snip")),
                                 ("random at init", dict(pruning="at_init",
                                                         criterion="random"))):
            points = []
            for density in study.baseline_densities:
                config = run_config(study, model, target_density=density, **overrides)
                row = run_record(study, records, f"{model}/{label}/{density}", config)
                points.append((row["density"], row["test_accuracy"]))
            series[label] = points
        panels[model] = series
    _plot(out, "mlps", panels, f"on {study.dataset}")


def conv_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    records = Records(out / "convs.json")
    panels = {model: _variants(study, records, model, study.conv_variants)
              for model in study.convs}
    _plot(out, "convs", panels, f"on {study.conv_train_limit} {study.dataset} images")


STUDIES = {"mlps": mlp_study, "convs": conv_study}


def cached_main(get_config, studies, argv):
    """`sweeps.main` with XLA's programs kept in ``--work_dir``'s ``xla_cache/``.

    Every round of a pruning run recompiles the previous round's programs.
    """
    compile_cache.use(pathlib.Path(flags.FLAGS.work_dir) / "xla_cache")
    sweeps.main(get_config, studies, argv)


def main(argv):
    cached_main(get_config, STUDIES, argv)


if __name__ == "__main__":
    sweeps.define_flags(get_config(), HELP)
    app.run(main)
