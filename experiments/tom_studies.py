"""Training Optimal Masks, sparse-mask modifications and BatchNorm settings on Fashion-MNIST.

    python -m experiments.tom_studies --studies=tom,modifications,bn \
        --out_dir=experiments/results/pruning

Mikler's thesis ("On Pruning Methods for Neural Networks", 2021), Sec. 3.3, at
CPU scale. Each study writes a JSON file of one record per run (saved after
every run: an interrupted study resumes where it stopped, and the rounds of a
run resume too), a PNG and a Markdown table of means +- standard deviations
over ``--seeds`` (every run is repeated per seed):

* ``tom`` (Fig. 3.10): Training Optimal Masks (``experiments.prune`` with
  ``criterion="tom"``: the dense network trained ``tom_pretrain_epochs``, the
  start of the ``epochs`` schedule; masks trained ``tom_mask_epochs`` with the
  code's SGD at rate 10, clip ``tom_clip`` and penalty ``tom_penalty_scale``
  (conv nets: ``conv_tom_mask_epochs``, ``conv_tom_penalty_scale``);
  the top ``density`` kept and retrained ``epochs`` from the short run's
  weights) at ``densities`` against one-shot magnitude pruning + LRR, SNIP and
  random pruning at init and iterative LRR and sGIMP, on ``tom_models``, all
  with the budgets of `experiments.pruning_sweeps` (conv nets: its conv
  settings and ``conv_densities``). Its ``mlps`` / ``convs`` records are
  reused for seed 0 (the same configs), new baselines are added to them.
  Every record counts ``steps``: all optimizer steps the method took to reach
  its density (its rounds, TOM's mask training included);
* ``modifications`` (Table 3.1): ``modification_model`` pruned by weight
  rewinding to ``modification_density`` in ``modification_rounds`` rounds,
  then each `randjax.pruning.modify_masks` modification of the ticket
  (its initial weights under the final masks) retrained like a round;
* ``bn`` (Fig. 3.12): iterative ``bn_variant`` of ``bn_model`` (BatchNorm,
  the conv budget) down to ``bn_target`` with each ``(momentum, epsilon)``
  of ``bn_settings`` (flax's momentum is the running average's decay, as in
  Keras, which Mikler used).
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from absl import app

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import plot as plot_lib  # noqa: E402
from experiments import prune, pruning_sweeps, sweeps  # noqa: E402
from experiments.sweeps import Records  # noqa: E402
from randjax import pruning  # noqa: E402

HELP = {
    **pruning_sweeps.HELP,
    "studies": "Which studies to run (tom, modifications, bn).",
    "work_dir": "Where the runs' rounds and checkpoints go (the reused pruning_sweeps runs "
                "stay in their own).",
    "seeds": "Seeds: every run is repeated for each; tables give mean +- std.",
    "tom_models": "Models of the tom study.",
    "densities": "Densities of TOM and the one-shot baselines (MLPs).",
    "conv_densities": "Densities of TOM and the one-shot baselines (conv nets).",
    "tom_pretrain_epochs": "TOM's dense run, the start of the schedule (the thesis: 10%).",
    "tom_mask_epochs": "TOM's mask training.",
    "tom_clip": "TOM's gradient clip (the thesis: 0.1; the code: 0.1 / its rate 10).",
    "tom_penalty_scale": "TOM's L1 penalty on the masks (MLPs).",
    "conv_tom_mask_epochs": "TOM's mask training on the conv nets (16 steps an epoch).",
    "conv_tom_penalty_scale": "TOM's penalty on the conv nets: their few steps need more.",
    "modification_model": "Model of the modifications study.",
    "modification_density": "Density the modifications study prunes to by WR.",
    "modification_rounds": "WR rounds to reach it.",
    "bn_model": "BatchNorm model of the bn study.",
    "bn_variant": "Iterative variant of the bn study.",
    "bn_target": "Last density of the bn study.",
    "bn_settings": "(momentum, epsilon) pairs of the bn study, flattened.",
}

#: The one-shot baselines of the tom study: label -> pruning config overrides.
ONE_SHOT = {"one-shot magnitude + LRR": dict(pruning="oneshot", variant="lrr"),
            "SNIP at init": dict(pruning="at_init", criterion="snip"),
            "random at init": dict(pruning="at_init", criterion="random")}
#: The iterative baselines of the tom study: label -> variant.
ITERATIVE = {"iterative LRR": "lrr", "iterative sGIMP": "sgimp"}


def get_config() -> ml_collections.ConfigDict:
    """The studies' settings: `experiments.pruning_sweeps`' budget and these (see `HELP`)."""
    config = pruning_sweeps.get_config()
    config.update(dict(
        studies=("tom", "modifications", "bn"), work_dir="runs/tom_studies", seeds=(0,),
        tom_models=("lenet300_100", "mlp400x3", "conv4"), densities=(0.1, 0.05, 0.02),
        conv_densities=(0.25, 0.0625), tom_pretrain_epochs=1, tom_mask_epochs=1,
        tom_clip=0.01, tom_penalty_scale=3e-4, conv_tom_mask_epochs=2,
        conv_tom_penalty_scale=3e-3,
        modification_model="mlp400x3", modification_density=0.04, modification_rounds=8,
        bn_model="resnet20", bn_variant="lrr", bn_target=0.02,
        bn_settings=(0.99, 1e-3, 0.997, 1e-5)))
    return config


def _seeded(study: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """``study`` with ``seed`` (pruning_sweeps' configs read ``study.seed``)."""
    copy = ml_collections.ConfigDict(study.to_dict())
    copy.seed = seed
    return copy


def _suffix(seed: int) -> str:
    return "" if seed == 0 else f"/seed{seed}"  # seed 0: pruning_sweeps' own names


def _steps(row: dict) -> int:
    return sum(r["steps"] + r.get("mask_steps", 0) for r in row["rounds"])


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std())


# --------------------------------------------------------------------------- #
# TOM against one-shot and iterative pruning (Fig. 3.10)
# --------------------------------------------------------------------------- #

def tom_config(study, model: str, density: float) -> ml_collections.ConfigDict:
    """TOM at ``density`` on ``model``: a short dense run, the masks, LRR retraining."""
    config = pruning_sweeps.run_config(study, model, pruning="oneshot", variant="lrr",
                                       criterion="tom", target_density=density)
    mlp = model in sweeps.MLPS
    config.retrain_epochs = config.epochs
    config.epochs = study.tom_pretrain_epochs
    config.tom.update(epochs=study.tom_mask_epochs if mlp else study.conv_tom_mask_epochs,
                      clip=study.tom_clip,
                      penalty_scale=study.tom_penalty_scale if mlp
                      else study.conv_tom_penalty_scale)
    return config


def tom_rows(study, out: pathlib.Path, model: str, seed: int) -> dict:
    """Every method's records on ``model`` for ``seed``: ``{label: [rows]}``."""
    mlp = model in sweeps.MLPS
    seeded, suffix = _seeded(study, seed), _suffix(seed)
    baselines = Records(out / ("mlps.json" if mlp else "convs.json"))
    toms = Records(out / "tom.json")
    densities = study.densities if mlp else study.conv_densities
    rows = {"TOM": [pruning_sweeps.run_record(seeded, toms, f"{model}/TOM/{d}{suffix}",
                                              tom_config(seeded, model, d))
                    for d in densities]}
    for label, overrides in ONE_SHOT.items():
        rows[label] = [pruning_sweeps.run_record(
            seeded, baselines, f"{model}/{label}/{d}{suffix}",
            pruning_sweeps.run_config(seeded, model, target_density=d, **overrides))
            for d in densities]
    for label, variant in ITERATIVE.items():
        rows[label] = [pruning_sweeps.run_record(
            seeded, baselines, f"{model}/{variant}{suffix}",
            pruning_sweeps.variant_config(seeded, model, variant))]
    return rows


def _points(rows: list[dict]) -> list[tuple[float, float, int]]:
    """``(density, accuracy, steps so far)`` of every level of these runs."""
    points = []
    for row in rows:
        if row["pruning"] == "iterative":
            steps = np.cumsum([r["steps"] for r in row["rounds"]])
            points += [(r["density"], r["test_accuracy"], int(s))
                       for r, s in zip(row["rounds"], steps) if r["round"] > 0]
        else:
            points.append((row["density"], row["test_accuracy"], _steps(row)))
    return points


def tom_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    panels, table = {}, []
    for model in study.tom_models:
        by_seed = [tom_rows(study, out, model, seed) for seed in study.seeds]
        lines = {}
        for label in by_seed[0]:
            runs = [_points(rows[label]) for rows in by_seed]  # same densities per seed
            for i, (density, _, steps) in enumerate(runs[0]):
                mean, std = _mean_std([run[i][1] for run in runs])
                lines.setdefault(label, []).append((density, mean, std))
                table.append((model, label, density, mean, std, steps))
        panels[model] = lines
    _plot_lines(out / "tom.png", panels, f"on {study.dataset} ({len(study.seeds)} seed(s))")
    _write_table(out / "tom.md", ("model", "method", "density", "test accuracy", "steps"),
                 [(m, label, f"{d:.4f}", _pm(mean, std), f"{steps:,}")
                  for m, label, d, mean, std, steps in table])


# --------------------------------------------------------------------------- #
# Sparse-mask modifications (Table 3.1)
# --------------------------------------------------------------------------- #

def modification_config(study, seed: int) -> ml_collections.ConfigDict:
    """Weight rewinding of ``modification_model`` to ``modification_density``."""
    multiplier = study.modification_density ** (1 / study.modification_rounds)
    return pruning_sweeps.run_config(
        _seeded(study, seed), study.modification_model, variant="wr",
        density_multiplier=multiplier, target_density=study.modification_density)


def modification_rows(study, out: pathlib.Path, seed: int) -> dict:
    """The ticket retrained as it is and under each modification: ``{label: row}``."""
    records = Records(out / "modifications.json")
    config = modification_config(study, seed)
    base = pathlib.Path(study.work_dir) / "modifications" / f"seed{seed}"
    name = f"{study.modification_model}/seed{seed}"
    pruner = None
    rows = {}
    ticket = records.get(f"{name}/unmodified")
    if ticket is None:
        pruner = prune.Pruner(config, base / "wr", progress=False)
        summary = pruner.run()
        rounds = prune.read_rounds(base / "wr")
        ticket = records.add({
            "name": f"{name}/unmodified", "how": "unmodified", "seed": seed,
            "density": summary["density"], "test_accuracy": summary["test_accuracy"],
            "kept": int(pruning.report(pruner.final.masks).kept),
            "wall_seconds": summary["seconds"], "rounds": len(rounds)})
    rows["unmodified"] = ticket
    for how in pruning.MODIFICATIONS:
        row = records.get(f"{name}/{how}")
        if row is None:
            if pruner is None:  # resumes every finished round from disk
                pruner = prune.Pruner(config, base / "wr", progress=False)
                pruner.run()
            row = records.add(_modified(study, config, pruner, base / how,
                                        f"{name}/{how}", how, seed))
        rows[how] = row
    return rows


def _modified(study, config, pruner: prune.Pruner, workdir: pathlib.Path, name: str,
              how: str, seed: int) -> dict:
    """Retrains one modification of ``pruner``'s ticket as a WR round."""
    initial = pruner.initial_variables()
    masks = pruner.final.masks
    fresh = None
    if "reinit" in how:  # a fresh draw of the whole network
        x = jnp.zeros((1, *pruner.dataset.input_shape), jnp.float32)
        fresh = pruner.model.init(jax.random.key(10_000 + seed), x)["params"]
    params, masks = pruning.modify_masks(jax.random.key(seed), initial["params"], masks, how,
                                         init_params=fresh)
    variables = {**initial, "params": params}
    retrain = prune.Pruner(config, workdir, progress=False)
    run = retrain.train_round(prune.round_count(pruner.plan), masks, variables)
    summary = run.result.summary
    return {"name": name, "how": how, "seed": seed,
            "density": pruning.report(masks).density,
            "test_accuracy": summary["test_accuracy"],
            "kept": int(pruning.report(masks).kept), "wall_seconds": summary["wall_seconds"]}


def modification_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    by_seed = [modification_rows(study, out, seed) for seed in study.seeds]
    labels = list(by_seed[0])
    stats = [_mean_std([rows[label]["test_accuracy"] for rows in by_seed]) for label in labels]
    base = stats[0][0]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.bar(range(len(labels)), [100 * m for m, _ in stats],
           yerr=[100 * s for _, s in stats], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(labels)), [label.replace("_", "\n") for label in labels],
                  fontsize=8)
    low = min(m - s for m, s in stats)
    ax.set_ylim(100 * low - 2, 100 * max(m + s for m, s in stats) + 1)
    ax.set(ylabel="test accuracy (%)",
           title=f"{study.modification_model}, {by_seed[0]['unmodified']['kept']:,} weights "
                 f"({100 * study.modification_density:g}%), {len(by_seed)} seed(s)")
    ax.grid(alpha=0.3, axis="y")
    plot_lib.save_figure(fig, out / "modifications.png")
    _write_table(out / "modifications.md", ("modification", "test accuracy", "difference"),
                 [(label, _pm(m, s), "" if i == 0 else f"{100 * (m - base):+.2f} points")
                  for i, (label, (m, s)) in enumerate(zip(labels, stats))])


# --------------------------------------------------------------------------- #
# BatchNorm momentum and epsilon (Fig. 3.12)
# --------------------------------------------------------------------------- #

def bn_pairs(study) -> list[tuple[float, float]]:
    values = list(study.bn_settings)
    if len(values) % 2 or not values:
        raise ValueError(f"bn_settings must be (momentum, epsilon) pairs, got {values}")
    return list(zip(values[::2], values[1::2]))


def bn_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    records = Records(out / "bn.json")
    lines = {}
    for momentum, epsilon in bn_pairs(study):
        label = f"momentum {momentum:g}, epsilon {epsilon:g}"
        runs = []
        for seed in study.seeds:
            config = pruning_sweeps.variant_config(_seeded(study, seed), study.bn_model,
                                                   study.bn_variant)
            config.update(bn_momentum=momentum, bn_epsilon=epsilon,
                          target_density=study.bn_target)
            row = pruning_sweeps.run_record(
                study, records, f"{study.bn_model}/{study.bn_variant}/{label}/seed{seed}",
                config)
            runs.append([(r["density"], r["test_accuracy"]) for r in row["rounds"]])
        lines[label] = [(runs[0][i][0], *_mean_std([run[i][1] for run in runs]))
                        for i in range(len(runs[0]))]
    _plot_lines(out / "bn.png", {study.bn_model: lines},
                f"{study.bn_variant.upper()} on {study.conv_train_limit} {study.dataset} images")
    _write_table(out / "bn.md", ("setting", "density", "test accuracy"),
                 [(label, f"{d:.4f}", _pm(m, s)) for label, points in lines.items()
                  for d, m, s in points])


# --------------------------------------------------------------------------- #
# Figures and tables
# --------------------------------------------------------------------------- #

def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} +- {100 * std:.2f}"


def _write_table(path: pathlib.Path, header: tuple, rows: list[tuple]):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text(), flush=True)


def _plot_lines(path: pathlib.Path, panels: dict, title: str):
    """Accuracy (mean +- std) against density, log x, one panel per model."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4), squeeze=False)
    for ax, (model, lines) in zip(axes[0], panels.items()):
        for label, points in lines.items():
            d, m, s = (np.asarray(v) for v in zip(*sorted(points)))
            ax.errorbar(100 * d, 100 * m, yerr=100 * s, fmt="o-", ms=3, capsize=2,
                        label=label)
        ax.set(xscale="log", xlabel="weights remaining (%)", ylabel="test accuracy (%)",
               title=f"{model} {title}")
        ax.invert_xaxis()
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 5, 10, 20, 50, 100]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    plot_lib.save_figure(fig, path)


STUDIES = {"tom": tom_study, "modifications": modification_study, "bn": bn_study}


if __name__ == "__main__":
    sweeps.define_flags(get_config(), HELP)
    app.run(functools.partial(pruning_sweeps.cached_main, get_config, STUDIES))
