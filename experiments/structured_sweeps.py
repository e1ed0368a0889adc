"""Heitmann's structured-pruning and redundancy analyses on Fashion-MNIST.

    python -m experiments.structured_sweeps --out_dir=experiments/results/structured

Every study reads the networks `trained` once per model (``--models``:
LeNet-300-100 and Conv-2, trained as the report says, up to the budget;
each run's ``metrics.jsonl`` records `randjax.analysis.dynamics_hook` with
spectra after every epoch), and writes ``<study>.json`` and PNGs:

* ``fig2`` (Heitmann Fig. 2a/2b): test accuracy after removing 0 ..
  ``prune_fraction`` of the units of ``layer`` (fc1) without retraining, by
  magnitude (smallest / largest first), frame potential (least / most
  correlated first) and ``random_rounds`` random orders (mean +- population
  std), plus the units each criterion removes before accuracy falls by 1
  and 5 points; also the layer's frame potential along each curve;
* ``subspaces``: accuracy when one layer's kernel is replaced by its rank-k
  approximation (Heitmann's "projection") or by ``W0`` plus the rank-k part
  of its update (Nagarajan & Kolter), for ``ks``; all layers of the MLPs,
  ``layer`` of the conv nets (each evaluation of a conv net runs the whole
  network on the test set);
* ``spectra``: histograms (40 bins, unnormalised) of the eigenvalues of
  ``W W^T`` of every layer at initialisation and after epochs
  ``spectra_epochs`` (Martin & Mahoney; Heitmann Sec. 4), and the training
  dynamics figure of `experiments.plot` (frame potential, norms, distance
  from init, ranking distance, weight profiles);
* ``clustering``: angles of each unit to its nearest of ``clusters``
  K-means centres, trained against initial (Brutzkus & Globerson).

Deviations from the report, for this CPU: Conv-2 trains ``conv2_epochs``
epochs (the report: 20,000 iterations of batch 64, 21 epochs) and
LeNet ``lenet_epochs`` (53 x 938 = 49,714 iterations; the report: 50,000);
the data order is reshuffled every epoch (the reference's loaders do not
shuffle); biases start at 0 (PyTorch draws them). Conv-2 uses padding SAME
(fc1 has 12,544 inputs on 28x28, as the reference's VALID Conv-2 on 32x32).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from absl import app

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import randjax
from experiments import plot as plot_lib
from experiments import sweeps, train
from experiments.configs import dense
from experiments.sweeps import Records
from randjax import analysis, data
from randjax.methods import structured

HELP = {
    "studies": "Which studies to run (fig2, subspaces, spectra, clustering).",
    "out_dir": "Where the JSON records and PNGs go.",
    "work_dir": "Where the trained networks' runs go.",
    "dataset": "Data set (randjax.data.load).",
    "models": "Models (lenet300_100, conv2).",
    "lenet_epochs": "LeNet-300-100's epochs (SGD 3e-3, momentum 0.9, batch 64).",
    "conv2_epochs": "Conv-2's epochs (Adam 2e-4, batch 64).",
    "train_limit": "Training images (0: all).",
    "test_limit": "Test images the analyses evaluate on (0: all).",
    "layer": "The pruned layer (fc1 of both models).",
    "prune_fraction": "Share of the layer's units removed (the reference: 0.9).",
    "random_rounds": "Random removal orders.",
    "random_seed": "Seed of the NumPy stream the random orders come from.",
    "ks": "Ranks of the subspace study.",
    "spectra_epochs": "Epochs whose spectra are drawn (0: initialisation).",
    "clusters": "K-means centres of the clustering study.",
    "seed": "Seed of the training runs.",
}

#: The criteria of Fig. 2: label -> (criterion, reverse).
CRITERIA = {
    "magnitude, smallest first": ("magnitude", False),
    "magnitude, largest first": ("magnitude", True),
    "FP, least correlated first": ("fp", False),
    "FP, most correlated first": ("fp", True),
    "random": ("random", False),
}


def get_config() -> ml_collections.ConfigDict:
    """The studies' default settings (see `HELP`)."""
    return ml_collections.ConfigDict(dict(
        studies=("fig2", "subspaces", "spectra", "clustering"),
        out_dir="experiments/results/structured", work_dir="runs/structured_sweeps",
        dataset="fashion_mnist", models=("lenet300_100", "conv2"), lenet_epochs=53,
        conv2_epochs=2, train_limit=0, test_limit=0, layer="Dense_0", prune_fraction=0.9,
        random_rounds=5, random_seed=2019, ks=(1, 2, 5, 10, 20, 50, 100),
        spectra_epochs=(0, 1, 5, 20, 53), clusters=10, seed=0))


def model_config(study: ml_collections.ConfigDict, model: str) -> ml_collections.ConfigDict:
    """The report's training settings for ``model`` (LeNet: SGD; Conv-2: Adam)."""
    config = dense.get_config()
    lenet = model == "lenet300_100"
    config.update(
        dataset=study.dataset, val_fraction=0.0, model=model, seed=study.seed,
        init="pytorch_default", use_bias=True, batch_size=64,
        train_limit=study.train_limit or None,
        optimizer="sgd" if lenet else "adam", learning_rate=3e-3 if lenet else 2e-4,
        momentum=0.9, epochs=study.lenet_epochs if lenet else study.conv2_epochs)
    return config


class Trained:
    """A trained network of a study, with its initial parameters and test data."""

    def __init__(self, study: ml_collections.ConfigDict, model: str):
        config = model_config(study, model)
        dataset = train.load_dataset(config)
        self.model = train.make_model(config, dataset.num_classes)
        x0 = jnp.zeros((1, *dataset.input_shape))
        self.initial = self.model.init(randjax.train.model_key(config.seed), x0)["params"]
        hook = analysis.dynamics_hook(randjax.dense(), self.initial, spectra=True)
        self.workdir = pathlib.Path(study.work_dir) / model
        result = train.train_and_evaluate(config, self.workdir, epoch_hook=hook)
        self.summary = result.summary
        self.variables = {"params": result.state.trainable, **result.state.model_state}
        limit = study.test_limit or None
        self.x, self.y = dataset.test.x[:limit], dataset.test.y[:limit]
        self.iterations = int(result.state.step)

    def accuracy(self, params) -> float:
        """Test accuracy with ``params`` in place of the trained ones."""
        return float(_accuracy(self.model, {**self.variables, "params": params},
                               self.x, self.y))


@functools.cache
def _trained_from_json(study_json: str, model: str) -> Trained:
    return Trained(ml_collections.ConfigDict(json.loads(study_json)), model)


def trained(study: ml_collections.ConfigDict, model: str) -> Trained:
    """``model`` trained under ``study`` (once per process: the studies share it)."""
    return _trained_from_json(study.to_json(), model)


def _accuracy(model, variables, x, y, batch: int = 1000) -> jax.Array:
    chunks = lambda a: a.reshape(-1, batch, *a.shape[1:])
    xs, ys, valid = map(chunks, data.pad_to_chunks(data.Split(x, y), batch))
    return _correct(model, variables, xs, ys, valid) / len(y)


@functools.partial(jax.jit, static_argnums=0)
def _correct(model, variables, xs, ys, valid):
    def chunk(inputs):
        x, y, v = inputs
        return jnp.sum((jnp.argmax(model.apply(variables, x), -1) == y) * v)
    return jnp.sum(jax.lax.map(chunk, (xs, ys, valid)))


def _first_drop(accuracy: np.ndarray, points: float) -> int:
    """Units removed before accuracy first falls ``points`` below the unpruned one."""
    below = np.flatnonzero(accuracy < accuracy[0] - points / 100)
    return int(below[0]) - 1 if below.size else len(accuracy) - 1


# --------------------------------------------------------------------------- #
# Fig. 2: unit pruning without retraining
# --------------------------------------------------------------------------- #

def fig2_record(study: ml_collections.ConfigDict, net: Trained, model: str) -> dict:
    """The curves of every criterion on ``study.layer`` of ``net``."""
    start_time = time.perf_counter()
    kernel = net.variables["params"][study.layer]["kernel"]
    units = kernel.shape[-1]
    count = int(study.prune_fraction * units)  # the reference's int(ratio * n)
    orders = {label: structured.removal_orders(kernel, criterion, count, reverse=reverse,
                                                rounds=study.random_rounds,
                                                seed=study.random_seed)
              for label, (criterion, reverse) in CRITERIA.items()}
    rows = np.concatenate(list(orders.values()))
    accuracy = structured.accuracy_curve(net.model, net.variables, net.x, net.y,
                                         layer=study.layer, orders=rows)
    potentials = _potentials(kernel, rows)
    curves, start = {}, 0
    for label, order in orders.items():
        acc, fp = accuracy[start:start + len(order)], potentials[start:start + len(order)]
        start += len(order)
        mean = acc.mean(0)
        curves[label] = {"accuracy": mean.tolist(), "std": acc.std(0).tolist(),
                         "frame_potential": fp.mean(0).tolist(),
                         "units_before_1pt_drop": _first_drop(mean, 1),
                         "units_before_5pt_drop": _first_drop(mean, 5)}
    return {"name": model, "model": model, "layer": study.layer, "units": units,
            "removed": count, "iterations": net.iterations,
            "test_accuracy": net.summary["test_accuracy"],
            "train_wall_seconds": net.summary["wall_seconds"], "curves": curves,
            "wall_seconds": time.perf_counter() - start_time}


@jax.jit
def _potential_table(g2, keep):
    return jnp.einsum("rci,ij,rcj->rc", keep, g2, keep) / g2.shape[0] ** 2


def _potentials(kernel, orders: np.ndarray) -> np.ndarray:
    """The layer's frame potential after each removal of each order."""
    g2 = jnp.square(analysis.gram(kernel))
    n, count = kernel.shape[-1], orders.shape[1]
    when = np.full((len(orders), n), n)
    np.put_along_axis(when, orders, np.arange(count)[None], axis=1)
    keep = (when[:, None, :] >= np.arange(count + 1)[None, :, None]).astype(np.float32)
    return np.asarray(_potential_table(g2, keep))


def fig2(study: ml_collections.ConfigDict, out: pathlib.Path):
    records = Records(out / "fig2.json")
    rows = []
    for model in study.models:
        row = records.get(model)
        if row is None:
            row = records.add(fig2_record(study, trained(study, model), model))
        rows.append(row)
    plot_fig2(rows, out / "fig2.png", study.dataset)


def plot_fig2(rows: list[dict], path: pathlib.Path, dataset: str):
    """Accuracy against units removed, one panel per model (random: mean +- std)."""
    fig, axes = plt.subplots(1, len(rows), figsize=(5.8 * len(rows), 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for label, curve in row["curves"].items():
            acc = 100 * np.asarray(curve["accuracy"])
            removed = np.arange(len(acc))
            (line,) = ax.plot(removed, acc, label=label, lw=1.4)
            if label == "random":
                std = 100 * np.asarray(curve["std"])
                ax.fill_between(removed, acc - std, acc + std, color=line.get_color(),
                                alpha=0.25, lw=0)
        ax.set(xlabel=f"units of {row['layer']} removed (of {row['units']})",
               ylabel="test accuracy (%)",
               title=f"{row['model']} on {dataset}: {row['iterations']} iterations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    plot_lib.save_figure(fig, path)


# --------------------------------------------------------------------------- #
# Subspaces
# --------------------------------------------------------------------------- #

def _with_kernel(params: dict, name: str, kernel) -> dict:
    return {**params, name: {**params[name], "kernel": kernel}}


def subspace_record(study: ml_collections.ConfigDict, net: Trained, model: str) -> dict:
    """Accuracy vs k for the rank-k kernel and the rank-k update, per layer."""
    start_time = time.perf_counter()
    params = net.variables["params"]
    names = ([study.layer] if model not in sweeps.MLPS
             else [name for name in params if "kernel" in params[name]])
    layers = {}
    for name in names:
        w, w0 = params[name]["kernel"], net.initial[name]["kernel"]
        rank = min(analysis.unit_vectors(w).shape)
        ks = sorted({k for k in study.ks if k <= rank} | {rank})
        s, s_update = analysis.spectrum(w), analysis.spectrum(w - w0)
        replace = functools.partial(_with_kernel, params, name)
        layers[name] = {
            "rank": rank, "ks": ks,
            "rank_k": [net.accuracy(replace(analysis.low_rank(w, k))) for k in ks],
            "update_rank_k": [net.accuracy(replace(analysis.project_update(w, w0, k)))
                              for k in ks],
            "norm_share": [float(jnp.sqrt(s[:k].sum() / s.sum())) for k in ks],
            "update_norm_share": [float(jnp.sqrt(s_update[:k].sum() / s_update.sum()))
                                  for k in ks],
            "initial_accuracy": net.accuracy(replace(w0))}
    return {"name": model, "model": model, "test_accuracy": net.accuracy(params),
            "layers": layers, "wall_seconds": time.perf_counter() - start_time}


def _layer_panels(study, path: pathlib.Path, record, size: tuple[float, float]):
    """Every model's record (made by ``record`` unless kept in ``path``) and one
    axis per recorded layer: ``(fig, [(ax, (row, layer name, layer record))])``."""
    records = Records(path)
    rows = [records.get(m) or records.add(record(study, trained(study, m), m))
            for m in study.models]
    panels = [(row, name, layer) for row in rows for name, layer in row["layers"].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]),
                             squeeze=False)
    return fig, list(zip(axes[0], panels))


def subspaces(study: ml_collections.ConfigDict, out: pathlib.Path):
    fig, panels = _layer_panels(study, out / "subspaces.json", subspace_record, (4.6, 3.8))
    for ax, (row, name, layer) in panels:
        ax.plot(layer["ks"], 100 * np.asarray(layer["rank_k"]), "o-", label="rank-k W")
        ax.plot(layer["ks"], 100 * np.asarray(layer["update_rank_k"]), "s-",
                label="W0 + rank-k (W - W0)")
        ax.axhline(100 * row["test_accuracy"], ls="--", color="gray", label="trained")
        ax.axhline(100 * layer["initial_accuracy"], ls=":", color="gray", label="W = W0")
        ax.set(xscale="log", xlabel="k", ylabel="test accuracy (%)",
               title=f"{row['model']} {name} (rank {layer['rank']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    plot_lib.save_figure(fig, out / "subspaces.png")


# --------------------------------------------------------------------------- #
# Spectra and training dynamics
# --------------------------------------------------------------------------- #

def spectra_record(study: ml_collections.ConfigDict, net: Trained, model: str) -> dict:
    """40-bin histograms of every layer's spectrum at ``spectra_epochs``."""
    history = {r["epoch"]: r["dynamics"] for r in randjax.train.read_metrics(net.workdir)}
    layers = {}
    for name in history[max(history)]:
        module = name.split("/")[0]
        by_epoch = {0: np.asarray(analysis.spectrum(net.initial[module]["kernel"]))}
        by_epoch.update({e: np.asarray(history[e][name]["spectrum"])
                         for e in study.spectra_epochs if e in history})
        layers[name] = {str(e): dict(zip(("counts", "edges"),
                                         (a.tolist() for a in np.histogram(eigs, bins=40))))
                        | {"max": float(eigs.max()), "sum": float(eigs.sum())}
                        for e, eigs in by_epoch.items()}
    return {"name": model, "model": model, "layers": layers}


def spectra(study: ml_collections.ConfigDict, out: pathlib.Path):
    records = Records(out / "spectra.json")
    for model in study.models:
        net = trained(study, model)
        row = records.get(model) or records.add(spectra_record(study, net, model))
        layers = row["layers"]
        fig, axes = plt.subplots(1, len(layers), figsize=(4.4 * len(layers), 3.6),
                                 squeeze=False)
        for ax, (name, epochs) in zip(axes[0], layers.items()):
            for epoch, hist in epochs.items():
                ax.stairs(hist["counts"], hist["edges"], label=f"epoch {epoch}")
            ax.set(xlabel="eigenvalue of W W^T", ylabel="count", yscale="log", title=name)
            ax.legend(fontsize=7)
        plot_lib.save_figure(fig, out / f"spectra_{model}.png",
                             f"{model}: empirical spectral densities")
        plot_lib.plot_dynamics(randjax.train.read_metrics(net.workdir),
                               out / f"dynamics_{model}.png", title=model)


# --------------------------------------------------------------------------- #
# Clustering
# --------------------------------------------------------------------------- #

def clustering_record(study: ml_collections.ConfigDict, net: Trained, model: str) -> dict:
    """Angles to the nearest K-means centre of every layer with enough units."""
    layers = {}
    for name, leaves in net.variables["params"].items():
        w = leaves.get("kernel")
        if w is None or w.shape[-1] < 2 * study.clusters:
            continue
        trained_angles = analysis.cluster_angles(w, study.clusters, seed=study.seed)
        initial_angles = analysis.cluster_angles(net.initial[name]["kernel"], study.clusters,
                                                 seed=study.seed)
        layers[name] = {"trained": trained_angles.tolist(), "initial": initial_angles.tolist(),
                        "trained_median": float(np.median(trained_angles)),
                        "initial_median": float(np.median(initial_angles))}
    return {"name": model, "model": model, "clusters": study.clusters, "layers": layers}


def clustering(study: ml_collections.ConfigDict, out: pathlib.Path):
    fig, panels = _layer_panels(study, out / "clustering.json", clustering_record, (4.2, 3.6))
    for ax, (row, name, layer) in panels:
        bins = np.linspace(0, 90, 31)
        for kind in ("initial", "trained"):
            ax.hist(layer[kind], bins=bins, alpha=0.6,
                    label=f"{kind} (median {layer[kind + '_median']:.0f} deg)")
        ax.set(xlabel=f"angle to the nearest of {row['clusters']} centres (deg)",
               ylabel="units", title=f"{row['model']} {name}")
        ax.legend(fontsize=7)
    plot_lib.save_figure(fig, out / "clustering.png")


STUDIES = {"fig2": fig2, "subspaces": subspaces, "spectra": spectra, "clustering": clustering}


def main(argv):
    sweeps.main(get_config, STUDIES, argv)


if __name__ == "__main__":
    sweeps.define_flags(get_config(), HELP)
    app.run(main)
