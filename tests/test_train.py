"""The training loop: accuracy, determinism, resumption, files, errors."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import randjax
from randjax import data, models, train


def small_mlp():
    return models.get("lenet300_100", width=0.25)


def adam():
    return optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)


def test_lenet_reaches_90_percent_on_digits(digits):
    result = randjax.fit(models.get("lenet300_100"), digits, adam(), epochs=15,
                         batch_size=64, progress=False)
    assert result.summary["test_accuracy"] >= 0.90
    assert result.summary["test_accuracy_at_best_val"] >= 0.90
    # Loss goes down: the last epoch's mean loss is far below the first.
    assert result.history[-1]["train_loss"] < 0.3 * result.history[0]["train_loss"]


def test_epoch_step_counts_include_or_drop_the_remainder(digits):
    n = len(digits.train.y)
    assert n % 64, "the fixture must leave a partial batch"
    kept = randjax.fit(small_mlp(), digits, adam(), epochs=1, batch_size=64, progress=False)
    dropped = randjax.fit(small_mlp(), digits, adam(), epochs=1, batch_size=64,
                          drop_remainder=True, progress=False)
    assert kept.summary["steps"] == -(-n // 64) == len(kept.step_losses)
    assert dropped.summary["steps"] == n // 64


@pytest.mark.parametrize("chunk", [7, 64, 10_000])
def test_evaluation_in_padded_chunks_is_the_whole_split_at_once(digits, chunk):
    model, reparam = models.as_model(small_mlp()), randjax.dense()
    state = train.init_state(model, reparam, adam(), digits.input_shape, jax.random.key(0))
    mesh = train.data_mesh()
    evaluate = train.make_eval_fn(model, reparam, mesh, chunk)
    (loss, accuracy), = jax.device_get(evaluate(
        state, {"test": data.pad_to_chunks(digits.test, chunk)}, jax.random.key(1))).values()
    params = reparam.apply(state.trainable, state.frozen, key=None, train=False)
    logits, _ = model.apply(params, state.model_state, digits.test.x, train=False,
                            key=jax.random.key(0))
    np.testing.assert_allclose(loss, train.cross_entropy(logits, digits.test.y).mean(),
                               rtol=1e-5)
    assert accuracy == np.mean(np.argmax(logits, -1) == digits.test.y)


@pytest.mark.parametrize("seed", [0, -1, 2**31, 2**40 + 3])
def test_fits_keys_come_from_the_seed_as_jax_random_key_makes_it(seed):
    # Any Python int seeds a run, past int32 too (jax.random.key takes it).
    init_key = jax.random.split(jax.random.key(seed), 3)[0]
    model_key, reparam_key = jax.random.split(init_key)
    for got, want in ((train.model_key(seed), model_key),
                      (train.reparam_key(seed), reparam_key)):
        np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))


def test_run_is_a_pure_function_of_seed(digits):
    fit = lambda seed: randjax.fit(small_mlp(), digits, adam(), epochs=2, batch_size=64,
                                   seed=seed, progress=False).summary["params_sha256"]
    assert fit(3) == fit(3)
    assert fit(3) != fit(4)


def test_files_and_summary(digits, tmp_path):
    result = randjax.fit(small_mlp(), digits, adam(), epochs=3, batch_size=64,
                         workdir=tmp_path, progress=False, config={"lr": 1e-3},
                         epoch_hook=lambda epoch, state: {"hook_epoch": epoch,
                                                          "step_again": state.step})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    for key in ("test_accuracy", "best_val_accuracy", "test_accuracy_at_best_val",
                "final_train_loss", "steps", "num_devices", "wall_seconds",
                "params_sha256"):
        assert summary[key] is not None, key
    records = [json.loads(line) for line in
               (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["hook_epoch"] for r in records] == [1, 2, 3]
    assert [r["step_again"] for r in records] == [r["step"] for r in records]
    assert all(r["learning_rate"] == pytest.approx(1e-3) for r in records)
    best = max(records, key=lambda r: r["val_accuracy"])
    assert summary["best_val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert summary["test_accuracy_at_best_val"] == pytest.approx(best["test_accuracy"])
    assert summary["final_train_loss"] == pytest.approx(records[-1]["train_loss"])
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-3}


def test_without_validation_split_best_val_is_null():
    dataset = data.load("digits", val_fraction=0.0)
    result = randjax.fit(small_mlp(), dataset, adam(), epochs=1, batch_size=64,
                         progress=False)
    assert result.summary["best_val_accuracy"] is None
    assert result.summary["test_accuracy_at_best_val"] is None
    assert "val_accuracy" not in result.history[0]


class Interrupt(Exception):
    pass


def test_killed_run_resumes_to_identical_parameters(digits, tmp_path):
    kwargs = dict(epochs=4, batch_size=64, progress=False, config={"x": 1})
    reference = randjax.fit(small_mlp(), digits, adam(), **kwargs)

    def die_after_two(epoch, state):
        if epoch == 2:
            raise Interrupt
        return {}

    with pytest.raises(Interrupt):
        randjax.fit(small_mlp(), digits, adam(), workdir=tmp_path,
                    epoch_hook=die_after_two, **kwargs)
    # The checkpoint of epoch 2 is not written (the hook ran first): resume from 1.
    resumed = randjax.fit(small_mlp(), digits, adam(), workdir=tmp_path, **kwargs)
    assert resumed.summary["params_sha256"] == reference.summary["params_sha256"]
    assert len(resumed.step_losses) == 3 * len(reference.step_losses) // 4
    np.testing.assert_array_equal(resumed.step_losses,
                                  reference.step_losses[-len(resumed.step_losses):])
    records = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1, 2, 3, 4]


def test_budget_extension_matches_a_longer_run(digits, tmp_path):
    kwargs = dict(batch_size=64, progress=False)
    short = randjax.fit(small_mlp(), digits, adam(), epochs=2, workdir=tmp_path, **kwargs)
    longer = randjax.fit(small_mlp(), digits, adam(), epochs=4, workdir=tmp_path, **kwargs)
    direct = randjax.fit(small_mlp(), digits, adam(), epochs=4, **kwargs)
    assert short.summary["steps"] * 2 == longer.summary["steps"]
    assert longer.summary["params_sha256"] == direct.summary["params_sha256"]


def test_resuming_with_another_config_is_refused(digits, tmp_path):
    randjax.fit(small_mlp(), digits, adam(), epochs=1, batch_size=64, workdir=tmp_path,
                progress=False, config={"lr": 1e-3, "epochs": 1})
    with pytest.raises(ValueError, match=r"different config \(keys \['lr'\]\)"):
        randjax.fit(small_mlp(), digits, adam(), epochs=2, batch_size=64,
                    workdir=tmp_path, progress=False, config={"lr": 1e-2, "epochs": 2})


def test_batch_norm_statistics_are_trained(digits):
    model = models.get("conv2", width=0.125, batch_norm=True)
    state = train.init_state(model, randjax.dense(), adam(), digits.input_shape,
                             jax.random.key(0))
    result = randjax.fit(model, digits, adam(), epochs=1, batch_size=64, progress=False)
    before = jax.tree.leaves(state.model_state)
    after = jax.tree.leaves(result.state.model_state)
    assert before and all(not np.allclose(b, a) for b, a in zip(before, after))


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be a Python int >= 1"),
    (dict(batch_size="64"), "batch_size must be a Python int"),
    (dict(epochs=-1), "epochs must be a Python int >= 0"),
    (dict(epochs=2.5), "epochs must be a Python int"),
    (dict(checkpoint_every=0), "checkpoint_every must be a Python int >= 1"),
    (dict(eval_batch_size=0), "eval_batch_size must be a Python int >= 1"),
    (dict(seed=1.5), "seed must be a Python int"),
    (dict(on_nonfinite="ignore"), "on_nonfinite must be one of"),
    (dict(batch_size=5000, drop_remainder=True), "exceeds the"),
])
def test_bad_arguments(digits, kwargs, message):
    args = dict(epochs=1, batch_size=64, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        randjax.fit(small_mlp(), digits, adam(), **args)


def random_features_reparam():
    """Trains only the classifier; hidden layers are frozen, and in training a
    fresh random 10% of each frozen leaf is dropped (exercises ``key``)."""

    def init(key, params):
        head = max(params)  # the last Dense layer by name
        frozen = {name: layer for name, layer in params.items() if name != head}
        return {head: params[head]}, frozen

    def apply(trainable, frozen, *, key=None, train=True):
        if train:
            leaves, tree = jax.tree.flatten(frozen)
            keys = jax.random.split(key, len(leaves))
            leaves = [w * jax.random.bernoulli(k, 0.9, w.shape) / 0.9
                      for k, w in zip(keys, leaves)]
            frozen = jax.tree.unflatten(tree, leaves)
        return {**frozen, **trainable}

    return randjax.Reparam(init, apply)


def test_a_reparametrization_plugs_in(digits):
    model = models.get("lenet300_100", width=0.5)
    rp = random_features_reparam()
    tx = optax.adam(1e-2)
    fit = lambda epochs, seed=0: randjax.fit(model, digits, tx, reparam=rp, epochs=epochs,
                                             batch_size=64, seed=seed, progress=False)
    initial, result = fit(0).state, fit(6)
    assert set(result.state.trainable) == {"Dense_2"}
    assert set(result.state.frozen) == {"Dense_0", "Dense_1"}
    # Frozen weights are bitwise unchanged; the classifier has trained.
    jax.tree.map(np.testing.assert_array_equal, initial.frozen, result.state.frozen)
    assert not np.allclose(initial.trainable["Dense_2"]["kernel"],
                           result.state.trainable["Dense_2"]["kernel"])
    assert result.summary["test_accuracy"] > 0.8
    # A different seed draws other dropped weights, hence other losses.
    other = fit(1, seed=1)
    assert not np.allclose(other.step_losses, result.step_losses[:len(other.step_losses)])


def test_snapshots_inside_epochs_leave_the_run_bitwise_unchanged(digits, tmp_path):
    kwargs = dict(epochs=3, batch_size=64, progress=False)
    per_epoch = train.epoch_steps(len(digits.train.y), 64)
    steps = (0, 5, per_epoch - 1, per_epoch, 2 * per_epoch + 3, 3 * per_epoch)
    plain = randjax.fit(small_mlp(), digits, adam(), **kwargs)
    split = randjax.fit(small_mlp(), digits, adam(), snapshot_steps=steps,
                        workdir=tmp_path, **kwargs)
    assert split.summary["params_sha256"] == plain.summary["params_sha256"]
    np.testing.assert_array_equal(split.step_losses, plain.step_losses)
    assert sorted(split.snapshots) == sorted(steps)
    assert all(int(s.step) == k for k, s in split.snapshots.items())
    assert train.params_sha256(split.snapshots[3 * per_epoch].trainable) == \
        train.params_sha256(split.state.trainable)
    # A finished run restores its snapshots from disk.
    again = randjax.fit(small_mlp(), digits, adam(), snapshot_steps=steps,
                        workdir=tmp_path, **kwargs)
    for k in steps:
        assert train.params_sha256(again.snapshots[k].trainable) == \
            train.params_sha256(split.snapshots[k].trainable)


def test_start_step_fast_forwards_data_order_and_keys(digits):
    # Plain SGD has no optimizer state, so the run from a snapshot at step
    # 5 with start_step=5 is the tail of the whole run.
    kwargs = dict(epochs=2, batch_size=64, progress=False)
    whole = randjax.fit(small_mlp(), digits, optax.sgd(0.05), snapshot_steps=(5,), **kwargs)
    snap = whole.snapshots[5]
    tail = randjax.fit(small_mlp(), digits, optax.sgd(0.05), start_step=5,
                       variables={"params": snap.trainable, **snap.model_state}, **kwargs)
    assert tail.summary["params_sha256"] == whole.summary["params_sha256"]
    np.testing.assert_array_equal(tail.step_losses, whole.step_losses[5:])
    assert tail.summary["steps"] == whole.summary["steps"]
    assert tail.summary["start_step"] == 5
    assert [r["epoch"] for r in tail.history] == [1, 2]


def test_variables_replace_the_init_and_are_checked(digits):
    model = small_mlp()
    variables = model.init(jax.random.key(7), digits.train.x[:1])
    result = randjax.fit(model, digits, optax.sgd(0.0), epochs=1, batch_size=64,
                         variables=variables, progress=False)
    assert train.params_sha256(result.state.trainable) == \
        train.params_sha256(variables["params"])
    wider = models.get("lenet300_100", width=0.5).init(jax.random.key(0),
                                                        digits.train.x[:1])
    with pytest.raises(ValueError, match="shapes and dtypes of the model"):
        randjax.fit(model, digits, adam(), epochs=1, batch_size=64, variables=wider,
                    progress=False)
    with pytest.raises(ValueError, match="collections and structure"):
        randjax.fit(model, digits, adam(), epochs=1, batch_size=64,
                    variables={"params": {}}, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(snapshot_steps=(10_000,)), "outside this run's steps"),
    (dict(start_step=10_000), "outside this run's steps"),
    (dict(start_step=-1), "start_step must be a Python int >= 0"),
])
def test_bad_step_arguments(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        randjax.fit(small_mlp(), digits, adam(), epochs=1, batch_size=64, progress=False,
                    **kwargs)


# --------------------------------------------------------------------------- #
# Reliability: reused workdirs, divergence, labels, damaged checkpoints
# --------------------------------------------------------------------------- #

def strict_json(text):
    """json.loads that refuses NaN and Infinity, as a strict JSON reader does."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("change, named", [
    (dict(seed=1), "seed"),
    (dict(tx=optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)),
     "optimizer_hyperparams"),
    (dict(tx=optax.sgd(1e-2)), "optimizer_state"),
    (dict(model=models.get("lenet300_100", width=0.5)), "state_shapes"),
    (dict(batch_size=32), "batch_size"),
    (dict(reparam=randjax.edge_popup(0.5)), "method"),
])
def test_a_workdir_resumes_only_its_own_run(digits, tmp_path, change, named):
    args = dict(model=small_mlp(), dataset=digits, tx=adam(), epochs=1, batch_size=64,
                workdir=tmp_path, progress=False)
    randjax.fit(**args)
    with pytest.raises(ValueError, match=f"holds another run.*{named}: was"):
        randjax.fit(**args | change | dict(epochs=2))


def test_a_workdir_of_other_data_or_a_longer_run_is_refused(digits, tmp_path):
    args = dict(epochs=2, batch_size=64, workdir=tmp_path, progress=False)
    randjax.fit(small_mlp(), digits, adam(), **args)
    fewer = dataclasses.replace(digits, train=data.Split(digits.train.x[:-1],
                                                         digits.train.y[:-1]))
    with pytest.raises(ValueError, match="holds another run.*data: was"):
        randjax.fit(small_mlp(), fewer, adam(), **args)
    with pytest.raises(ValueError, match="trained for 2 epochs, more than epochs=1"):
        randjax.fit(small_mlp(), digits, adam(), **args | dict(epochs=1))
    again = randjax.fit(small_mlp(), digits, adam(), **args)  # the same run resumes
    assert again.summary["epochs"] == 2


def lr_schedule_tx(rates):
    """SGD whose learning rate at step k is rates(k) (jnp arithmetic)."""
    return optax.inject_hyperparams(optax.sgd)(learning_rate=rates)


def test_a_nan_learning_rate_stops_at_the_first_step(digits, tmp_path):
    with pytest.raises(train.DivergenceError, match=r"loss became nan at step 2 \(epoch 1, "
                       r"batch 2\)") as caught:
        randjax.fit(small_mlp(), digits, optax.sgd(float("nan")), epochs=2, batch_size=64,
                    workdir=tmp_path, progress=False)
    assert (caught.value.epoch, caught.value.step) == (1, 2)
    assert not (tmp_path / "checkpoints").exists() or not any(
        (tmp_path / "checkpoints").iterdir())


def test_a_late_divergence_keeps_the_finite_checkpoints(digits, tmp_path):
    per_epoch = train.epoch_steps(len(digits.train.y), 64)
    bad_from = 2 * per_epoch + 3   # the update of step 2 * per_epoch + 4 is infinite
    tx = lr_schedule_tx(lambda k: jnp.where(k >= bad_from, jnp.inf, 0.05))
    with pytest.raises(train.DivergenceError, match="epoch 3.*keeps its last finite "
                       r"checkpoint \(epoch 2\)") as caught:
        randjax.fit(small_mlp(), digits, tx, epochs=4, batch_size=64, workdir=tmp_path,
                    progress=False)
    assert caught.value.epoch == 3
    assert caught.value.step in (bad_from + 1, bad_from + 2)
    manager = ocp.CheckpointManager(tmp_path / "checkpoints")
    assert sorted(manager.all_steps()) == [1, 2]
    records = [strict_json(line) for line in
               (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    # Resuming it restarts from the finite epoch 2 and diverges at the same step.
    with pytest.raises(train.DivergenceError) as again:
        randjax.fit(small_mlp(), digits, tx, epochs=4, batch_size=64, workdir=tmp_path,
                    progress=False)
    assert again.value.step == caught.value.step


def test_non_finite_parameters_with_finite_losses_are_caught(digits):
    per_epoch = train.epoch_steps(len(digits.train.y), 64)
    # Only the last update of epoch 1 is infinite: every loss of epoch 1 is finite.
    tx = lr_schedule_tx(lambda k: jnp.where(k == per_epoch - 1, jnp.inf, 0.05))
    with pytest.raises(train.DivergenceError, match="parameters became non-finite in "
                       f"epoch 1 \\(by step {per_epoch}\\)"):
        randjax.fit(small_mlp(), digits, tx, epochs=2, batch_size=64, progress=False)


def test_on_nonfinite_continue_trains_on_and_writes_valid_json(digits, tmp_path):
    per_epoch = train.epoch_steps(len(digits.train.y), 64)
    tx = lr_schedule_tx(lambda k: jnp.where(k >= per_epoch + 2, jnp.inf, 0.05))
    with pytest.warns(UserWarning, match="training diverged.*continuing"):
        result = randjax.fit(small_mlp(), digits, tx, epochs=3, batch_size=64,
                             workdir=tmp_path, progress=False, on_nonfinite="continue")
    assert result.summary["epochs"] == 3
    assert not np.isfinite(result.history[-1]["train_loss"])
    records = [strict_json(line) for line in
               (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["train_loss"] is not None and records[-1]["train_loss"] is None
    summary = strict_json((tmp_path / "summary.json").read_text())
    assert summary["final_train_loss"] is None
    kept = tmp_path / "last_finite_checkpoint" / "1"
    assert kept.is_dir()
    restored = ocp.StandardCheckpointer().restore(kept / "default")
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored["state"]))


def test_the_model_must_output_a_logit_per_class(digits):
    five = models.get("lenet300_100", width=0.25, num_classes=5)
    with pytest.raises(ValueError, match="outputs 5 logits but data set 'digits' has 10 "
                       "classes: build it with num_classes=10"):
        randjax.fit(five, digits, adam(), epochs=1, batch_size=64, progress=False)
    wide = models.get("lenet300_100", width=0.25, num_classes=12)
    with pytest.warns(UserWarning, match="outputs 12 logits .* 2 outputs can never"):
        randjax.fit(wide, digits, adam(), epochs=0, batch_size=64, progress=False)


def test_labels_outside_the_classes_are_refused(digits):
    y = digits.test.y.copy()
    y[7] = 10
    bad = dataclasses.replace(digits, test=data.Split(digits.test.x, y))
    with pytest.raises(ValueError, match="test split has label 10 at index 7, outside its "
                       "num_classes=10"):
        randjax.fit(small_mlp(), bad, adam(), epochs=1, batch_size=64, progress=False)


def damage(checkpoint):
    """Truncates every array file of an orbax checkpoint to half its size."""
    files = [p for p in checkpoint.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("recorded", [True, False])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(digits, tmp_path,
                                                                     recorded):
    # recorded=False: without fit's record of the files, orbax finds the damage.
    args = dict(batch_size=64, progress=False)
    randjax.fit(small_mlp(), digits, adam(), epochs=2, workdir=tmp_path / "run", **args)
    damage(tmp_path / "run" / "checkpoints" / "2")
    if not recorded:
        (tmp_path / "run" / "checkpoints" / "2" / "randjax_files.json").unlink()
    with pytest.warns(UserWarning, match="skipped the damaged checkpoint 2 of .*run "
                      r"\(moved to damaged_checkpoints/\): \w+"):
        resumed = randjax.fit(small_mlp(), digits, adam(), epochs=3,
                              workdir=tmp_path / "run", **args)
    straight = randjax.fit(small_mlp(), digits, adam(), epochs=3, **args)
    assert resumed.summary["params_sha256"] == straight.summary["params_sha256"]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert len(list((tmp_path / "run" / "damaged_checkpoints").iterdir())) == 1


def test_no_restorable_checkpoint_is_one_clear_error(digits, tmp_path):
    args = dict(batch_size=64, progress=False, workdir=tmp_path)
    randjax.fit(small_mlp(), digits, adam(), epochs=2, **args)
    for step in ("1", "2"):
        damage(tmp_path / "checkpoints" / step)
    with pytest.raises(ValueError, match=r"no checkpoint of .* restores: step 2: \w+.*; "
                       r"step 1: \w+"):
        randjax.fit(small_mlp(), digits, adam(), epochs=3, **args)


def test_a_resumed_run_returns_the_snapshots_taken_before(digits, tmp_path):
    kw = dict(batch_size=64, progress=False, snapshot_steps=[5], workdir=tmp_path)
    model = randjax.models.get("lenet300_100", width=0.1)
    first = randjax.fit(model, digits, optax.sgd(0.1), epochs=1, **kw)
    resumed = randjax.fit(model, digits, optax.sgd(0.1), epochs=2, **kw)
    assert sorted(resumed.snapshots) == [5]
    assert randjax.train.params_sha256(resumed.snapshots[5].trainable) == \
        randjax.train.params_sha256(first.snapshots[5].trainable)


@pytest.mark.parametrize("model_name, method", [
    ("lenet300_100", "dense"), ("lenet300_100", "edge_popup"), ("lenet300_100", "slot"),
    ("lenet300_100", "laperm"), ("conv2", "supermask"), ("conv2", "dense_bn")])
def test_init_state_is_one_program_drawing_the_eager_state_bitwise(model_name, method,
                                                                   caplog):
    # init_state jits model, method and optimizer init together; the state
    # must be bitwise the one the three inits give run eagerly, op by op (the
    # presets' params_sha256 depend on it; so does redrawing a LaPerm
    # network's initial weights with model.init for export).
    reparam, tx = randjax.dense(), optax.sgd(0.1, momentum=0.9)
    options = {}
    if method == "edge_popup":
        reparam = randjax.edge_popup(0.5, weight_init="signed_constant")
    elif method == "slot":
        reparam = randjax.slot_machine(8)
    elif method == "supermask":
        reparam = randjax.supermask(weight_init="kaiming_normal")
    elif method == "laperm":
        tx = randjax.laperm(optax.adam(1e-3), 20, include_1d=True)
    elif method == "dense_bn":
        options = dict(batch_norm=True)
    model = models.get(model_name, num_classes=10, **options)
    key = jax.random.key(7)
    with jax.log_compiles(), caplog.at_level("WARNING"):
        state = train.init_state(model, reparam, tx, (28, 28, 1), key)
    compiled = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("Finished XLA compilation")]
    model_key, reparam_key = jax.random.split(key)
    variables = dict(model.init(model_key, jnp.zeros((1, 28, 28, 1))))
    params = variables.pop("params")
    trainable, frozen = reparam.init(reparam_key, params)
    eager = train.TrainState(jnp.zeros((), jnp.int32), trainable, frozen, variables,
                             tx.init(trainable))
    assert jax.tree.structure(state) == jax.tree.structure(eager)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(eager)):
        if jnp.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(got, want)
    assert len(compiled) <= 1, compiled    # 0 when an earlier test compiled it


def test_init_state_falls_back_to_eager_for_a_method_needing_concrete_values():
    # masked's masks keep a count computed from the weights (an int(...) of
    # an array): tracing fails, init_state runs the inits eagerly instead.
    def masks(key, params):
        scores = randjax.pruning.magnitude(randjax.pruning.select(params))
        return randjax.pruning.masks_at_density(scores, 0.3)

    model = models.get("lenet300_100", num_classes=10)
    key = jax.random.key(1)
    state = train.init_state(model, randjax.masked(masks), optax.sgd(0.1), (8, 8, 1), key)
    model_key, reparam_key = jax.random.split(key)
    params = model.init(model_key, jnp.zeros((1, 8, 8, 1)))["params"]
    _, frozen = randjax.masked(masks).init(reparam_key, params)
    for got, want in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(frozen)):
        np.testing.assert_array_equal(got, want)
    kept = sum(int(m.sum()) for m in jax.tree.leaves(frozen) if m.dtype == bool)
    assert kept == round(0.3 * (64 * 300 + 300 * 100 + 100 * 10))
