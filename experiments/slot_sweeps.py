"""Slot Machine studies of Aladago & Torresani (ICML 2021) at CPU scale.

    python -m experiments.slot_sweeps --studies=k,sharing,finetune,memory \
        --out_dir=experiments/results/slot_machines

Each study writes a JSON file of one record per run (written after every run,
so an interrupted study resumes where it stopped) and, but ``memory``, a PNG:

* ``k``: test accuracy against the options per connection K (``--ks``) with
  greedy and probabilistic selection, for each ``--models``, with the learned
  dense network of the same model as a dashed line (paper Fig. 3/5);
* ``sharing``: LeNet-300-100, greedy, one set of K options per layer shared
  by all its connections against independent options (the ``k`` runs);
* ``finetune``: a greedy K=8 LeNet-300-100 trained ``--epochs``, converted
  to plain weights (`randjax.methods.slot_machine.to_dense`) and trained on as a dense
  network for ``--epochs`` more, against a dense network trained from its
  own random init for the same total epochs (the paper's "Slot Machines as
  initialisation");
* ``memory``: the compiled train step's memory (XLA's
  ``memory_analysis``) with options stored against redrawn inside ``apply``
  (``store_weights=False``), and the exported file size against float32.

Slot Machine runs use the reference's setup (`experiments/configs/slot_machine.py`:
no biases, official init, SGD momentum 0.9, no weight decay, constant rate,
batch 128; lr 0.1 for K <= 8 and 0.01 above when greedy, ``--sample_lr`` when
sampling; dropout 0.5 before the conv nets' dense layers). Learned dense
baselines (and the fine-tuning) use hidden-networks' dense setup (SGD lr
0.01, momentum 0.9, weight decay 1e-4, per-epoch cosine), as the edge-popup
sweeps do. The settings are the fields of `get_config` (each a flag of its
name); the budget keeps all studies within about an hour on a 2-core CPU;
the paper trains 200 epochs (LeNet) and 100+ (conv nets). From Python:
``k_study(get_config(), out_dir)``.
"""

from __future__ import annotations

import functools
import math
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app

import randjax
from experiments import registry, sweeps, train
from experiments.configs import dense
from experiments.sweeps import Records, plot, plot_panels, result_row
from randjax import data as data_lib
from randjax import models

HELP = {
    "studies": "Which studies to run.",
    "out_dir": "Where the JSON records and PNGs go.",
    "dataset": "Data set (randjax.data.load).",
    "models": "Models of the K study.",
    "ks": "Options per connection.",
    "modes": "Selections of the K study.",
    "sample_lr": "SGD rate of probabilistic selection (reference: 25-50).",
    "epochs": "Epochs per LeNet run.",
    "conv_epochs": "Epochs per conv-net run.",
    "conv_train_limit": "Training images for conv nets (CPU budget); 0: all.",
    "memory_models": "Models of the memory study.",
    "memory_ks": "K of the memory study.",
    "seed": "Seed of every run.",
}

_LENET = "lenet300_100"


def get_config() -> ml_collections.ConfigDict:
    """The studies' default settings (see `HELP`)."""
    return ml_collections.ConfigDict(dict(
        studies=("k", "sharing", "finetune", "memory"),
        out_dir="experiments/results/slot_machines", dataset="fashion_mnist",
        models=(_LENET, "conv2", "conv4"), ks=(2, 4, 8, 16, 32, 64),
        modes=("greedy", "sample"), sample_lr=25.0, epochs=3, conv_epochs=2,
        conv_train_limit=5_000, memory_models=(_LENET, "conv4"), memory_ks=(2, 8, 64),
        seed=0))


def run_config(study, method: str, model: str, **overrides) -> ml_collections.ConfigDict:
    """One run's config: the method's reference setup, the budget, ``overrides``.

    No biases; dropout 0.5 before the conv nets' dense layers (the
    reference's); dense baselines as hidden-networks trains them.
    """
    config = sweeps.run_config(study, method, model, use_bias=False,
                               dropout=0.0 if model in sweeps.MLPS else 0.5)
    if method == "dense":  # hidden-networks' learned baselines
        dense.hidden_networks(config)
    config.update(**overrides)
    return config


def _slot_lr(study, k: int, selection: str) -> float:
    if selection == "sample":
        return study.sample_lr
    return 0.1 if k <= 8 else 0.01  # the reference's greedy rates


def _slot_run(study, records: Records, name: str, model: str, k: int, selection: str,
              **overrides) -> dict:
    config = run_config(study, "slot_machine", model, k=k, selection=selection,
                        learning_rate=_slot_lr(study, k, selection), **overrides)
    return records.run(name, config, method="slot_machine", model=model, k=k,
                       selection=selection, learning_rate=config.learning_rate,
                       **overrides)


def _dense_run(study, records: Records, name: str, model: str, **overrides) -> dict:
    return records.run(name, run_config(study, "dense", model, **overrides),
                       method="dense", model=model, **overrides)


def k_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    """Runs ``ks`` x ``modes`` per model; plots every K recorded so far."""
    records = Records(out / "k.json")
    panels = {}
    for model in study.models:
        baseline = _dense_run(study, records, f"{model}/dense", model)["test_accuracy"]
        for mode in study.modes:
            for k in study.ks:
                _slot_run(study, records, f"{model}/{mode}/{k}", model, k, mode)
        series = {mode: [(row["k"], row["test_accuracy"]) for row in records.rows
                         if row["model"] == model and row.get("selection") == mode]
                  for mode in study.modes}
        panels[model] = (series, {model: baseline})
        plot_panels(out / "k.png", panels, "options per connection K", "log2")


def sharing_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    independent = Records(out / "k.json")
    records = Records(out / "sharing.json")
    series = {
        "independent options": [
            (k, _slot_run(study, independent, f"{_LENET}/greedy/{k}", _LENET, k, "greedy")
             ["test_accuracy"]) for k in study.ks],
        "shared per layer": [
            (k, _slot_run(study, records, f"shared/{k}", _LENET, k, "greedy",
                          shared_options=True)["test_accuracy"]) for k in study.ks]}
    baseline = _dense_run(study, independent, f"{_LENET}/dense", _LENET)["test_accuracy"]
    plot(out / "sharing.png", f"LeNet-300-100 on {study.dataset}: weight sharing",
         series, {"LeNet-300-100": baseline}, "options per connection K", "log2")


def finetune_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    records = Records(out / "finetune.json")
    epochs = study.epochs
    if records.get("finetuned") is None:  # the slot run again: its state is needed
        config = run_config(study, "slot_machine", _LENET, k=8, learning_rate=0.1)
        result = train.train_and_evaluate(config, None, progress=False)
        if records.get("slots") is None:
            records.add(result_row("slots", config, result, k=8))
        state = result.state
        reparam = registry.build(config, optax.identity()).reparam
        start = randjax.methods.slot_machine.to_dense(reparam, state.trainable,
                                                      state.frozen)
        config = run_config(study, "dense", _LENET)
        result = train.train_and_evaluate(config, None, progress=False,
                                          reparam=randjax.dense_from(start))
        records.add(result_row("finetuned", config, result))
    scratch = _dense_run(study, records, "dense", _LENET, epochs=2 * epochs)
    slots, tuned = records.get("slots"), records.get("finetuned")
    curve = lambda row, first: list(enumerate(row["test_accuracy_per_epoch"], first))
    series = {"Slot Machine K=8 (greedy)": curve(slots, 1),
              "then fine-tuned as dense": curve(tuned, epochs + 1),
              "dense from random init": curve(scratch, 1)}
    plot(out / "finetune.png", f"LeNet-300-100 on {study.dataset}: fine-tuning",
         series, {}, "epoch")


def _step_memory(dataset: data_lib.Dataset, model_name: str, reparam: randjax.Reparam,
                 batch: int = 128) -> dict:
    """Bytes of the compiled train step (SGD momentum) and of its state."""
    model = models.get(model_name, num_classes=dataset.num_classes, use_bias=False)
    tx = optax.sgd(0.1, momentum=0.9)
    state = randjax.train.init_state(model, reparam, tx, dataset.input_shape,
                                     jax.random.key(0))
    x = jnp.zeros((batch, *dataset.input_shape))
    y = jnp.zeros((batch,), jnp.int32)
    step = jax.jit(randjax.train.make_train_step(model, reparam, tx), donate_argnums=0)
    stats = step.lower(state, x, y, jax.random.key(1)).compile().memory_analysis()
    nbytes = lambda tree: sum(leaf.nbytes for leaf in jax.tree.leaves(tree))
    return {"state_bytes": nbytes(state), "frozen_bytes": nbytes(state.frozen),
            "step_argument_bytes": stats.argument_size_in_bytes,
            "step_temp_bytes": stats.temp_size_in_bytes,
            "step_peak_bytes": stats.argument_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes + stats.temp_size_in_bytes}


def _export_size(dataset: data_lib.Dataset, model_name: str, k: int) -> dict:
    model = models.get(model_name, num_classes=dataset.num_classes, use_bias=False)
    params = model.init(jax.random.key(0), jnp.zeros((1, *dataset.input_shape)))["params"]
    reparam = randjax.slot_machine(k, store_weights=False)
    trainable, frozen = reparam.init(jax.random.key(1), params)
    with tempfile.TemporaryDirectory() as tmp:
        info = randjax.export.save(pathlib.Path(tmp) / "net", reparam, trainable, frozen)
    return {"export_bytes": info.bytes, "float32_bytes": info.float32_bytes,
            "export_ratio": info.ratio, "bits_per_connection": math.ceil(math.log2(k))}


def memory_study(study: ml_collections.ConfigDict, out: pathlib.Path):
    """Stored against memory-lean options; no training, so no PNG."""
    records = Records(out / "memory.json")
    dataset = data_lib.load(study.dataset, val_fraction=0.0)
    for model in study.memory_models:
        for k in study.memory_ks:
            name = f"{model}/{k}"
            if records.get(name) is not None:
                continue
            dense_peak = _step_memory(dataset, model, randjax.dense())["step_peak_bytes"]
            row = {"name": name, "model": model, "k": k, "step_peak_bytes_dense": dense_peak}
            for store in (True, False):
                memory = _step_memory(dataset, model,
                                      randjax.slot_machine(k, store_weights=store))
                row.update({f"{key}_{'stored' if store else 'lean'}": value
                            for key, value in memory.items()})
            records.add({**row, **_export_size(dataset, model, k)})
            print(f"memory: {name}: peak stored {row['step_peak_bytes_stored'] / 2**20:.1f} "
                  f"MiB, lean {row['step_peak_bytes_lean'] / 2**20:.1f} MiB", flush=True)


STUDIES = {"k": k_study, "sharing": sharing_study, "finetune": finetune_study,
           "memory": memory_study}


if __name__ == "__main__":
    sweeps.define_flags(get_config(), HELP)
    app.run(functools.partial(sweeps.main, get_config, STUDIES))
