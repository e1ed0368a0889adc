"""LaPerm studies of Qiu & Suda (NeurIPS 2020) at CPU scale.

    python -m experiments.laperm_sweeps \
        --studies=optimizers,k,pruned,agnostic,ranking \
        --out_dir=experiments/results/laperm

Each study writes a JSON file of one record per run (written after every
run, so an interrupted study resumes where it stopped) and a PNG:

* ``optimizers``: LaPerm (Adam inside, sync every ``sync_period`` steps)
  against plain Adam and ``optax.lookahead`` (Adam, k=5, alpha 0.5: Zhang et
  al.'s defaults) from the same initial weights, test accuracy per epoch,
  for each ``--models`` (paper Fig. 4/6);
* ``k``: LaPerm's final accuracy against the sync period ``ks`` on
  LeNet-300-100, with Adam as a dashed line (Fig. 5a);
* ``pruned``: LaPerm from initial weights with a fraction ``--prune`` of
  every kernel randomly zeroed (the first layer keeps >= 80%, as the
  reference), against Adam from the same pruned weights (Fig. 5f/8);
* ``agnostic``: the weight-agnostic networks of Sec. 5.5: F1 (784-10, 3/7
  pruned, every remaining weight 0.08) and F2 (784-128-64-10, 93/86/67%
  pruned per layer, weights 0.03), LaPerm with k=250 in the reference
  notebook's setup (`agnostic_study`), test accuracy per epoch (the paper
  reports ~85.5% and 78.1% on MNIST; here Fashion-MNIST);
* ``ranking``: how far weights move in rank within their vectors
  (`randjax.analysis.ranking_distance` between consecutive epochs) while
  LeNet-300-100 trains with SGD, Adam, Adam + dropout 0.5 and Adam + L2
  (Fig. 3/12), per layer; an "epoch" here is ``ranking_train_limit``
  images, so the curve has ``ranking_epochs`` points.

Every LaPerm run reports accuracy right after a sync (the config's
``laperm_eval="synced"``). Runs follow the reference's setup
(`experiments/configs/laperm.py`: He-uniform kernels, zero biases, Adam lr
1e-3, batch 128, biases included in the sync, as the LaPerm preset), on
``dataset`` with no validation split; Adam and Lookahead start from the same
initial weights. The settings are the fields of `get_config` (each a flag of
its name); the budget keeps all studies within about an hour on a 2-core
CPU; the paper trains tens of epochs. From Python:
``optimizers_study(get_config(), out_dir)``.
"""

from __future__ import annotations

import functools
import pathlib
import tempfile

import jax
import ml_collections
from absl import app

import randjax
from experiments import sweeps, train
from experiments.sweeps import Records, plot, plot_panels
from randjax import data as data_lib
from randjax.methods import laperm

HELP = {
    "studies": "Which studies to run.",
    "out_dir": "Where the JSON records and PNGs go.",
    "dataset": "Data set (randjax.data.load).",
    "models": "Models of the optimizer comparison.",
    "sync_period": "LaPerm's k outside the k study.",
    "ks": "Sync periods of the k study.",
    "prune": "Pruned fractions.",
    "epochs": "Epochs per MLP run.",
    "conv_epochs": "Epochs per conv-net run.",
    "conv_train_limit": "Training images for conv nets (CPU budget); 0: all.",
    "agnostic_epochs": "Epochs of F1 and F2 (0: the notebook's 10 and 25).",
    "ranking_epochs": "Points of the ranking curves.",
    "ranking_train_limit": "Images per ranking 'epoch'.",
    "seed": "Seed of every run.",
}

_LENET = "lenet300_100"
# The study's run kinds: the registered method each trains with.
_METHODS = {"laperm": "laperm", "adam": "dense", "lookahead": "lookahead"}


def get_config() -> ml_collections.ConfigDict:
    """The studies' default settings (see `HELP`)."""
    return ml_collections.ConfigDict(dict(
        studies=("optimizers", "k", "pruned", "agnostic", "ranking"),
        out_dir="experiments/results/laperm", dataset="fashion_mnist",
        models=(_LENET, "conv7"), sync_period=20,
        ks=(1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000), prune=(0.0, 0.3, 0.5, 0.7),
        epochs=5, conv_epochs=2, conv_train_limit=10_000, agnostic_epochs=0,
        ranking_epochs=20, ranking_train_limit=6_000, seed=0))


def run_config(study, kind: str, model: str, **overrides) -> ml_collections.ConfigDict:
    """One run's config: ``laperm``, ``adam`` or ``lookahead``, the budget, overrides.

    Every kind starts from the LaPerm preset's initial weights (He-uniform
    kernels) and Adam 1e-3; LaPerm syncs every ``study.sync_period`` steps,
    biases included; LeNet has biases (the LaPerm preset's LeNet).
    """
    config = sweeps.run_config(study, _METHODS[kind], model, init="kaiming_uniform")
    if kind == "laperm":
        config.update(sync_period=study.sync_period, laperm_include_1d=True)
    if model == _LENET:
        config.use_bias = True
    config.update(**overrides)
    return config


def _run(study, records: Records, name: str, kind: str, model: str, *, start=None,
         fit_kwargs=None, measure=None, **overrides) -> dict:
    config = run_config(study, kind, model, **overrides)
    if start is not None:
        fit_kwargs = {**(fit_kwargs or {}), "reparam": randjax.dense_from(start)}
    return records.run(name, config, measure=measure, fit_kwargs=fit_kwargs,
                       method=kind, model=model, **overrides)


def _curve(row) -> list[tuple[int, float]]:
    return list(enumerate(row["test_accuracy_per_epoch"], 1))


def _export_sizes(config: ml_collections.ConfigDict):
    """A `Records.run` measure: the trained network's `save_permuted` sizes."""

    def measure(result) -> dict:
        state = result.state
        params = laperm.synced_params(state.trainable, state.opt_state)
        dataset = data_lib.load(config.dataset, val_fraction=0.0)
        model = train.make_model(config, dataset.num_classes)
        sizes = {}
        with tempfile.TemporaryDirectory() as tmp:
            for lehmer in (False, True):
                info = laperm.save_permuted(
                    pathlib.Path(tmp) / "net", params, model,
                    randjax.train.model_key(config.seed), dataset.input_shape,
                    include_1d=config.laperm_include_1d, lehmer=lehmer)
                name = "lehmer" if lehmer else "indices"
                sizes.update({f"export_bytes_{name}": info.bytes,
                              f"export_ratio_{name}": info.ratio})
        sizes["float32_bytes"] = info.float32_bytes
        return sizes

    return measure


def optimizers_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    run = functools.partial(_run, study, Records(out / "optimizers.json"))
    panels = {}
    for model in study.models:
        series = {opt: _curve(run(
            f"{model}/{opt}", opt, model,
            measure=_export_sizes(run_config(study, opt, model)) if opt == "laperm"
            else None))
            for opt in _METHODS}
        panels[model] = (series, {})
        plot_panels(out / "optimizers.png", panels, "epoch")


def k_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    run = functools.partial(_run, study, Records(out / "k.json"))
    series = {"LaPerm (Adam inside)": [
        (k, run(f"k/{k}", "laperm", _LENET, sync_period=k)["test_accuracy"])
        for k in study.ks]}
    adam = run("adam", "adam", _LENET)["test_accuracy"]
    plot(out / "k.png", f"LeNet-300-100 on {study.dataset}: sync period", series,
         {"Adam": adam}, "sync period k", "log")


def _pruned(fraction: float):
    def start(key, params):
        if fraction == 0:
            return params
        return laperm.random_prune(jax.random.fold_in(key, 7), params, 1 - fraction)

    return start


def pruned_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    run = functools.partial(_run, study, Records(out / "pruned.json"))
    series = {opt: [(p, run(f"{opt}/{p:g}", opt, _LENET,
                            start=_pruned(p))["test_accuracy"])
                    for p in study.prune]
              for opt in ("laperm", "adam")}
    plot(out / "pruned.png", f"LeNet-300-100 on {study.dataset}: pruned init", series, {},
         "fraction of initial weights pruned")


def _layer(name: str):
    return lambda path, leaf: leaf.ndim >= 2 and name in str(path)


def _agnostic(densities: tuple[float, ...], value: float):
    """Prune layer ``Dense_i`` to ``densities[i]``, then one shared value."""

    def start(key, params):
        for i, density in enumerate(densities):
            params = laperm.random_prune(
                jax.random.fold_in(key, i), params, density, input_density=0.0,
                filter=_layer(f"Dense_{i}"))
        return laperm.shared_value(params, value)

    return start


def agnostic_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    """F1 and F2 as ihsuy/Train-by-Reconnect ``notebooks/F1_and_F2.ipynb``.

    Kept fractions 4/7 (F1) and 1/15, 1/7, 1/3 (F2), as its ``agnosticize``
    ratios; shared values 0.08 and 0.03; inputs scaled to [0, 1] (no
    standardisation); Adam 1e-3 times 0.95 per epoch; k=250; F1 10 and F2
    25 epochs. The notebook's L2 1e-4 on F2's two hidden kernels is weight
    decay 2e-4 (the same gradient) here on all three kernels.
    """
    run = functools.partial(_run, study, Records(out / "agnostic.json"))
    networks = {"F1": ("f1", (4 / 7,), 0.08, 10, 0.0),
                "F2": ("f2", (1 / 15, 1 / 7, 1 / 3), 0.03, 25, 2e-4)}
    series = {}
    for name, (model, densities, value, epochs, decay) in networks.items():
        epochs = study.agnostic_epochs or epochs
        row = run(name, "laperm", model, start=_agnostic(densities, value),
                   sync_period=250, epochs=epochs, use_bias=False, normalize="unit",
                   weight_decay=decay, schedule="step", lr_gamma=0.95,
                   lr_milestones=tuple(range(1, epochs)))
        kept = "/".join(f"{d:.3f}" for d in densities)
        series[f"{name} (value {value}, kept {kept})"] = _curve(row)
    plot(out / "agnostic.png", f"weight-agnostic LaPerm on {study.dataset}", series, {},
         "epoch")


class _RankingMonitor:
    """An epoch hook: each kernel's ranking distance since the previous epoch."""

    def __init__(self):
        self.previous = None

    def __call__(self, epoch, state):
        del epoch
        kernels = {"/".join(str(k.key) for k in path): leaf for path, leaf in
                   jax.tree_util.tree_flatten_with_path(state.trainable)[0]
                   if leaf.ndim >= 2}
        record = {}
        if self.previous is not None:
            for name, kernel in kernels.items():
                mean, std = randjax.analysis.ranking_distance(self.previous[name], kernel)
                record[f"ranking/{name}"] = [float(mean), float(std)]
        self.previous = {name: jax.numpy.copy(k) for name, k in kernels.items()}
        return record


def _ranking_curves(result) -> dict:
    names = sorted({k for r in result.history for k in r if k.startswith("ranking/")})
    return {"ranking_distance": {
        name: [r.get(name) for r in result.history] for name in names}}


def ranking_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    run = functools.partial(_run, study, Records(out / "ranking.json"))
    runs = {"SGD": ("adam", {"optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.0}),
            "Adam": ("adam", {}),
            "Adam + dropout 0.5": ("adam", {"dropout": 0.5}),
            "Adam + L2 1e-4": ("adam", {"weight_decay": 1e-4})}
    curves = {}
    for label, (method, overrides) in runs.items():
        row = run(label, method, _LENET, measure=_ranking_curves,
                  fit_kwargs={"epoch_hook": _RankingMonitor()},
                  epochs=study.ranking_epochs, train_limit=study.ranking_train_limit,
                  **overrides)
        curves[label] = row["ranking_distance"]
    layers = sorted(next(iter(curves.values())))
    panels = {layer.removeprefix("ranking/"): (
        {label: [(epoch, value[0]) for epoch, value in enumerate(curve[layer], 1)
                 if value is not None] for label, curve in curves.items()}, {})
        for layer in layers}
    plot_panels(out / "ranking.png", panels, f"epoch ({study.ranking_train_limit} images)",
                ylabel="mean ranking distance")


STUDIES = {"optimizers": optimizers_study, "k": k_study, "pruned": pruned_study,
           "agnostic": agnostic_study, "ranking": ranking_study}


if __name__ == "__main__":
    sweeps.define_flags(get_config(), HELP)
    app.run(functools.partial(sweeps.main, get_config, STUDIES))
