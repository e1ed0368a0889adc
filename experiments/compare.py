"""Every method side by side: one model, one data set, one budget, one table.

    python -m experiments.compare --model=lenet300_100 --dataset=fashion_mnist \
        --methods=dense,edge_popup,supermask,slot_machine,laperm,lth,lrr,sgimp \
        --seeds=3 --workdir=runs/compare

Each method trains with its reference-matched preset (`METHODS`, from
`experiments.configs.presets`) on ``--model`` and ``--dataset``, for seeds
``--seed`` .. ``--seed + --seeds - 1``. ``--epochs`` (0: each preset's own)
sets every run's epochs, a pruning method's epochs per level. On
LeNet-300-100 and Fashion-MNIST with ``--epochs=0`` every run *is* its
preset: seed 0 ends with the preset's accuracy and ``params_sha256``.

The pruning methods (``lth``, ``swr``, ``lrr``, ``sgimp``) run their levels
down to ``--target_density`` (0: the preset's, 0.8^15 = 3.5%) and are
reported at the density they reach; the figure draws every level.
Edge-popup runs at its preset's density (50%) and, with ``--match_density``
and pruning methods in the comparison, again at the density they reach, so
the two families meet at one point. Every method's density is the kept
share of *all* kernel entries (the pruning presets' never-pruned output
layer included).

``--workdir`` gets one directory per run (``<method>/seed_<s>``), ``runs.json``
(one record per finished run: a comparison started again skips those and
resumes an unfinished run from its checkpoints), and the results:
``compare.md`` and ``compare.json`` (per method: test accuracy mean and std
over seeds, density, kept and total parameters, the compact export's size,
seconds per epoch and per run end to end) and ``compare.png`` (accuracy
per method; accuracy against density for the pruning and mask methods).
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from absl import app, logging
from matplotlib import ticker

import randjax
from experiments import compile_cache, prune, sweeps, train
from experiments.configs import presets
from randjax import data as data_lib
from randjax.methods import laperm

#: ``--methods`` names and the preset each one trains with.
METHODS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "dense": presets.dense_lenet_fmnist,
    "adam": presets.adam_lenet_fmnist,
    "lookahead": presets.lookahead_lenet_fmnist,
    "edge_popup": presets.edge_popup_lenet_fmnist,
    "supermask": presets.supermask_lenet_fmnist,
    "slot_machine": presets.slot_lenet_fmnist_k8,
    "slot_machine_k2": presets.slot_lenet_fmnist_k2,
    "laperm": presets.laperm_lenet_fmnist,
    "lth": presets.lth_lenet_fmnist,
    "swr": presets.lth_rewind500_lenet_fmnist,
    "lrr": presets.lrr_lenet_fmnist,
    "sgimp": presets.sgimp_lenet_fmnist,
}

#: The presets' training set (Fashion-MNIST), to scale ``swr``'s rewind step.
_PRESET_TRAIN_IMAGES = 60_000

HELP = {
    "methods": f"Methods to compare, in table order; from {list(METHODS)}.",
    "model": "Zoo model every method trains (randjax.models.names()).",
    "dataset": "Data set (randjax.data.load): digits, fashion_mnist, idx:<dir>, tfds:<name>.",
    "data_dir": "Where the data set's files are ('' : the loader's default).",
    "epochs": "Epochs of every run (pruning: per level); 0: each preset's own.",
    "train_limit": "Train on the first N training images only (0: all).",
    "seeds": "Seeds per method.",
    "seed": "The first seed.",
    "density_multiplier": "Pruning: the share of weights each level keeps (0: the preset's).",
    "target_density": "Pruning: the last level's density (0: the preset's).",
    "match_density": "Also run edge-popup at the lowest density the pruning methods reach.",
    "checkpoint_every": "Epochs between checkpoints (0: the preset's, every epoch).",
    "workdir": "Where runs, records, table and figure go.",
}


def get_config() -> ml_collections.ConfigDict:
    """The comparison's default settings (see `HELP`)."""
    return ml_collections.ConfigDict(dict(
        methods=("dense", "edge_popup", "supermask", "slot_machine", "laperm", "lth", "lrr",
                 "sgimp"),
        model="lenet300_100", dataset="fashion_mnist", data_dir="", epochs=0, train_limit=0,
        seeds=1, seed=0, density_multiplier=0.0, target_density=0.0, match_density=True,
        checkpoint_every=0, workdir="runs/compare"))


def check_settings(settings: ml_collections.ConfigDict) -> None:
    """ValueError naming the first setting out of range, before anything trains."""
    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown or not settings.methods:
        raise ValueError(f"unknown methods {unknown} (--methods); choose from {list(METHODS)}"
                         if unknown else "--methods names no method")
    if len(set(settings.methods)) != len(settings.methods):
        raise ValueError(f"--methods names a method twice: {list(settings.methods)}")
    for name, low in (("epochs", 0), ("train_limit", 0), ("seeds", 1), ("seed", 0),
                      ("checkpoint_every", 0)):
        randjax.tree.check_int(settings[name], f"--{name}", minimum=low)
    if not 0 <= settings.density_multiplier < 1:
        raise ValueError(f"--density_multiplier must be in [0, 1), got "
                         f"{settings.density_multiplier}")
    if not 0 <= settings.target_density < 1:
        raise ValueError(f"--target_density must be in [0, 1), got {settings.target_density}")


def is_pruning(method: str) -> bool:
    """Whether ``method`` runs `experiments.prune` (levels) rather than `experiments.train`."""
    return METHODS[method]().method == "gimp"


def run_config(settings: ml_collections.ConfigDict, method: str, seed: int, *,
               density: float | None = None) -> ml_collections.ConfigDict:
    """The config of one run: ``method``'s preset on the comparison's model, data and budget.

    ``density`` replaces edge-popup's kept fraction. ``swr``'s rewind step
    keeps its share of the dense run (500 of the preset's 4,690 steps).
    """
    preset = METHODS[method]()
    config = METHODS[method]()
    config.update(model=settings.model, dataset=settings.dataset, seed=seed)
    if settings.data_dir:
        config.data_dir = settings.data_dir
    if settings.train_limit:
        config.train_limit = settings.train_limit
    if settings.epochs:
        config.epochs = settings.epochs
        # A step schedule's milestones keep their share of the run.
        config.lr_milestones = tuple(sorted({round(m * config.epochs / preset.epochs)
                                             for m in preset.lr_milestones}))
    if settings.checkpoint_every:
        config.checkpoint_every = settings.checkpoint_every
    if density is not None:
        config.density = density
    if config.method != "gimp":
        return config
    if settings.density_multiplier:
        config.density_multiplier = settings.density_multiplier
    if settings.target_density:
        config.target_density = settings.target_density
    budget = lambda c: (c.dataset, c.train_limit, c.epochs, c.batch_size)
    if config.rewind_step is not None and budget(config) != budget(preset):
        # swr on a dense run of another length: the same share of it.
        steps, preset_steps = (c.epochs * train.epoch_length(c, n) for c, n in (
            (config, len(train.load_dataset(config).train.y)), (preset, _PRESET_TRAIN_IMAGES)))
        config.rewind_step = max(1, round(config.rewind_step * steps / preset_steps))
    return config


def run_name(method: str, seed: int, density: float | None = None) -> str:
    """``<method>/seed_<s>``, or ``edge_popup@<density>/seed_<s>`` for a matched density."""
    return f"{method}@{density:.4g}/seed_{seed}" if density is not None else \
        f"{method}/seed_{seed}"


# ---------------------------------------------------------------------------
# One run: train or prune it, then measure what the table shows.


def _param_counts(params) -> tuple[int, int, int, int]:
    """``(kept, total, kept kernel entries, kernel entries)``: non-zero entries."""
    leaves = jax.tree.leaves(params)
    nonzero = [int(jnp.count_nonzero(leaf)) for leaf in leaves]
    kernel = [leaf.ndim >= 2 for leaf in leaves]
    return (sum(nonzero), sum(leaf.size for leaf in leaves),
            sum(n for n, k in zip(nonzero, kernel) if k),
            sum(leaf.size for leaf, k in zip(leaves, kernel) if k))


def _export_bytes(config, reparam: randjax.Reparam, state, dataset) -> int | None:
    """The compact export's size (`randjax.export`), or None where the method has none."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "network.npz"
        if config.method == "laperm":
            params = laperm.synced_params(state.trainable, state.opt_state)
            model = train.make_model(config, dataset.num_classes)
            return laperm.save_permuted(
                path, params, model, randjax.train.model_key(config.seed), dataset.input_shape,
                include_1d=config.laperm_include_1d).bytes
        spec = reparam.spec or {}
        if spec.get("method") not in randjax.export.codec_names():
            return None
        return randjax.export.save(path, reparam, state.trainable, state.frozen,
                                   key=randjax.train.reparam_key(config.seed)).bytes


def train_record(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                 dataset: data_lib.Dataset) -> dict:
    """Trains (or resumes) one `experiments.train` run; its table fields."""
    result = train.train_and_evaluate(config, str(workdir), progress=False, dataset=dataset)
    state, summary = result.state, result.summary
    reparam = train.build_method(config, len(dataset.train.y)).reparam
    params = reparam.apply(state.trainable, state.frozen, key=jax.random.key(config.seed),
                           train=False)
    kept, total, kept_kernels, kernels = _param_counts(params)
    return {"test_accuracy": summary["test_accuracy"], "density": kept_kernels / kernels,
            "kept": kept, "params": total,
            "export_bytes": _export_bytes(config, reparam, state, dataset),
            "epoch_seconds": summary["median_epoch_seconds"],
            "run_seconds": summary["wall_seconds"], "epochs": summary["epochs"],
            "params_sha256": summary["params_sha256"]}


def prune_record(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                 dataset: data_lib.Dataset) -> dict:
    """Runs (or resumes) one `experiments.prune` run; its table fields and its levels.

    Its ``density`` is, as every method's, the kept share of *all* kernel
    entries (the never-pruned output layer included), not the density of
    the prunable kernels that `experiments.prune` reports.
    """
    summary = prune.run(config, workdir, progress=False)
    rounds = prune.read_rounds(workdir)
    model = train.make_model(config, dataset.num_classes)
    shapes = jax.tree.leaves(jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, *dataset.input_shape)))["params"])
    total = sum(leaf.size for leaf in shapes)
    kernels = sum(leaf.size for leaf in shapes if leaf.ndim >= 2)
    # Pruning keeps every bias: the kept kernel entries are the rest.
    kept_kernels = lambda record: round(record["density_all"] * total) - (total - kernels)
    last = rounds[-1]
    return {"test_accuracy": summary["test_accuracy"],
            "density": kept_kernels(last) / kernels,
            "kept": round(last["density_all"] * total), "params": total,
            "export_bytes": summary.get("export_bytes"),
            "epoch_seconds": (sum(r["train_seconds"] for r in rounds)
                              / sum(r["epochs"] for r in rounds)),
            "run_seconds": summary["seconds"], "epochs": sum(r["epochs"] for r in rounds),
            "params_sha256": summary["params_sha256"],
            "levels": [{"density": kept_kernels(r) / kernels,
                        "test_accuracy": r["test_accuracy"]} for r in rounds]}


# ---------------------------------------------------------------------------
# The comparison.


def run(settings: ml_collections.ConfigDict, *, progress: bool = True) -> list[dict]:
    """Runs (or resumes) every run of the comparison; writes and returns its table rows.

    Raises:
        ValueError: a setting out of range (`check_settings`), or ``workdir``
            holding a run of the same name with another config.
    """
    check_settings(settings)
    workdir = pathlib.Path(settings.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    records = sweeps.Records(workdir / "runs.json", verbose=False)
    seeds = range(settings.seed, settings.seed + settings.seeds)
    jobs = [(m, s, None) for m in settings.methods for s in seeds]
    bar = tqdm.tqdm(total=len(jobs), desc="compare", unit="run", disable=not progress)
    datasets: dict[tuple, data_lib.Dataset] = {}

    def run_all(jobs):
        for method, seed, density in jobs:
            config = run_config(settings, method, seed, density=density)
            row = _run_once(config, run_name(method, seed, density), method, seed,
                            records, datasets, workdir)
            bar.update()
            bar.set_postfix(run=row["name"], test=f"{row['test_accuracy']:.4f}")

    run_all(jobs)
    matched = _matched_jobs(settings, records.rows, seeds)  # needs the pruning runs' records
    bar.total += len(matched)
    run_all(matched)
    bar.close()
    rows = table_rows(settings, records.rows)
    write_results(settings, rows, workdir)
    return rows


def _run_once(config, name: str, method: str, seed: int, records: sweeps.Records,
              datasets: dict, workdir: pathlib.Path) -> dict:
    """The record of run ``name``: read back if finished, else trained (or resumed)."""
    as_json = json.loads(json.dumps(config.to_dict()))
    row = records.get(name)
    if row is not None:
        if row["config"] != as_json:
            raise ValueError(f"{workdir}/runs.json has run {name!r} with other settings; "
                             f"start the comparison in another --workdir")
        return row
    key = tuple(config.get(k) for k in ("dataset", "data_dir", "val_fraction", "seed",
                                        "normalize", "num_classes", "train_limit"))
    if key not in datasets:
        datasets[key] = train.load_dataset(config)
    begin = time.perf_counter()
    measure = prune_record if is_pruning(method) else train_record
    fields = measure(config, workdir / name, datasets[key])
    return records.add({"name": name, "method": method, "seed": seed, "config": as_json,
                        **fields, "session_seconds": time.perf_counter() - begin})


def _matched_jobs(settings, records: list[dict], seeds) -> list[tuple]:
    """Edge-popup at the lowest density the pruning methods of this comparison reach."""
    if not (settings.match_density and "edge_popup" in settings.methods):
        return []
    reached = [r["density"] for r in records if r["method"] in settings.methods
               and r["seed"] in seeds and is_pruning(r["method"])]
    if not reached:
        return []
    density = round(min(reached), 4)
    if density == run_config(settings, "edge_popup", seeds[0]).density:
        return []
    return [("edge_popup", s, density) for s in seeds]


def table_rows(settings, records: list[dict]) -> list[dict]:
    """One row per method (and matched density): means and stds over the seeds."""
    seeds = set(range(settings.seed, settings.seed + settings.seeds))
    groups: dict[str, list[dict]] = {}
    for record in records:
        if record["method"] in settings.methods and record["seed"] in seeds:
            groups.setdefault(record["name"].split("/")[0], []).append(record)
    order = {m: i for i, m in enumerate(settings.methods)}
    rows = []
    for label, runs in sorted(groups.items(), key=lambda g: (order[g[1][0]["method"]],
                                                              -g[1][0]["density"])):
        accuracy = np.array([r["test_accuracy"] for r in runs])
        mean = lambda key, runs=runs: float(np.mean([r[key] for r in runs]))
        export = [r["export_bytes"] for r in runs if r["export_bytes"] is not None]
        rows.append({
            "method": label, "seeds": len(runs),
            "test_accuracy_mean": float(accuracy.mean()),
            "test_accuracy_std": float(accuracy.std(ddof=1)) if len(runs) > 1 else 0.0,
            "test_accuracy": accuracy.tolist(), "density": mean("density"),
            "kept": mean("kept"), "params": mean("params"),
            "export_bytes": float(np.mean(export)) if export else None,
            "float32_bytes": 4 * mean("params"), "epochs": mean("epochs"),
            "epoch_seconds": mean("epoch_seconds"), "run_seconds": mean("run_seconds"),
            "levels": _mean_levels(runs)})
    return rows


def _mean_levels(runs: list[dict]) -> list[dict] | None:
    if "levels" not in runs[0]:
        return None
    count = min(len(r["levels"]) for r in runs)
    return [{key: float(np.mean([r["levels"][i][key] for r in runs]))
             for key in ("density", "test_accuracy")} for i in range(count)]


def markdown(rows: list[dict]) -> str:
    """The table as Markdown: accuracy mean +- std, density, kept/params, sizes, times."""
    lines = ["| method | test accuracy | density | kept / params | export (float32) | "
             "epochs | s / epoch | s / run |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        accuracy = f"{r['test_accuracy_mean']:.4f}"
        if r["seeds"] > 1:
            accuracy += f" ± {r['test_accuracy_std']:.4f} ({r['seeds']} seeds)"
        export = "–" if r["export_bytes"] is None else _kb(r["export_bytes"])
        method = _method(r) + (" (matched density)" if "@" in r["method"] else "")
        lines.append(
            f"| {method} | {accuracy} | {100 * r['density']:.1f}% | "
            f"{r['kept']:,.0f} / {r['params']:,.0f} | {export} ({_kb(r['float32_bytes'])}) | "
            f"{r['epochs']:g} | {r['epoch_seconds']:.3f} | {r['run_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _kb(size: float) -> str:
    return f"{size / 1024:,.1f} KiB"


def write_results(settings, rows: list[dict], workdir: pathlib.Path):
    """``compare.md``, ``compare.json`` and ``compare.png`` in ``workdir``."""
    title = f"{settings.model} on {settings.dataset}"
    (workdir / "compare.md").write_text(f"{title}\n\n{markdown(rows)}")
    (workdir / "compare.json").write_text(json.dumps(
        {"settings": settings.to_dict(), "rows": rows}, indent=1) + "\n")
    plot(rows, workdir / "compare.png", title=title)


def plot(rows: list[dict], out: pathlib.Path, *, title: str = "") -> None:
    """Left: test accuracy per method (mean, std bars, every seed a dot).

    Right: accuracy against density (log x, densest left): each pruning
    method's levels as a line, the mask methods as points, the full-density
    methods as dashed lines.
    """
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 0.9 + 0.36 * len(rows) + 2.5),
                                       gridspec_kw={"width_ratios": [1, 1.2]})
    ys = np.arange(len(rows))[::-1]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {}   # one per method: edge-popup's densities share one
    for r in rows:
        colors.setdefault(_method(r), cycle[len(colors) % len(cycle)])
    for y, r in zip(ys, rows):
        color = colors[_method(r)]
        bars.plot(r["test_accuracy"], [y] * r["seeds"], "o", ms=3, alpha=0.6, color=color)
        bars.errorbar(r["test_accuracy_mean"], y, xerr=r["test_accuracy_std"], fmt="|",
                      ms=14, color=color, capsize=3)
    bars.set(yticks=ys, yticklabels=[f"{_method(r)} ({100 * r['density']:.3g}%)"
                                     for r in rows], xlabel="test accuracy")
    bars.grid(alpha=0.3, axis="x")
    for r in rows:
        color, label = colors[_method(r)], _method(r)
        if r["levels"]:
            curves.plot([100 * v["density"] for v in r["levels"]],
                        [v["test_accuracy"] for v in r["levels"]], "o-", ms=3, color=color,
                        label=label)
        elif r["density"] > 0.999:
            curves.axhline(r["test_accuracy_mean"], ls="--", color=color, label=label)
        else:
            first = not any(_method(o) == label and o["density"] < 0.999
                            for o in rows[:rows.index(r)])
            curves.errorbar(100 * r["density"], r["test_accuracy_mean"],
                            yerr=r["test_accuracy_std"], fmt="s", ms=6, color=color,
                            capsize=3, label=label if first else None)
    curves.set(xscale="log", xlabel="weights remaining (%)", ylabel="test accuracy")
    curves.invert_xaxis()
    curves.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    curves.grid(alpha=0.3, which="both")
    curves.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _method(row: dict) -> str:
    return row["method"].split("@")[0]


def main(argv, get_config: Callable[[], ml_collections.ConfigDict] = get_config):
    """The command line: settings from the flags (defaults: ``get_config()``), then `run`."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    settings = sweeps.config_from_flags(get_config())
    try:
        check_settings(settings)
    except ValueError as error:
        train.exit_usage(f"FATAL {error}")
    compile_cache.use_from_flags()
    begin = time.perf_counter()
    rows = run(settings)
    print(markdown(rows))
    print(f"{time.perf_counter() - begin:.0f} s; wrote {settings.workdir}/compare.md, "
          f"compare.json and compare.png")


if __name__ == "__main__":
    sweeps.define_flags(get_config(), HELP)
    app.run(main)
