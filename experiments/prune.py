"""Iterative and one-shot pruning: rounds of `randjax.fit` under `randjax.masked`.

    python -m experiments.prune --config=experiments/configs/gimp.py \
        --config.variant=lrr --workdir=runs/lrr
    python -m experiments.prune \
        --config=experiments/configs/presets.py:lth_lenet_fmnist --workdir=runs/lth

Mikler's GIMP (Algorithm 5 of "On Pruning Methods for Neural Networks",
2021), with fine-tuning, weight rewinding (Frankle & Carbin 2019), stable
weight rewinding (Frankle et al. 2020), learning-rate rewinding (Renda et al.
2020) and sGIMP as variants of one loop (`experiments/configs/gimp.py` says
what each does). Round 0 is the dense run; round ``r`` keeps
``density_multiplier`` of the weights round ``r - 1`` kept, rewinds, and
trains with a fresh optimizer (momentum reset, as Mikler and open_lth do),
BatchNorm statistics restored with the weights.

Every round is a `randjax.fit` with its own ``round_<r>/`` workdir; the
driver writes ``rounds.jsonl``, one record per finished round: ``round``,
``density`` (kept fraction of the prunable kernels), ``density_all`` (of all
parameters), ``test_accuracy`` (last epoch), ``best_val_accuracy`` and
``test_accuracy_at_best_val`` (with a validation split), ``train_loss``,
``steps`` (trained in the round), ``start_step``, ``seconds`` (the round's
wall time in the session that finished it) and its parts
(``train_seconds``, ``compile_seconds``, ``checkpoint_seconds``,
``bookkeeping_seconds``: scores, masks and rewinding), ``params_sha256``,
and with ``criterion="tom"`` the mask training's ``mask_steps``,
``mask_seconds`` (part of the bookkeeping), ``mask_test_accuracy`` (the
frozen weights under the final masks) and ``mask_expected_density``
(its run is in ``tom_masks/``); and ``summary.json`` (the final
``params_sha256``, the export's size), ``network.npz`` (the pruned network,
`randjax.export`) and ``accuracy_vs_density.png``. Running the same command
again resumes at the round and epoch where a killed run stopped, and ends
bitwise where an uninterrupted run ends. The command line keeps XLA's
compiled programs in ``--workdir``'s ``xla_cache/`` (or
``$JAX_COMPILATION_CACHE_DIR``), so only the first round compiles.
"""

from __future__ import annotations

import gc
import json
import pathlib
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.ticker
import ml_collections
import numpy as np
import optax
import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

import randjax
from experiments import compile_cache, distributed
from experiments import train as train_lib
from experiments.configs import gimp
from experiments.configs import tom as tom_config
from randjax import pruning, tree
from randjax.methods import tom

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FLAGS = flags.FLAGS


class Plan(NamedTuple):
    """A validated pruning config, with the defaults its variant implies."""

    pruning: str
    variant: str
    multiplier: float
    target: float
    rewind_step: int | None       # swr / fast_forward: k
    rewind_fraction: float | None  # sgimp: X
    rewind_source: str | None     # swr: "dense" or "previous"
    fast_forward: bool
    retrain_epochs: int


def make_plan(config: ml_collections.ConfigDict) -> Plan:
    """Checks a `experiments.configs.gimp` config; ValueError naming what is wrong.

    Every setting must be one the chosen variant reads (a ``rewind_step`` on
    ``lrr`` with a restarted schedule would be ignored, so it is refused).
    """
    unknown = sorted(set(config) - set(gimp.get_config()))
    if unknown:
        raise ValueError(f"config fields {unknown} are not settings of experiments.prune "
                         "(see experiments/configs/gimp.py)")
    tree.check_choice(config.pruning, gimp.PRUNINGS, "pruning")
    variant = tree.check_choice(config.variant, gimp.VARIANTS, "variant")
    tree.check_choice(config.criterion, gimp.CRITERIA, "criterion")
    if config.criterion == "tom":
        if config.pruning != "oneshot":
            raise ValueError("criterion='tom' learns the masks of one pruning: use "
                             f"pruning='oneshot', not {config.pruning!r}")
        tree.check_int(config.tom.epochs, "tom.epochs", minimum=1)
    elif config.tom.to_dict() != gimp.get_config().tom.to_dict():
        raise ValueError("the tom settings are read by criterion='tom' only, not by "
                         f"criterion={config.criterion!r}")
    tree.check_choice(config.scope, pruning.SCOPES, "scope")
    tree.check_choice(config.count, pruning.COUNTS, "count")
    tree.check_choice(config.schedule_rewind, gimp.SCHEDULE_REWINDS, "schedule_rewind")
    tree.check_int(config.snip_batches, "snip_batches", minimum=1)
    tree.check_real(config.l2, "l2", low=0.0)
    multiplier = tree.check_real(config.density_multiplier, "density_multiplier",
                                 low=0.5, high=1.0)
    if multiplier >= 1.0:
        raise ValueError(f"density_multiplier must be in [0.5, 1), got {multiplier}")
    target = tree.check_density(config.target_density)
    if config.pruning == "iterative" and target > multiplier:
        raise ValueError(f"target_density {target} is above the first round's density "
                         f"{multiplier} (density_multiplier): nothing would be pruned")
    if config.count == "open_lth" and config.scope != "global":
        raise ValueError("count='open_lth' is open_lth's sparse_global rule: use scope='global'")

    fast_forward = config.schedule_rewind == "fast_forward"
    uses_step = variant == "swr" or (variant == "lrr" and fast_forward)
    if fast_forward and variant not in ("swr", "lrr"):
        raise ValueError(f"schedule_rewind='fast_forward' applies to swr and lrr, not {variant}")
    if uses_step and config.rewind_step is None:
        raise ValueError(f"variant {variant!r} needs rewind_step (the step k it rewinds to)")
    if not uses_step and config.rewind_step is not None:
        raise ValueError(f"rewind_step is read by swr and by lrr with fast_forward, "
                         f"not by {variant!r} ({config.schedule_rewind})")
    rewind_step = (None if config.rewind_step is None
                   else tree.check_int(config.rewind_step, "rewind_step", minimum=0))
    if variant != "sgimp" and config.rewind_fraction is not None:
        raise ValueError(f"rewind_fraction is sgimp's, not {variant!r}'s")
    rewind_fraction = None
    if variant == "sgimp":
        fraction = 0.75 if config.rewind_fraction is None else config.rewind_fraction
        rewind_fraction = tree.check_real(fraction, "rewind_fraction", low=0.0, high=1.0)
    if variant != "swr" and config.rewind_source is not None:
        raise ValueError(f"rewind_source is swr's, not {variant!r}'s")
    rewind_source = None
    if variant == "swr":
        rewind_source = tree.check_choice(config.rewind_source or "dense",
                                          gimp.REWIND_SOURCES, "rewind_source")
    if config.pruning == "at_init" and (variant != "wr" or config.retrain_epochs is not None):
        raise ValueError("pruning='at_init' trains the pruned initial weights once: it "
                         "takes variant='wr' and no retrain_epochs")
    retrain = config.epochs if config.retrain_epochs is None else config.retrain_epochs
    retrain = tree.check_int(retrain, "retrain_epochs", minimum=1)
    return Plan(config.pruning, variant, multiplier, target, rewind_step, rewind_fraction,
                rewind_source, fast_forward, retrain)


def round_count(plan: Plan) -> int:
    """Rounds after the dense one: until ``multiplier ** r <= target`` (1 if one-shot)."""
    if plan.pruning != "iterative":
        return 0 if plan.pruning == "at_init" else 1
    rounds = 1
    while plan.multiplier ** rounds > plan.target * (1 + 1e-9):
        rounds += 1
    return rounds


class Round(NamedTuple):
    """A trained round: its `randjax.fit` result, its masks (None: dense), its reparam."""

    result: Any
    masks: Any
    reparam: randjax.Reparam


def effective_variables(run: Round, state) -> dict:
    """A state's effective model variables: ``{"params": ..., **model_state}``."""
    params = run.reparam.apply(state.trainable, state.frozen, train=False)
    return {"params": params, **state.model_state}


class Pruner:
    """Runs the rounds of one config in one workdir (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir, *, progress: bool = True):
        self.config = config
        self.plan = make_plan(config)
        self.workdir = pathlib.Path(workdir)
        self.progress = progress
        self.mask_record = {}  # criterion="tom": the mask training, in the next round's record
        self.final: Round | None = None  # the last round, once `run` has trained it
        train_lib.check_config(config)
        self.dataset = train_lib.load_dataset(config)
        self.model = train_lib.make_model(config, self.dataset.num_classes)
        self.steps_per_epoch = train_lib.epoch_length(config, len(self.dataset.train.y))
        self._check_steps()
        # The exclusions must name kernels of this model before anything trains.
        x = jax.ShapeDtypeStruct((1, *self.dataset.input_shape), jnp.float32)
        shapes = jax.eval_shape(self.model.init, jax.random.key(0), x)["params"]
        pruning.select(shapes, exclude=tuple(config.exclude))

    # -- schedules, optimizers -------------------------------------------------

    def _steps(self, epochs: int) -> int:
        return epochs * self.steps_per_epoch

    def _check_steps(self):
        plan = self.plan
        if plan.rewind_step is None:
            return
        source = self.config.epochs if plan.rewind_source == "dense" else plan.retrain_epochs
        if plan.rewind_step >= self._steps(min(source, plan.retrain_epochs)):
            raise ValueError(
                f"rewind_step {plan.rewind_step} is past the training length "
                f"({self._steps(min(source, plan.retrain_epochs))} steps)")

    def _schedule(self, epochs: int) -> optax.Schedule:
        config = ml_collections.ConfigDict(self.config.to_dict())
        config.epochs = epochs
        return train_lib.make_schedule(config, self.steps_per_epoch)

    def _optimizer(self, schedule) -> optax.GradientTransformation:
        tx = train_lib.make_optimizer(self.config, self.steps_per_epoch, schedule=schedule)
        if self.config.l2:
            # d/dw of l2 * sum(w^2), added to the gradient like PyTorch's weight decay.
            tx = optax.chain(optax.add_decayed_weights(2 * self.config.l2), tx)
        return tx

    def _round_schedule(self, r: int):
        """``(schedule, start_step, epochs)`` of round ``r``."""
        plan, epochs = self.plan, self.config.epochs if r == 0 else self.plan.retrain_epochs
        if r == 0 and self.config.criterion == "tom":
            # TOM's short dense run is the start of the whole schedule.
            return self._schedule(plan.retrain_epochs), 0, epochs
        if r == 0:
            return self._schedule(epochs), 0, epochs
        if plan.variant == "ft":
            dense = self._schedule(self.config.epochs)
            final = float(dense(self._steps(self.config.epochs) - 1))
            return optax.constant_schedule(final), 0, epochs
        if plan.fast_forward:
            base, k = self._schedule(epochs), plan.rewind_step
            return (lambda step: base(step + k)), k, epochs
        return self._schedule(epochs), 0, epochs

    # -- rewinding, scores ------------------------------------------------------

    def _snapshot_step(self, r: int) -> int | None:
        """The step of round ``r`` that round ``r + 1`` rewinds to, if any."""
        plan = self.plan
        if plan.variant == "wr":
            return 0 if r == 0 else None
        if plan.variant == "swr":
            return plan.rewind_step if (r == 0 or plan.rewind_source == "previous") else None
        if plan.variant == "sgimp":
            total = self._steps(self.config.epochs if r == 0 else plan.retrain_epochs)
            return total - round(plan.rewind_fraction * total)
        return None

    def start_variables(self, r: int, runs: list[Round]):
        """The variables round ``r`` starts from, given the rounds before it.

        None for round 0 (the model's init); the previous round's final
        weights (``ft``, ``lrr``); a snapshot of the dense run (``wr`` at
        step 0, ``swr``) or of the previous round (``sgimp``, ``swr`` with
        ``rewind_source="previous"``). BatchNorm statistics come with them.
        """
        if r == 0:
            return None
        previous = runs[-1]
        k = self._snapshot_step(r - 1)
        if k is None and self.plan.variant in ("wr", "swr"):  # rewinds into the dense run
            previous, k = runs[0], self._snapshot_step(0)
        if k is None:
            return effective_variables(previous, previous.result.state)
        return effective_variables(previous, previous.result.snapshots[k])

    def initial_variables(self):
        """The model's initial variables, as `randjax.fit` draws them from the seed."""
        x = jnp.zeros((1, *self.dataset.input_shape), jnp.float32)
        return self.model.init(randjax.train.model_key(self.config.seed), x)

    def _scores(self, r: int, variables):
        config = self.config
        targets = pruning.select(variables["params"], exclude=tuple(config.exclude))
        if config.criterion == "magnitude":
            return targets, pruning.magnitude(targets)
        if config.criterion == "random":
            key = jax.random.fold_in(jax.random.key(config.seed), r)
            return targets, pruning.random(key, targets)
        return targets, pruning.snip(targets, self._snip_grads(variables))

    def _snip_grads(self, variables):
        """Gradients of the unregularised loss, summed over ``snip_batches`` batches."""
        params, state = variables["params"], {k: v for k, v in variables.items()
                                              if k != "params"}

        @jax.jit
        def grad(params, x, y):
            def loss(params):
                logits = self.model.apply({"params": params, **state}, x, train=False)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return jax.grad(loss)(params)

        train = self.dataset.train
        order = np.random.default_rng(self.config.seed).permutation(len(train.y))
        total = None
        for b in range(self.config.snip_batches):
            idx = order[b * self.config.batch_size:(b + 1) * self.config.batch_size]
            if not len(idx):
                break
            g = grad(params, train.x[idx], train.y[idx])
            total = g if total is None else jax.tree.map(jnp.add, total, g)
        return total

    def _ignored(self, variables, targets) -> int:
        """Kernel weights outside the targets (open_lth counts them as remaining)."""
        if self.config.count != "open_lth":
            return 0
        kernels = pruning.select(variables["params"])
        size = lambda t: sum(int(np.size(x)) for x in jax.tree.leaves(t))
        return size(kernels) - size(targets)

    def tom_masks(self, r: int, variables):
        """TOM's masks for round ``r + 1``: logits trained over round ``r``'s weights.

        A `randjax.fit` of ``tom.epochs`` in ``tom_masks/`` (resumed if it is
        there) under `randjax.methods.tom` with the config's batch size and
        seed; the masks keep the top ``target_density`` of the logits.
        """
        begin, config = time.perf_counter(), self.config
        names = {pruning.path_name(p) for p, leaf in jax.tree_util.tree_flatten_with_path(
            pruning.select(variables["params"], exclude=tuple(config.exclude)))[0]}
        frozen = None
        if config.tom.divide_by_weight:
            frozen = jax.tree_util.tree_map_with_path(
                lambda p, w: w if pruning.path_name(p) in names else None,
                variables["params"])
        reparam, tx = tom_config.mask_training(
            config.tom, self.plan.target, weights=frozen,
            filter=lambda path, leaf: pruning.path_name(path) in names)
        result = randjax.fit(
            self.model, self.dataset, tx, reparam=reparam, epochs=config.tom.epochs,
            batch_size=config.batch_size, seed=config.seed, workdir=self.workdir / "tom_masks",
            checkpoint_every=config.checkpoint_every,
            augmentation=randjax.train.Augmentation(config.crop_padding, config.flip),
            drop_remainder=config.drop_remainder, eval_batch_size=config.eval_batch_size,
            progress=self.progress, config={**config.to_dict(), "tom_masks_after_round": r},
            variables=variables)
        self.mask_record = {"mask_steps": result.summary["steps"],
                            "mask_seconds": time.perf_counter() - begin,
                            "mask_test_accuracy": result.summary["test_accuracy"],
                            "mask_expected_density": float(
                                tom.expected_density(result.state.trainable))}
        return tom.final_masks(result.state.trainable, self.plan.target, scope=config.tom.scope,
                               weights=result.state.frozen)

    def next_masks(self, r: int, variables, masks):
        """The masks of round ``r + 1``, from round ``r``'s final ``variables``.

        ``masks`` are round ``r``'s (None: dense). Iterative pruning removes
        ``1 - density_multiplier`` of the remaining weights, one-shot and
        at-init pruning all but ``target_density``, by the config's
        criterion, scope and count (``criterion="tom"``: `tom_masks`).
        """
        if self.config.criterion == "tom":
            return self.tom_masks(r, variables)
        targets, scores = self._scores(r, variables)
        kept = pruning.ones(targets) if masks is None else masks
        fraction = (1 - self.plan.multiplier if self.plan.pruning == "iterative"
                    else 1 - self.plan.target)
        return pruning.prune_remaining(scores, kept, fraction, scope=self.config.scope,
                                       count=self.config.count,
                                       ignored=self._ignored(variables, targets))

    # -- rounds -------------------------------------------------------------------

    def train_round(self, r: int, masks, variables) -> Round:
        """`randjax.fit` of round ``r`` in ``round_<r>/`` (resumed if it is there)."""
        config = self.config
        schedule, start_step, epochs = self._round_schedule(r)
        reparam = randjax.dense() if masks is None else randjax.masked(masks)
        snapshot = self._snapshot_step(r)
        result = randjax.fit(
            self.model, self.dataset, self._optimizer(schedule), reparam=reparam,
            epochs=epochs, batch_size=config.batch_size, seed=config.seed,
            workdir=self.workdir / f"round_{r}", checkpoint_every=config.checkpoint_every,
            augmentation=randjax.train.Augmentation(config.crop_padding, config.flip),
            drop_remainder=config.drop_remainder, eval_batch_size=config.eval_batch_size,
            progress=self.progress, config={**config.to_dict(), "round": r},
            variables=variables, start_step=start_step,
            snapshot_steps=() if snapshot is None else (snapshot,))
        return Round(result, masks, reparam)

    def _record(self, r: int, run: Round, seconds: float, bookkeeping: float) -> dict:
        summary = run.result.summary
        params = effective_variables(run, run.result.state)["params"]
        if run.masks is None:
            density = density_all = 1.0
        else:
            report = pruning.report(run.masks, params)
            density, density_all = report.density, report.density_all
        epochs = run.result.history
        return {
            "round": r, "density": density, "density_all": density_all,
            "test_accuracy": summary["test_accuracy"],
            "best_val_accuracy": summary["best_val_accuracy"],
            "test_accuracy_at_best_val": summary["test_accuracy_at_best_val"],
            "train_loss": summary["final_train_loss"],
            "steps": summary["steps"] - summary["start_step"],
            "start_step": summary["start_step"], "epochs": summary["epochs"],
            "seconds": seconds,
            "train_seconds": sum(e["epoch_seconds"] for e in epochs),
            "compile_seconds": summary["compile_seconds"],
            "checkpoint_seconds": summary["checkpoint_seconds"],
            "bookkeeping_seconds": bookkeeping,
            "params_sha256": summary["params_sha256"],
            **(self.mask_record if r > 0 else {}),
        }

    def run(self) -> dict:
        """Trains every round (resuming finished ones from disk); returns the summary."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        done = {r["round"]: r for r in read_rounds(self.workdir)}
        records, runs, masks = [], [], None
        if self.plan.pruning == "at_init":
            begin = time.perf_counter()
            masks = self.next_masks(0, self.initial_variables(), None)
            rounds, setup = [0], time.perf_counter() - begin
        else:
            rounds, setup = range(round_count(self.plan) + 1), 0.0
        bar = tqdm.tqdm(rounds, desc="rounds", unit="round", disable=not self.progress)
        for r in bar:
            begin = time.perf_counter()
            if r > 0:
                final = effective_variables(runs[-1], runs[-1].result.state)
                masks = self.next_masks(r - 1, final, masks)
            variables = self.start_variables(r, runs)
            bookkeeping = time.perf_counter() - begin + setup
            runs.append(self.train_round(r, masks, variables))
            seconds = time.perf_counter() - begin + setup
            setup = 0.0
            records.append(done.get(r) or self._record(r, runs[-1], seconds, bookkeeping))
            if randjax.train.is_primary():   # every process computes the same records
                _write_jsonl(self.workdir / "rounds.jsonl", records)
            bar.set_postfix(density=f"{records[-1]['density']:.4f}",
                            test=f"{records[-1]['test_accuracy']:.4f}")
        self.final = runs[-1]
        return self._finish(records, runs[-1])

    def _finish(self, records: list[dict], last: Round) -> dict:
        summary = {
            "params_sha256": last.result.summary["params_sha256"],
            "rounds": len(records),
            "density": records[-1]["density"],
            "density_all": records[-1]["density_all"],
            "test_accuracy": records[-1]["test_accuracy"],
            "seconds": sum(r["seconds"] for r in records),
            "seconds_per_round": float(np.median([r["seconds"] for r in records])),
        }
        if not randjax.train.is_primary():   # process 0 writes the files
            return summary
        if last.masks is not None:
            state = last.result.state
            info = randjax.export.save(self.workdir / "network.npz", last.reparam,
                                       state.trainable, state.frozen)
            summary.update(export_bytes=info.bytes, export_ratio=info.ratio)
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot({self.config.variant: records}, self.workdir / "accuracy_vs_density.png",
             title=f"{self.config.model} on {self.config.dataset}")
        return summary


def run(config: ml_collections.ConfigDict, workdir, *, progress: bool = True) -> dict:
    """Runs (or resumes) the pruning config in ``workdir``; returns its summary."""
    return Pruner(config, workdir, progress=progress).run()


def read_rounds(workdir) -> list[dict]:
    """The records of ``workdir/rounds.jsonl`` ([] if none yet)."""
    path = pathlib.Path(workdir) / "rounds.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _write_jsonl(path: pathlib.Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


def plot(series: dict[str, list[dict]], out, *, title: str = "") -> None:
    """Test accuracy against density (log x, densest left), one line per series.

    Like Mikler's Fig. 3.2: ``{label: round records}``.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in series.items():
        ax.plot([100 * r["density"] for r in records],
                [100 * r["test_accuracy"] for r in records], "o-", ms=3, label=label)
    ax.set(xscale="log", xlabel="weights remaining (%)", ylabel="test accuracy (%)",
           title=title)
    ax.invert_xaxis()
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv):
    gc.freeze()   # as experiments.train: no collector passes over the imports' objects
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    try:  # before anything touches a device
        distributed.initialize_from_flags()
    except ValueError as error:
        train_lib.exit_usage(f"FATAL distributed setup error: {error}")
    compile_cache.use(pathlib.Path(FLAGS.workdir) / "xla_cache")
    try:
        summary = run(FLAGS.config, FLAGS.workdir, progress=randjax.train.is_primary())
    except randjax.train.DivergenceError as error:
        sys.stderr.write(f"FATAL {type(error).__name__}: {error}\n")
        sys.exit(1)
    if not randjax.train.is_primary():
        return
    for record in read_rounds(FLAGS.workdir):
        print(f"round {record['round']:2d}  density {record['density']:.4f}  "
              f"test {record['test_accuracy']:.4f}  steps {record['steps']}  "
              f"{record['seconds']:.1f} s")
    print("summary:", summary)


def _define_flags():
    flags.DEFINE_string("workdir", None, "Directory of the rounds, records and summary.")
    config_flags.DEFINE_config_file("config", None, "Pruning configuration file.",
                                     lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])
    distributed.define_flags()


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=train_lib.parse_flags)
