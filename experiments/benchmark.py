"""Training speed: median step time, images per second, full-epoch time.

    python -m experiments.benchmark --model=lenet300_100 --dataset=fashion_mnist \
        --batch=128 --optimizer=adam
    python -m experiments.benchmark --model=conv4 --dataset=synthetic \
        --input_shape=32,32,3 --num_examples=5000 --batch=128 \
        --methods=dense,edge_popup --optimizer=sgd
    python -m experiments.benchmark --model=lenet300_100 --dataset=digits \
        --batch=64 --methods=slot_machine --k=8 --optimizer=sgd
    python -m experiments.benchmark --model=lenet300_100 --dataset=fashion_mnist \
        --optimizer=adam --methods=dense,laperm --laperm_sync_period=20
    python -m experiments.benchmark --select_size=2000000 --steps=15
    python -m experiments.benchmark --model=conv4 --dataset=synthetic \
        --input_shape=32,32,3 --num_examples=5000 --batch=128 \
        --methods=dense,masked --optimizer=sgd
    python -m experiments.benchmark --model=lenet300_100 --dataset=fashion_mnist \
        --optimizer=sgd --analysis
    python -m experiments.benchmark --model=lenet300_100 --dataset=fashion_mnist \
        --optimizer=sgd --model_apis

Every number comes from one process, after compilation: the median of
``--steps`` individually dispatched train steps, and the median of
``--epochs`` whole epochs run by `randjax.fit`'s jitted `lax.scan`, the
``--methods`` timed in turn round by round (``ratio_to_dense``: step time
over dense's; ``epoch_ratio_to_dense``: the same for whole epochs, the
steps `randjax.fit` runs). The
ratio ``epoch / (steps_per_epoch * step)`` is the loop overhead. Results are
printed as a table and as JSON (also written to ``--json`` if given).

Every ``--methods`` name is a registered method (`experiments.registry`),
built from its reference config with ``--density`` (edge-popup, TOM; and
``--tom_bits``), ``--k``
(Slot Machines, greedy) and ``--laperm_sync_period`` /
``--laperm_include_1d`` (LaPerm), around the shared ``--optimizer``.
``masked`` trains under a random mask at ``--density`` (`randjax.masked`);
it also reports ``global_mask_ms``, one global magnitude mask over all the
model's kernels (`randjax.pruning.prune_remaining`, exact counts), next to
``sort_ms``, one ``jnp.sort`` of the same magnitudes, and
``global_mask_over_epoch``, the mask's time over dense's epoch.
``laperm`` is the optimizer `randjax.laperm` around ``--optimizer`` (dense
parameters): its median single step is a step without a sync, so it also
reports the *amortised* step, ``amortised_step_ms``: the median time of
``--laperm_sync_period`` consecutive steps (one of them a sync) over their
number, timed in turn with the same block of plain steps
(``amortised_ratio``), and
``sync_ms``, one jitted `randjax.permute.sync` of the model's parameters.
The two steps differ only in the optimizer update, so ``update_ms`` and
``plain_update_ms`` time the updates alone (`update_seconds`, blocks of
``--laperm_sync_period``), and ``amortised_ratio_from_updates`` is
``1 + (update_ms - plain_update_ms) / block_step_ms``: the amortised ratio
without the noise of timing the forward and backward passes twice.

Every method also reports `randjax.fit`'s divergence check:
``nonfinite_check_ms``, the check of an epoch's losses with the parameters'
finiteness reduction (`randjax.train.all_finite`) dispatched on its own (an
upper bound: `randjax.fit` runs the reduction inside the jitted epoch), its
share of the epoch (``nonfinite_check_over_epoch``), and
``unchecked_epoch_seconds``, the epoch without the reduction, timed in turn.

``--model_apis`` adds ``model_apis``: the dense epoch of the same network
(an MLP of the zoo, same initial weights) given to `randjax.fit` as the
zoo's Linen module, as a Flax NNX module and as plain functions
(`randjax.models.from_functions`), timed in turn, with each one's ratio to
Linen's (``nnx_over_linen``, ``functions_over_linen``). That the three run
the same computation is checked, not assumed: ``identical_losses`` (the
first epoch's per-step losses) and ``identical_params`` (the weights after
all the epochs run) say, per API, whether they equal Linen's bit for bit.

``--seeds=N`` adds `seeds_seconds`: one epoch of N independent dense runs
(own initial weights, optimizer state and data order) as a loop of jitted
epochs and as one `jax.vmap` over the seeds (``vmap_speedup``), and
``max_loss_difference``, the largest gap between the two's per-step losses.

``--analysis`` adds, on the model's first kernel (``Dense_0``), the
frame-potential timings of `analysis_seconds`: ``loo_fp_ms``, all
leave-one-out potentials from one Gram matrix
(`randjax.analysis.leave_one_out_fp`), against ``loo_fp_reference_ms``,
the reference's recomputation per candidate (one Gram matrix of the other
units each, jitted and vmapped); ``greedy_fp_s``, the greedy order of
``int(0.9 N)`` removals (`randjax.methods.structured.fp_order`), against
``greedy_fp_reference_s``, the reference's loop (one recomputation per
removal, timed over ``--fp_reference_removals`` removals and scaled to the
same count: ``greedy_fp_reference_extrapolated``); and ``hook_ms``, one
call of `randjax.analysis.dynamics_hook` with spectra on every kernel, with
``hook_over_epoch``, its share of dense's epoch, and ``hook_parts_ms``, its
measures timed alone (each over every kernel in one jitted program; ``ranks``
is one ranking, the ranking distance's share).

Every run also reports ``shuffle``: one epoch's data order over the
training split as `randjax.fit` draws it (`randjax.permute.random_permutation`)
and as `jax.random.permutation` does, checked equal bit for bit and timed in
turn (the bare scan above draws JAX's).

``--conv_phases`` times Conv-4's step and every layer's phases instead
(`experiments.conv_phases`; `experiments.pytorch_conv4` times PyTorch's),
with ``--in_loop=N`` also inside a loop of N calls, as in an epoch.

``--end_to_end=NAMES`` (comma-separated presets, or ``all``) times instead
the whole process of ``python -m experiments.train`` on each preset, cold
and warm compilation cache, phase by phase over ``--repeats`` rounds
(`experiments.end_to_end`).

``--init_times=NAMES`` (zoo models, or ``all``) times `randjax.train.init_state`
for each model on 28x28x1, each in its own process, cold and warm
compilation cache, with the dense network and SGD or (``--init_method=laperm``)
LaPerm around Adam, medians over ``--repeats`` rounds (`experiments.init_times`).
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

import randjax
from experiments import conv_phases, end_to_end, init_times, registry, timing
from randjax import data as data_lib
from randjax import models, permute, train
from randjax.methods import slot_machine

_MODEL = flags.DEFINE_string("model", "conv4", "Model name (randjax.models.names()).")
_DATASET = flags.DEFINE_string("dataset", "synthetic",
                               "Data set name for randjax.data.load, or 'synthetic'.")
_INPUT_SHAPE = flags.DEFINE_list("input_shape", ["32", "32", "3"],
                                 "H,W,C of synthetic inputs.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 5000, "Synthetic training examples.")
_BATCH = flags.DEFINE_integer("batch", 128, "Global batch size.")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd"], "Optimizer.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed single steps.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Timed epochs.")
_JSON = flags.DEFINE_string("json", None, "Also write the results here.")
_METHODS = flags.DEFINE_list("methods", ["dense"], "Methods to time side by side "
                             "(dense is always included): names of experiments.registry "
                             "(dense, edge_popup, supermask, slot_machine, laperm, ...), and "
                             "slot_machine_factored (mode='factored' with slot_sgd; "
                             "--optimizer=sgd).")
_DENSITY = flags.DEFINE_float("density", 0.5, "Kept fraction for edge_popup, masked and tom.")
_K = flags.DEFINE_integer("k", 8, "Options per connection for slot_machine (greedy, "
                          "official init).")
_LAPERM_SYNC_PERIOD = flags.DEFINE_integer(
    "laperm_sync_period", 20, "Sync period k of the laperm method.")
_LAPERM_INCLUDE_1D = flags.DEFINE_bool(
    "laperm_include_1d", False, "laperm also permutes biases (skip_bias=False).")
_TOM_BITS = flags.DEFINE_enum("tom_bits", "hash", ["hash", "threefry"],
                               "Where tom's mask samples get their bits (randjax.masks).")
_SELECT_SIZE = flags.DEFINE_integer(
    "select_size", 0, "If > 0, only time kth_largest against jnp.sort on this many values.")
_SEEDS = flags.DEFINE_integer(
    "seeds", 0, "If > 0, also time one epoch of this many dense runs: a loop of jitted "
    "epochs against one jax.vmap over the seeds (see seeds_seconds).")
_ANALYSIS = flags.DEFINE_bool("analysis", False, "Also time the frame-potential analyses "
                              "and the dynamics hook (see the module docstring).")
_FP_REFERENCE_REMOVALS = flags.DEFINE_integer(
    "fp_reference_removals", 5, "Removals of the reference's greedy loop that are timed.")
_MODEL_APIS = flags.DEFINE_bool(
    "model_apis", False, "Also time the dense epoch of the same MLP as a Linen module, an NNX "
    "module and plain functions (an MLP --model: lenet300_100, mlp400x3, f1, f2).")
_END_TO_END = flags.DEFINE_list(
    "end_to_end", [], "Presets (or 'all') to run end to end as `experiments.train` "
    "processes, cold and warm cache, timing each phase (experiments.end_to_end).")
_REPEATS = flags.DEFINE_integer("repeats", 1,
                                "Rounds of --end_to_end and --init_times (medians).", lower_bound=1)
_INIT_TIMES = flags.DEFINE_list(
    "init_times", [], "Zoo models (or 'all') whose init_state to time on 28x28x1, each in "
    "its own process, cold and warm cache (experiments.init_times).")
_INIT_METHOD = flags.DEFINE_enum("init_method", "dense", init_times.METHODS,
                                 "With --init_times: the dense network and SGD, or LaPerm.")
_CONV_PHASES = flags.DEFINE_bool(
    "conv_phases", False, "Instead, time Conv-4's step and each layer's forward, input and "
    "kernel gradients and pooling (experiments.conv_phases; PyTorch's: "
    "experiments.pytorch_conv4).")
_IN_LOOP = flags.DEFINE_integer(
    "in_loop", 0, "With --conv_phases: also time every phase this many times inside one "
    "lax.fori_loop (per call), where fit's epochs run their steps.", lower_bound=0)
_FAST_CONV_GRAD = flags.DEFINE_bool(
    "fast_conv_grad", True, "Zoo convs compute their gradients randjax's way on CPU: the "
    "kernel gradient as matmuls (one per kernel row), the input gradient as a conv with "
    "the flipped kernel (--nofast_conv_grad: XLA's own, to compare).")


def _synthetic(shape, n, num_classes=10, seed=0) -> data_lib.Dataset:
    rng = np.random.default_rng(seed)
    split = lambda m: data_lib.Split(rng.standard_normal((m, *shape), np.float32),
                                     rng.integers(0, num_classes, m, dtype=np.int32))
    empty = split(0)
    return data_lib.Dataset("synthetic", split(n), empty, empty, num_classes,
                            tuple(shape), np.zeros(shape[-1]), np.ones(shape[-1]))


def prepare(model_name: str, dataset: data_lib.Dataset, batch: int,
            tx: optax.GradientTransformation, reparam: randjax.Reparam):
    """Compiled ``(one_step, one_epoch, check, unchecked_epoch)`` of one method.

    ``check`` is `randjax.fit`'s divergence check of the last epoch's losses
    and parameters (`randjax.train.find_nonfinite`, `randjax.train.all_finite`)
    dispatched on its own; ``unchecked_epoch`` is the epoch without the
    parameters' finiteness reduction that ``one_epoch`` (as `randjax.fit`)
    runs inside it.
    """
    model = models.get(model_name, num_classes=dataset.num_classes,
                       fast_conv_grad=_FAST_CONV_GRAD.value)
    mesh = train.data_mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.device_put(train.init_state(model, reparam, tx, dataset.input_shape,
                                            jax.random.key(0)), replicated)
    x, y = jax.device_put((dataset.train.x, dataset.train.y), replicated)
    step = jax.jit(train.make_train_step(model, reparam, tx), donate_argnums=0)
    xb, yb, key = x[:batch], y[:batch], jax.random.key(1)
    held = {"state": state, "losses": None}

    def one_step():
        held["state"], metrics = step(held["state"], xb, yb, key)
        return metrics

    epoch_fns = [train.make_epoch_fn(train.make_train_step(model, reparam, tx), mesh,
                                     len(dataset.train.y), batch, check_finite=check)
                 for check in (True, False)]

    def one_epoch(epoch_fn=epoch_fns[0]):  # fit fetches the per-step losses every epoch
        held["state"], *out = epoch_fn(held["state"], x, y, key)
        held["losses"] = jax.device_get(out[0])
        return held["losses"]

    def check():
        # An upper bound: the parameters' reduction, which fit runs inside the
        # jitted epoch, dispatched on its own here.
        state = held["state"]
        finite = train.all_finite((state.trainable, state.model_state))
        if train.find_nonfinite(held["losses"], bool(finite), 0, 1):
            raise FloatingPointError("the benchmark's training diverged")

    unchecked_epoch = functools.partial(one_epoch, epoch_fns[1])
    one_step(), one_epoch(), check(), unchecked_epoch()  # compile
    return one_step, one_epoch, check, unchecked_epoch


def build(name: str, tx: optax.GradientTransformation) -> registry.Method:
    """The registered method ``name`` around ``tx``, with this run's method flags."""
    options = {"edge_popup": dict(density=_DENSITY.value),
               "masked": dict(density=_DENSITY.value),
               "tom": dict(density=_DENSITY.value),
               "slot_machine": dict(k=_K.value, selection="greedy", slot_init="official"),
               "laperm": dict(sync_period=_LAPERM_SYNC_PERIOD.value,
                              laperm_include_1d=_LAPERM_INCLUDE_1D.value)}
    if name == "slot_machine_factored":   # the same Slot Machine and SGD, factored
        config = registry.get_config("slot_machine")
        config.update(options["slot_machine"], slot_mode="factored",
                      optimizer=_OPTIMIZER.value)
        return registry.build(config, slot_machine.slot_sgd(0.1, momentum=0.9))
    config = registry.get_config(name)
    config.update(options.get(name, {}))
    if name == "tom":
        config.tom.bits = _TOM_BITS.value
    return registry.build(config, tx)


def benchmark(model_name: str, dataset: data_lib.Dataset, batch: int,
              methods: dict[str, registry.Method], steps: int, epochs: int, *,
              block: int = 0) -> dict:
    """Times every method, interleaved; step/epoch medians and derived rates.

    ``methods`` maps a name to a `registry.Method` (its reparametrization
    and the optimizer it trains with). With ``block`` > 0 every method's
    ``block_step_ms`` is the median time of ``block`` consecutive steps over
    ``block`` (the amortised step of a method whose steps differ, like
    LaPerm's sync every ``block`` steps).
    """
    compiled = {name: prepare(model_name, dataset, batch, method.optimizer, method.reparam)
                for name, method in methods.items()}
    step_seconds = timing.interleaved_medians({n: c[0] for n, c in compiled.items()}, steps)
    block_seconds = {}
    if block > 0:
        blocks = {n: functools.partial(_steps, c[0], block) for n, c in compiled.items()}
        block_seconds = timing.interleaved_medians(blocks, max(5, steps // block))
    # Each epoch, fit's divergence check of it, and the epoch without the
    # check's in-epoch reduction, timed in turn.
    epoch_and_check = timing.interleaved_medians(
        {f"{n}{part}": c[i] for n, c in compiled.items()
         for part, i in (("", 1), ("/check", 2), ("/unchecked", 3))}, epochs)
    epoch_seconds = {n: epoch_and_check[n] for n in compiled}
    steps_per_epoch = math.ceil(len(dataset.train.y) / batch)
    results = {name: {"step_ms": 1e3 * step_seconds[name],
                      "images_per_second": batch / step_seconds[name],
                      "epoch_seconds": epoch_seconds[name],
                      "steps_per_epoch": steps_per_epoch,
                      "overhead": epoch_seconds[name] / (steps_per_epoch * step_seconds[name]),
                      "nonfinite_check_ms": 1e3 * epoch_and_check[f"{name}/check"],
                      "nonfinite_check_over_epoch": (epoch_and_check[f"{name}/check"]
                                                     / epoch_seconds[name]),
                      "unchecked_epoch_seconds": epoch_and_check[f"{name}/unchecked"]}
               for name in methods}
    for name, seconds in block_seconds.items():
        results[name]["block_step_ms"] = 1e3 * seconds / block
    return results


def _steps(one_step, n: int):
    for _ in range(n):
        out = one_step()
    return out


def _initial_params(model_name: str, dataset: data_lib.Dataset) -> dict:
    model = models.get(model_name, num_classes=dataset.num_classes)
    return model.init(jax.random.key(0), jnp.zeros((1, *dataset.input_shape)))["params"]


def sync_seconds(model_name: str, dataset: data_lib.Dataset, include_1d: bool,
                 repeats: int) -> float:
    """Median seconds of one jitted `randjax.permute.sync` of the model's params."""
    params = _initial_params(model_name, dataset)
    select = lambda path, x: x.ndim >= 2 or (include_1d and x.ndim == 1)
    sorted0 = randjax.permute.sort_vectors(params, filter=select)
    moved = jax.tree.map(lambda x: x + 1e-3 * jax.random.normal(jax.random.key(1), x.shape),
                         params)
    sync = jax.jit(randjax.permute.sync)
    jax.block_until_ready(sync(sorted0, moved))  # compile
    return timing.interleaved_medians({"sync": functools.partial(sync, sorted0, moved)},
                                repeats)["sync"]


def update_seconds(model_name: str, dataset: data_lib.Dataset,
                   txs: dict[str, optax.GradientTransformation], steps: int,
                   repeats: int) -> dict[str, float]:
    """Median seconds per optimizer update alone, over ``steps`` jitted steps.

    Each ``tx`` updates the model's parameters with fixed gradients and
    `randjax.apply_updates`, ``steps`` times in one `lax.scan`, the ``txs``
    timed in turn. Without the forward and backward passes, whose time is
    the same for all of them and swings with this machine's load, the
    difference between two optimizers is measured on its own: for LaPerm
    with ``steps`` equal to its sync period, one sync plus the bookkeeping
    of the other steps.
    """
    params = _initial_params(model_name, dataset)
    grads = jax.tree.map(lambda x: 1e-2 * jax.random.normal(jax.random.key(1), x.shape),
                         params)

    def runner(tx):
        @jax.jit
        def run(params, opt_state):
            def body(carry, _):
                params, opt_state = carry
                updates, opt_state = tx.update(grads, opt_state, params)
                return (randjax.apply_updates(params, updates, opt_state), opt_state), None
            return jax.lax.scan(body, (params, opt_state), None, length=steps)[0]

        carry = [(params, tx.init(params))]

        def go():
            carry[0] = run(*carry[0])
            return carry[0]

        go()  # compile
        return go

    seconds = timing.interleaved_medians({n: runner(tx) for n, tx in txs.items()}, repeats)
    return {name: s / steps for name, s in seconds.items()}


def selection_seconds(n: int, repeats: int) -> dict:
    """``randjax.kth_largest`` against ``jnp.sort`` on ``n`` normal float32 values.

    Both jitted, k = n // 2 (edge-popup at density 0.5), timed in turn.
    """
    x = jax.random.normal(jax.random.key(0), (n,))
    k = n // 2
    fns = {"kth_largest": jax.jit(lambda x: randjax.kth_largest(x, k)),
           "sort": jax.jit(lambda x: jnp.sort(x)[n - k])}
    assert fns["kth_largest"](x) == fns["sort"](x)  # compiles both, checks exactness
    seconds = timing.interleaved_medians({name: functools.partial(fn, x)
                                    for name, fn in fns.items()}, repeats)
    return {"size": n, "kth_largest_ms": 1e3 * seconds["kth_largest"],
            "sort_ms": 1e3 * seconds["sort"],
            "speedup": seconds["sort"] / seconds["kth_largest"]}


def shuffle_seconds(n: int, repeats: int) -> dict:
    """An epoch's data order: `randjax.permute.random_permutation` against JAX's.

    Both jitted on ``n`` examples and checked equal bit for bit, timed in turn.
    """
    fns = {"random_permutation": jax.jit(lambda key: permute.random_permutation(key, n)),
           "jax_permutation": jax.jit(lambda key: jax.random.permutation(key, n))}
    key = jax.random.key(0)
    assert (fns["random_permutation"](key) == fns["jax_permutation"](key)).all()
    seconds = timing.interleaved_medians({name: functools.partial(fn, key)
                                          for name, fn in fns.items()}, repeats)
    return {"examples": n, **{f"{name}_ms": 1e3 * s for name, s in seconds.items()},
            "speedup": seconds["jax_permutation"] / seconds["random_permutation"]}


def global_mask_seconds(model_name: str, dataset: data_lib.Dataset,
                        repeats: int) -> dict:
    """One global magnitude mask over all kernels against one ``jnp.sort`` of them.

    The mask is a pruning round's: 20% of the weights removed by
    `randjax.pruning.prune_remaining` (exact counts, one threshold over every
    kernel, eager as the pruning driver calls it); the sort is jitted over
    the same concatenated magnitudes. Timed in turn.
    """
    targets = randjax.pruning.select(_initial_params(model_name, dataset))
    scores = randjax.pruning.magnitude(targets)
    ones = randjax.pruning.ones(scores)
    flat = jnp.concatenate([jnp.ravel(s) for s in jax.tree.leaves(scores)])
    sort = jax.jit(jnp.sort)
    fns = {"mask": lambda: randjax.pruning.prune_remaining(scores, ones, 0.2),
           "sort": lambda: sort(flat)}
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile
    seconds = timing.interleaved_medians(fns, repeats)
    return {"weights": int(flat.size), "global_mask_ms": 1e3 * seconds["mask"],
            "sort_ms": 1e3 * seconds["sort"]}


def _bare_epoch(model, x, y, batch: int, tx: optax.GradientTransformation):
    """``(epoch, steps)``: one shuffled epoch as a bare scan,
    ``epoch((params, opt_state, batch_stats), key)``; ``batch_stats`` is
    BatchNorm's (the model then runs in training mode), or None."""
    steps = len(y) // batch

    def loss_fn(params, stats, idx):
        if stats is None:
            logits = model.apply({"params": params}, x[idx])
        else:
            logits, new = model.apply({"params": params, "batch_stats": stats}, x[idx],
                                      train=True, mutable=["batch_stats"])
            stats = new["batch_stats"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean(), stats

    def epoch(carry, key):
        def body(carry, idx):
            params, opt_state, stats = carry
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, idx)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, stats), loss
        order = jax.random.permutation(key, len(y))[:steps * batch].reshape(steps, batch)
        return jax.lax.scan(body, carry, order)

    return epoch, steps


def bare_epoch_seconds(model_name: str, dataset: data_lib.Dataset, batch: int,
                       tx: optax.GradientTransformation, epochs: int) -> float:
    """The same epoch as a bare jitted scan: no reparam, keys, sharding or remainder.

    This is the floor a hand-written JAX prototype reaches; `benchmark`'s
    epoch over it is what randjax's generality costs.
    """
    model = models.get(model_name, num_classes=dataset.num_classes,
                       fast_conv_grad=_FAST_CONV_GRAD.value)
    x, y = jnp.asarray(dataset.train.x), jnp.asarray(dataset.train.y)
    variables = model.init(jax.random.key(0), x[:1])
    params = variables["params"]
    epoch, steps = _bare_epoch(model, x, y, batch, tx)
    epoch = jax.jit(epoch)
    carry = [(params, tx.init(params), variables.get("batch_stats"))]

    def one_epoch():
        carry[0], losses = epoch(carry[0], jax.random.key(1))
        return losses

    one_epoch()  # compile
    # Scaled to the full epoch (the bare scan drops the remainder batch).
    seconds = timing.interleaved_medians({"bare": one_epoch}, epochs)["bare"]
    return seconds * math.ceil(len(y) / batch) / steps


def mlp_as_nnx_and_functions(params: dict):
    """An MLP zoo model's network (``Dense_0 .. Dense_n``, ReLU between) as an NNX
    module and as plain functions, both starting from ``params``."""
    layers = [params[f"Dense_{i}"] for i in range(len(params))]

    def forward(layer_params, x):
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(layer_params):
            x = x @ layer["kernel"] + layer.get("bias", 0.0)
            x = jax.nn.relu(x) if i + 1 < len(layer_params) else x
        return x

    class NNXMLP(nnx.Module):
        def __init__(self):
            self.layers = nnx.List([nnx.Linear(*p["kernel"].shape, use_bias="bias" in p,
                                               rngs=nnx.Rngs(0)) for p in layers])
            for linear, p in zip(self.layers, layers):
                linear.kernel[...] = p["kernel"]
                if "bias" in p:
                    linear.bias[...] = p["bias"]

        def __call__(self, x):
            x = x.reshape(x.shape[0], -1)
            for i, linear in enumerate(self.layers):
                x = linear(x)
                x = jax.nn.relu(x) if i + 1 < len(self.layers) else x
            return x

    functions = models.from_functions(
        lambda key, x: (layers, {}),
        lambda p, s, x, *, train, key: (forward(p, x), s), name="benchmark MLP")
    return NNXMLP(), functions


def model_api_seconds(model_name: str, dataset: data_lib.Dataset, batch: int,
                      tx: optax.GradientTransformation, repeats: int) -> dict:
    """Median dense epoch of one MLP as Linen, NNX and plain functions, interleaved."""
    linen = models.get(model_name, num_classes=dataset.num_classes)
    if not isinstance(linen, models.MLP) or linen.batch_norm or linen.dropout:
        raise app.UsageError(f"--model_apis times an MLP of the zoo (lenet300_100, mlp400x3, "
                             f"f1, f2), not {model_name}")
    init = lambda model: train.init_state(model, randjax.dense(), tx, dataset.input_shape,
                                          jax.random.key(0))
    nnx_model, functions = mlp_as_nnx_and_functions(jax.device_get(init(linen).trainable))
    apis = {"linen": linen, "nnx": nnx_model, "functions": functions}
    mesh = train.data_mesh()
    x, y = train.replicate((dataset.train.x, dataset.train.y), mesh)
    epochs, held = {}, {}
    for name, model in apis.items():
        held[name] = train.replicate(init(model), mesh)
        epoch_fn = train.make_epoch_fn(train.make_train_step(model, randjax.dense(), tx), mesh,
                                       len(dataset.train.y), batch)

        def one_epoch(name=name, epoch_fn=epoch_fn):
            held[name], *out = epoch_fn(held[name], x, y, jax.random.key(1))
            return jax.device_get(out[0])

        epochs[name] = one_epoch
    first = {name: fn() for name, fn in epochs.items()}  # compile; the same numbers
    same = {name: bool(np.allclose(first[name], first["linen"], rtol=1e-5, atol=1e-6))
            for name in apis}
    seconds = timing.interleaved_medians(epochs, repeats)
    # Every API trained 1 + repeats epochs from the same weights: the leaves
    # (Dense_i / layers[i] / [i], bias then kernel) in flattening order.
    weights = {name: jax.tree.leaves(jax.device_get(state.trainable))
               for name, state in held.items()}
    bitwise = lambda a, b: len(a) == len(b) and all(map(np.array_equal, a, b))
    return {"epoch_seconds": seconds, "same_losses": same,
            "identical_losses": {name: bool(np.array_equal(first[name], first["linen"]))
                                 for name in apis},
            "identical_params": {name: bitwise(weights[name], weights["linen"])
                                 for name in apis},
            "nnx_over_linen": seconds["nnx"] / seconds["linen"],
            "functions_over_linen": seconds["functions"] / seconds["linen"]}


def seeds_seconds(model_name: str, dataset: data_lib.Dataset, batch: int,
                  tx: optax.GradientTransformation, seeds: int, epochs: int, *,
                  fast_conv_grad: bool = False) -> dict:
    """One epoch of ``seeds`` independent runs: a loop of jitted epochs against one vmap.

    Each run has its own initial weights, optimizer state and data order
    (the bare epoch of `bare_epoch_seconds`); the vmapped program trains
    them all at once, as many small runs fill one accelerator.
    """
    model = models.get(model_name, num_classes=dataset.num_classes,
                       fast_conv_grad=fast_conv_grad)
    x, y = jnp.asarray(dataset.train.x), jnp.asarray(dataset.train.y)
    keys = jax.random.split(jax.random.key(0), seeds)
    params = jax.vmap(lambda k: model.init(k, x[:1])["params"])(keys)
    opt_states = jax.vmap(tx.init)(params)
    epoch, _ = _bare_epoch(model, x, y, batch, tx)
    single, stacked = jax.jit(epoch), jax.jit(jax.vmap(epoch))
    runs = [jax.tree.map(lambda a, i=i: a[i], (params, opt_states, keys)) for i in range(seeds)]
    loop = lambda: [single((p, o, None), k) for p, o, k in runs]
    together = lambda: stacked((params, opt_states, None), keys)
    looped, vmapped = jax.block_until_ready((loop(), together()))  # compile
    # How far the vmapped runs drift from the looped ones: batched matmuls
    # round differently from single ones, and SGD amplifies it over an epoch.
    difference = max(float(jnp.max(jnp.abs(run[1] - vmapped[1][i])))
                     for i, run in enumerate(looped))
    times = timing.interleaved_medians({"loop": loop, "vmap": together}, epochs)
    return {"seeds": seeds, "loop_seconds": times["loop"], "vmap_seconds": times["vmap"],
            "vmap_speedup": times["loop"] / times["vmap"], "max_loss_difference": difference}


def analysis_seconds(model_name: str, dataset: data_lib.Dataset, repeats: int,
                     reference_removals: int) -> dict:
    """Frame-potential and dynamics-hook timings on ``Dense_0`` (see the docstring)."""
    from randjax import analysis
    from randjax.methods import structured

    params = _initial_params(model_name, dataset)
    kernel = params["Dense_0"]["kernel"]
    n = kernel.shape[-1]
    count = int(0.9 * n)

    def reference_loo(w, alive):
        def without(i):
            return analysis.frame_potential(w * (alive & (jnp.arange(n) != i)))
        return jax.vmap(without)(jnp.arange(n))

    fast_loo = jax.jit(analysis.leave_one_out_fp)
    slow_loo = jax.jit(reference_loo)
    greedy = jax.jit(lambda w: structured.fp_order(w, count))
    alive = jnp.ones(n, bool)

    def reference_greedy():
        keep = alive
        for _ in range(reference_removals):
            loo = slow_loo(kernel, keep)
            keep = keep.at[jnp.argmax(jnp.where(keep, loo, -jnp.inf))].set(False)
        return keep

    hook = analysis.dynamics_hook(randjax.dense(), params, spectra=True)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, jax.tree.map(lambda _: None,
                                                                             params), {}, ())
    # The hook's measures one by one, each over every kernel in one program.
    kernels = [leaf for leaf in jax.tree.leaves(params) if leaf.ndim >= 2]
    parts = {name: jax.jit(lambda ks, f=f: [f(k) for k in ks]) for name, f in {
        "frame_potential": analysis.frame_potential,
        "ranks": lambda k: permute.ranks(permute.columns(k), 0),
        "weight_profile": analysis.weight_profile,
        "spectrum": analysis.spectrum}.items()}
    for part in parts.values():
        jax.block_until_ready(part(kernels))  # compile
    times = timing.interleaved_medians({
        "loo": lambda: fast_loo(kernel), "loo_reference": lambda: slow_loo(kernel, alive),
        "greedy": lambda: greedy(kernel), "greedy_reference": reference_greedy}, repeats)
    # Apart from the references, whose large loops would evict the hook's data
    # from the caches between its calls (training does not).
    times.update(timing.interleaved_medians({
        "hook": lambda: hook(1, state),
        **{name: functools.partial(part, kernels) for name, part in parts.items()}},
        3 * repeats))
    per_removal = times["greedy_reference"] / reference_removals
    return {"units": n, "removals": count, "loo_fp_ms": 1e3 * times["loo"],
            "loo_fp_reference_ms": 1e3 * times["loo_reference"],
            "loo_speedup": times["loo_reference"] / times["loo"],
            "greedy_fp_s": times["greedy"],
            "greedy_fp_reference_s": per_removal * count,
            "greedy_fp_reference_extrapolated": f"from {reference_removals} removals",
            "greedy_speedup": per_removal * count / times["greedy"],
            "hook_ms": 1e3 * times["hook"],
            "hook_parts_ms": {name: 1e3 * times[name] for name in parts}}


def _print_report(header: str, table: str | None, report: dict) -> None:
    """The header, the table (if any) and the report as JSON (also to ``--json``)."""
    print(header)
    if table is not None:
        print(table)
    text = json.dumps(report, indent=2)
    print(text)
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(text + "\n")


def main(argv):
    del argv
    machine = f"{platform.processor() or platform.machine()}, jax {jax.__version__}"
    try:
        if _INIT_TIMES.value:
            names = _INIT_TIMES.value
            report = init_times.measure(models.names() if names == ["all"] else names,
                                        _INIT_METHOD.value, repeats=_REPEATS.value)
            _print_report(f"init_state seconds, {_INIT_METHOD.value}, 28x28x1 ({machine}):",
                          init_times.table(report), report)
            return
        if _END_TO_END.value:
            names = _END_TO_END.value
            report = end_to_end.run(end_to_end.preset_names() if names == ["all"] else names,
                                    _REPEATS.value)
            _print_report(f"end to end, {_REPEATS.value} round(s), seconds (medians; "
                          f"{machine}):", end_to_end.table(report), report)
            return
    except ValueError as error:   # unknown models or presets
        raise app.UsageError(str(error)) from None
    if _IN_LOOP.value and not _CONV_PHASES.value:
        raise app.UsageError("--in_loop times --conv_phases; add --conv_phases")
    if _CONV_PHASES.value:
        report = conv_phases.conv4_phase_ms(_BATCH.value, _STEPS.value, _IN_LOOP.value)
        _print_report(f"conv4, batch {_BATCH.value}, 32x32x3, {jax.device_count()} "
                      f"{jax.default_backend()} device(s), median ms ({machine}):",
                      "\n".join(part.ljust(8) + "  ".join(f"{k} {v:.2f}" for k, v in
                                                          phases.items())
                                for part, phases in report.items()), report)
        return
    if _SELECT_SIZE.value > 0:
        report = selection_seconds(_SELECT_SIZE.value, _STEPS.value)
        _print_report(f"k-th largest of {report['size']} float32 (k = n/2): kth_largest "
                      f"{report['kth_largest_ms']:.2f} ms, jnp.sort {report['sort_ms']:.2f} ms, "
                      f"speedup {report['speedup']:.1f}x", None, report)
        return
    if _DATASET.value == "synthetic":
        dataset = _synthetic(tuple(int(s) for s in _INPUT_SHAPE.value), _NUM_EXAMPLES.value)
    else:
        dataset = data_lib.load(_DATASET.value, val_fraction=0.0)
    tx = optax.adam(1e-3) if _OPTIMIZER.value == "adam" else optax.sgd(0.1, momentum=0.9)
    names = ["dense", *(m for m in _METHODS.value if m != "dense")]
    try:
        methods = {name: build(name, tx) for name in names}
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    with_laperm = "laperm" in names
    k = _LAPERM_SYNC_PERIOD.value
    results = benchmark(_MODEL.value, dataset, _BATCH.value, methods,
                        _STEPS.value, _EPOCHS.value, block=k if with_laperm else 0)
    for r in results.values():
        r["ratio_to_dense"] = r["step_ms"] / results["dense"]["step_ms"]
        r["epoch_ratio_to_dense"] = r["epoch_seconds"] / results["dense"]["epoch_seconds"]
    if with_laperm:
        lp = results["laperm"]
        lp["sync_period"] = k
        lp["amortised_step_ms"] = lp["block_step_ms"]
        lp["amortised_ratio"] = lp["block_step_ms"] / results["dense"]["block_step_ms"]
        lp["sync_ms"] = 1e3 * sync_seconds(_MODEL.value, dataset, _LAPERM_INCLUDE_1D.value,
                                           _STEPS.value)
        lp["sync_over_step"] = lp["sync_ms"] / results["dense"]["step_ms"]
        updates = update_seconds(_MODEL.value, dataset,
                                 {"plain": tx, "laperm": methods["laperm"].optimizer}, k,
                                 max(5, _STEPS.value))
        lp["update_ms"] = 1e3 * updates["laperm"]
        lp["plain_update_ms"] = 1e3 * updates["plain"]
        # The steps differ only in the update: the amortised ratio with the
        # forward and backward passes' time taken as the plain step's.
        extra = lp["update_ms"] - lp["plain_update_ms"]
        lp["amortised_ratio_from_updates"] = 1 + extra / results["dense"]["block_step_ms"]
    if "masked" in names:
        mk = results["masked"]
        mk.update(global_mask_seconds(_MODEL.value, dataset, _STEPS.value))
        mk["global_mask_over_epoch"] = (1e-3 * mk["global_mask_ms"]
                                        / results["dense"]["epoch_seconds"])
        print(f"global magnitude mask over {mk['weights']} kernel weights: "
              f"{mk['global_mask_ms']:.2f} ms (jnp.sort of them: {mk['sort_ms']:.2f} ms), "
              f"{100 * mk['global_mask_over_epoch']:.3f}% of dense's epoch of "
              f"{len(dataset.train.y)} images")
    if _ANALYSIS.value:
        fp = analysis_seconds(_MODEL.value, dataset, max(3, _STEPS.value // 5),
                              _FP_REFERENCE_REMOVALS.value)
        fp["hook_over_epoch"] = 1e-3 * fp["hook_ms"] / results["dense"]["epoch_seconds"]
        results["dense"]["analysis"] = fp
        print(f"frame potential on Dense_0 ({fp['units']} units): leave-one-out "
              f"{fp['loo_fp_ms']:.2f} ms (reference's recompute {fp['loo_fp_reference_ms']:.1f} "
              f"ms); greedy {fp['removals']} removals {fp['greedy_fp_s']:.3f} s (reference "
              f"{fp['greedy_fp_reference_s']:.1f} s, {fp['greedy_fp_reference_extrapolated']}); "
              f"dynamics hook {fp['hook_ms']:.1f} ms = {100 * fp['hook_over_epoch']:.2f}% "
              f"of dense's epoch (alone, ms: " + ", ".join(
                  f"{name} {ms:.2f}" for name, ms in fp["hook_parts_ms"].items()) + ")")
    if _SEEDS.value > 0:
        runs = seeds_seconds(_MODEL.value, dataset, _BATCH.value, tx, _SEEDS.value,
                             _EPOCHS.value, fast_conv_grad=_FAST_CONV_GRAD.value)
        results["dense"]["seeds"] = runs
        print(f"{runs['seeds']} seeds, one epoch each: loop {runs['loop_seconds']:.3f} s, "
              f"vmap {runs['vmap_seconds']:.3f} s, {runs['vmap_speedup']:.2f}x")
    if _MODEL_APIS.value:
        apis = model_api_seconds(_MODEL.value, dataset, _BATCH.value, tx,
                                 max(5, _EPOCHS.value))
        results["dense"]["model_apis"] = apis
        print("the same MLP's dense epoch: " + ", ".join(
            f"{name} {sec:.4f} s" for name, sec in apis["epoch_seconds"].items())
            + f"; NNX {apis['nnx_over_linen']:.3f}x Linen, plain functions "
            f"{apis['functions_over_linen']:.3f}x Linen; first-epoch losses equal: "
            f"{apis['same_losses']}; bit for bit: losses {apis['identical_losses']}, "
            f"weights at the end {apis['identical_params']}")
    bare = bare_epoch_seconds(_MODEL.value, dataset, _BATCH.value, tx, _EPOCHS.value)
    results["dense"]["epoch_over_bare_scan"] = results["dense"]["epoch_seconds"] / bare
    shuffle = shuffle_seconds(len(dataset.train.y), max(5, _STEPS.value))
    print(f"an epoch's order of {shuffle['examples']} examples: random_permutation "
          f"{shuffle['random_permutation_ms']:.2f} ms, jax.random.permutation "
          f"{shuffle['jax_permutation_ms']:.2f} ms ({shuffle['speedup']:.2f}x)")
    report = {"model": _MODEL.value, "dataset": dataset.name,
              "input_shape": list(dataset.input_shape), "batch": _BATCH.value,
              "optimizer": _OPTIMIZER.value, "backend": jax.default_backend(),
              "devices": jax.device_count(), "cpu": platform.processor() or platform.machine(),
              "jax": jax.__version__, "fast_conv_grad": _FAST_CONV_GRAD.value,
              "bare_scan_epoch_seconds": bare, "shuffle": shuffle, "results": results}
    columns = ["step_ms", "images_per_second", "epoch_seconds", "steps_per_epoch",
               "overhead", "ratio_to_dense", "epoch_ratio_to_dense"]
    print(f"{_MODEL.value} on {dataset.name} {tuple(dataset.input_shape)}, batch "
          f"{_BATCH.value}, {_OPTIMIZER.value}, {jax.device_count()} "
          f"{jax.default_backend()} device(s)")
    width = max(12, *(len(name) + 2 for name in results))
    print("method".ljust(width) + "".join(c.rjust(21) for c in columns))
    for name, r in results.items():
        print(name.ljust(width) + "".join(
            (f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])).rjust(21)
            for c in columns))
    if with_laperm:
        lp = results["laperm"]
        print(f"laperm k={k}: amortised step {lp['amortised_step_ms']:.4f} ms, "
              f"{lp['amortised_ratio']:.3f}x the plain step (blocks of {k}); one sync "
              f"{lp['sync_ms']:.4f} ms = {lp['sync_over_step']:.2f} plain steps; "
              f"epoch {lp['epoch_ratio_to_dense']:.3f}x dense")
        print(f"laperm k={k}, updates alone: {lp['update_ms']:.4f} ms against "
              f"{lp['plain_update_ms']:.4f} ms per step, so an amortised step of "
              f"{lp['amortised_ratio_from_updates']:.4f}x the plain one")
    print("divergence check (find_nonfinite, all_finite dispatched alone): " + ", ".join(
        f"{name} {r['nonfinite_check_ms']:.3f} ms = "
        f"{100 * r['nonfinite_check_over_epoch']:.3f}% of its epoch, which takes "
        f"{r['epoch_seconds'] / r['unchecked_epoch_seconds']:.4f}x the epoch without it"
        for name, r in results.items()))
    print(f"bare jitted scan, same model and optimizer: {bare:.4f} s/epoch; "
          f"randjax epoch / bare = {results['dense']['epoch_over_bare_scan']:.3f}")
    text = json.dumps(report, indent=2)
    print(text)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
