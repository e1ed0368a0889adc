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
  to plain weights (`randjax.slots.to_dense`) and trained on as a dense
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
sweeps do. The budget flags keep all studies within about an hour on a 2-core
CPU; the paper trains 200 epochs (LeNet) and 100+ (conv nets).
"""

from __future__ import annotations

import math
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app, flags

import randjax
from experiments import train
from experiments.configs import dense, slot_machine
from experiments.sweeps import (
    Records,
    dense_from,
    plot,
    plot_panels,
    result_row,
    run_studies,
)
from randjax import data as data_lib
from randjax import models

_STUDIES = flags.DEFINE_list("studies", ["k", "sharing", "finetune", "memory"],
                             "Which studies to run.")
_OUT_DIR = flags.DEFINE_string("out_dir", "experiments/results/slot_machines",
                               "Where the JSON records and PNGs go.")
_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", "Data set (randjax.data.load).")
_MODELS = flags.DEFINE_list("models", ["lenet300_100", "conv2", "conv4"],
                            "Models of the K study.")
_KS = flags.DEFINE_list("ks", ["2", "4", "8", "16", "32", "64"], "Options per connection.")
_MODES = flags.DEFINE_list("modes", ["greedy", "sample"], "Selections of the K study.")
_SAMPLE_LR = flags.DEFINE_float("sample_lr", 25.0,
                                "SGD rate of probabilistic selection (reference: 25-50).")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs per LeNet run.")
_CONV_EPOCHS = flags.DEFINE_integer("conv_epochs", 2, "Epochs per conv-net run.")
_CONV_TRAIN_LIMIT = flags.DEFINE_integer(
    "conv_train_limit", 5_000, "Training images for conv nets (CPU budget); 0: all.")
_MEMORY_MODELS = flags.DEFINE_list("memory_models", ["lenet300_100", "conv4"],
                                   "Models of the memory study.")
_MEMORY_KS = flags.DEFINE_list("memory_ks", ["2", "8", "64"], "K of the memory study.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every run.")

_LENET = "lenet300_100"


def run_config(method: str, model: str, **overrides) -> ml_collections.ConfigDict:
    """One run's config: the method's reference setup, the budget, ``overrides``."""
    conv = model != _LENET
    if method == "dense":  # hidden-networks' learned baselines
        config = dense.get_config()
        config.update(optimizer="sgd", learning_rate=0.01, weight_decay=1e-4,
                      schedule="cosine_epoch")
    else:
        config = slot_machine.get_config()
    config.update(dataset=_DATASET.value, val_fraction=0.0, model=model, use_bias=False,
                  dropout=0.5 if conv else 0.0,
                  epochs=_CONV_EPOCHS.value if conv else _EPOCHS.value,
                  train_limit=(_CONV_TRAIN_LIMIT.value or None) if conv else None,
                  seed=_SEED.value)
    config.update(**overrides)
    return config


def _slot_lr(k: int, selection: str) -> float:
    if selection == "sample":
        return _SAMPLE_LR.value
    return 0.1 if k <= 8 else 0.01  # the reference's greedy rates


def _slot_run(records: Records, name: str, model: str, k: int, selection: str,
              **overrides) -> dict:
    config = run_config("slot_machine", model, k=k, selection=selection,
                        learning_rate=_slot_lr(k, selection), **overrides)
    return records.run(name, config, method="slot_machine", model=model, k=k,
                       selection=selection, learning_rate=config.learning_rate,
                       **overrides)


def _dense_run(records: Records, name: str, model: str, **overrides) -> dict:
    return records.run(name, run_config("dense", model, **overrides), method="dense",
                       model=model, **overrides)


def _ks(values) -> list[int]:
    return [int(k) for k in values]


def k_study(out: pathlib.Path):
    """Runs ``--ks`` x ``--modes`` per model; plots every K recorded so far."""
    records = Records(out / "k.json")
    panels = {}
    for model in _MODELS.value:
        baseline = _dense_run(records, f"{model}/dense", model)["test_accuracy"]
        for mode in _MODES.value:
            for k in _ks(_KS.value):
                _slot_run(records, f"{model}/{mode}/{k}", model, k, mode)
        series = {mode: [(row["k"], row["test_accuracy"]) for row in records.rows
                         if row["model"] == model and row.get("selection") == mode]
                  for mode in _MODES.value}
        panels[model] = (series, {model: baseline})
        plot_panels(out / "k.png", panels, "options per connection K", "log2")


def sharing_study(out: pathlib.Path):
    independent = Records(out / "k.json")
    records = Records(out / "sharing.json")
    series = {
        "independent options": [
            (k, _slot_run(independent, f"{_LENET}/greedy/{k}", _LENET, k, "greedy")
             ["test_accuracy"]) for k in _ks(_KS.value)],
        "shared per layer": [
            (k, _slot_run(records, f"shared/{k}", _LENET, k, "greedy",
                          shared_options=True)["test_accuracy"]) for k in _ks(_KS.value)]}
    baseline = _dense_run(independent, f"{_LENET}/dense", _LENET)["test_accuracy"]
    plot(out / "sharing.png", f"LeNet-300-100 on {_DATASET.value}: weight sharing",
         series, {"LeNet-300-100": baseline}, "options per connection K", "log2")


def finetune_study(out: pathlib.Path):
    records = Records(out / "finetune.json")
    epochs = _EPOCHS.value
    if records.get("finetuned") is None:  # the slot run again: its state is needed
        config = run_config("slot_machine", _LENET, k=8, learning_rate=0.1)
        result = train.train_and_evaluate(config, None, progress=False)
        if records.get("slots") is None:
            records.add(result_row("slots", config, result, k=8))
        state = result.state
        start = randjax.slots.to_dense(train.make_reparam(config), state.trainable,
                                       state.frozen)
        config = run_config("dense", _LENET)
        result = train.train_and_evaluate(config, None, progress=False,
                                          reparam=dense_from(lambda key, params: start))
        records.add(result_row("finetuned", config, result))
    scratch = _dense_run(records, "dense", _LENET, epochs=2 * epochs)
    slots, tuned = records.get("slots"), records.get("finetuned")
    curve = lambda row, first: list(enumerate(row["test_accuracy_per_epoch"], first))
    series = {"Slot Machine K=8 (greedy)": curve(slots, 1),
              "then fine-tuned as dense": curve(tuned, epochs + 1),
              "dense from random init": curve(scratch, 1)}
    plot(out / "finetune.png", f"LeNet-300-100 on {_DATASET.value}: fine-tuning",
         series, {}, "epoch")


def _step_memory(model_name: str, reparam: randjax.Reparam, batch: int = 128) -> dict:
    """Bytes of the compiled train step (SGD momentum) and of its state."""
    dataset = data_lib.load(_DATASET.value, val_fraction=0.0)
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


def _export_size(model_name: str, k: int) -> dict:
    dataset = data_lib.load(_DATASET.value, val_fraction=0.0)
    model = models.get(model_name, num_classes=dataset.num_classes, use_bias=False)
    params = model.init(jax.random.key(0), jnp.zeros((1, *dataset.input_shape)))["params"]
    reparam = randjax.slot_machine(k, store_weights=False)
    trainable, frozen = reparam.init(jax.random.key(1), params)
    with tempfile.TemporaryDirectory() as tmp:
        info = randjax.export.save(pathlib.Path(tmp) / "net", reparam, trainable, frozen)
    return {"export_bytes": info.bytes, "float32_bytes": info.float32_bytes,
            "export_ratio": info.ratio, "bits_per_connection": math.ceil(math.log2(k))}


def memory_study(out: pathlib.Path):
    """Stored against memory-lean options; no training, so no PNG."""
    records = Records(out / "memory.json")
    for model in _MEMORY_MODELS.value:
        for k in _ks(_MEMORY_KS.value):
            name = f"{model}/{k}"
            if records.get(name) is not None:
                continue
            dense = _step_memory(model, randjax.dense())["step_peak_bytes"]
            row = {"name": name, "model": model, "k": k, "step_peak_bytes_dense": dense}
            for store in (True, False):
                memory = _step_memory(model, randjax.slot_machine(k, store_weights=store))
                row.update({f"{key}_{'stored' if store else 'lean'}": value
                            for key, value in memory.items()})
            records.add({**row, **_export_size(model, k)})
            print(f"memory: {name}: peak stored {row['step_peak_bytes_stored'] / 2**20:.1f} "
                  f"MiB, lean {row['step_peak_bytes_lean'] / 2**20:.1f} MiB", flush=True)


STUDIES = {"k": k_study, "sharing": sharing_study, "finetune": finetune_study,
           "memory": memory_study}


def main(argv):
    del argv
    run_studies(STUDIES, _STUDIES.value, _OUT_DIR.value, "studies")


if __name__ == "__main__":
    app.run(main)
