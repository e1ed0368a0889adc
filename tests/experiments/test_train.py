"""Experiment entry points: CLI, presets, schedules, benchmark."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import optax
import pytest

from experiments import compile_cache, registry, train
from experiments.configs import dense, presets


def test_cli_trains_then_resumes_and_extends(tmp_path, run_module):
    base = ["experiments.train", "--config=experiments/configs/dense.py",
            "--config.model=lenet300_100", "--config.width=0.25",
            f"--workdir={tmp_path}"]
    run_module(*base, "--config.epochs=1")
    first = json.loads((tmp_path / "summary.json").read_text())
    assert first["epochs"] == 1 and first["steps"] == math.ceil(1294 / 128)
    run_module(*base, "--config.epochs=1")  # resumes: nothing left to train
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["params_sha256"] == first["params_sha256"]
    run_module(*base, "--config.epochs=2")  # a larger budget trains on
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((tmp_path / "config.json").read_text())["width"] == 0.25


def test_cli_refuses_a_workdir_of_another_config(tmp_path, run_module):
    base = ["experiments.train", "--config=experiments/configs/dense.py",
            "--config.epochs=1", f"--workdir={tmp_path}"]
    run_module(*base, "--config.width=0.25")
    proc = subprocess.run([sys.executable, "-m", *base, "--config.width=0.5"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "different config (keys ['width'])" in proc.stderr


def test_preset_through_the_cli(tmp_path, run_module):
    out = run_module("experiments.train",
                     "--config=experiments/configs/presets.py:dense_lenet_fmnist",
                     "--config.dataset=digits", "--config.epochs=1", f"--workdir={tmp_path}")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["optimizer"] == "sgd" and config["schedule"] == "cosine_epoch"
    assert config["use_bias"] is False and config["val_fraction"] == 0.0
    assert "summary:" in out


def test_dense_lenet_fmnist_preset_matches_the_reference_settings():
    config = presets.get_config("dense_lenet_fmnist")
    expected = dict(dataset="fashion_mnist", model="lenet300_100", use_bias=False,
                    init="kaiming_normal", optimizer="sgd", learning_rate=0.01,
                    momentum=0.9, weight_decay=1e-4, schedule="cosine_epoch", epochs=10,
                    batch_size=128, val_fraction=0.0, normalize="standardize",
                    crop_padding=0, flip=False, drop_remainder=False)
    assert {k: config[k] for k in expected} == expected
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        presets.get_config("nope")


def test_edge_popup_lenet_fmnist_preset_matches_the_reference_settings():
    config = presets.get_config("edge_popup_lenet_fmnist")
    expected = dict(method="edge_popup", dataset="fashion_mnist", model="lenet300_100",
                    use_bias=False, init="signed_constant", score_init="pytorch_default",
                    density=0.5, scope="layer", optimizer="sgd", learning_rate=0.1,
                    momentum=0.9, weight_decay=1e-4, schedule="cosine_epoch", epochs=10,
                    batch_size=128, val_fraction=0.0, normalize="standardize",
                    crop_padding=0, flip=False, drop_remainder=False, train_limit=None)
    assert {k: config[k] for k in expected} == expected


@pytest.mark.parametrize("method", ["edge_popup", "supermask"])
def test_methods_through_train_and_evaluate(method):
    from experiments.configs import edge_popup, supermask
    config = dict(edge_popup=edge_popup, supermask=supermask)[method].get_config()
    config.update(epochs=1, train_limit=500, store_weights=False, width=0.5)
    result = train.train_and_evaluate(config, None, progress=False)
    assert result.summary["steps"] == math.ceil(500 / 128)
    frozen = result.state.frozen["Dense_0"]["kernel"]
    assert frozen.shape == (2,) and str(frozen.dtype) == "uint32"  # lean: a key
    assert result.state.trainable["Dense_0"]["kernel"].shape == (64, 150)
    reparam = registry.build(config, optax.identity()).reparam
    assert (reparam.spec or {}).get("method", "supermask") == method
    config.method = "nope"
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of"):
        registry.build(config, optax.identity())
    config.update(method=method, train_limit=0)
    with pytest.raises(ValueError, match="train_limit must be >= 1"):
        train.train_and_evaluate(config, None, progress=False)


def test_schedules():
    config = dense.get_config()
    config.update(learning_rate=0.1, epochs=4)
    steps = 10
    config.schedule = "cosine_epoch"
    lr = train.make_schedule(config, steps)
    for epoch in range(4):
        expected = 0.1 * 0.5 * (1 + math.cos(math.pi * epoch / 4))
        np.testing.assert_allclose([lr(epoch * steps + i) for i in (0, 9)], expected,
                                   rtol=1e-6)
    config.schedule = "cosine"
    lr = train.make_schedule(config, steps)
    np.testing.assert_allclose([lr(0), lr(20), lr(40)], [0.1, 0.05, 0.0], atol=1e-7)
    config.update(schedule="step", lr_milestones=(1, 3), lr_gamma=0.1)
    lr = train.make_schedule(config, steps)
    np.testing.assert_allclose([lr(9), lr(10), lr(29), lr(30)], [0.1, 0.01, 0.01, 0.001],
                               rtol=1e-6)
    config.update(schedule="constant", warmup_epochs=1)
    lr = train.make_schedule(config, steps)
    np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(39)], [0.0, 0.05, 0.1, 0.1],
                               rtol=1e-6)
    config.schedule = "linear"
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        train.make_schedule(config, steps)


def test_sgd_weight_decay_is_added_to_the_gradient_as_in_pytorch():
    import jax.numpy as jnp
    import optax
    config = dense.get_config()
    config.update(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    tx = train.make_optimizer(config, steps_per_epoch=1)
    w, g = jnp.array([2.0]), jnp.array([0.5])
    state = tx.init(w)
    buf = 0.0
    for _ in range(3):  # torch.optim.SGD: buf = m * buf + (g + wd * w); w -= lr * buf
        buf = 0.9 * buf + (0.5 + 0.01 * w)
        expected = w - 0.1 * buf
        updates, state = tx.update(g, state, w)
        w = optax.apply_updates(w, updates)
        np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_benchmark_reports_json(tmp_path, run_module):
    out_file = tmp_path / "bench.json"
    out = run_module("experiments.benchmark", "--model=lenet300_100", "--dataset=digits",
                     "--batch=64", "--steps=5", "--epochs=2", f"--json={out_file}",
                     "--methods=edge_popup,masked,tom", "--analysis",
                     "--fp_reference_removals=1", "--seeds=2", "--model_apis")
    report = json.loads(out_file.read_text())
    fp = report["results"]["dense"]["analysis"]
    assert set(fp["hook_parts_ms"]) == {"frame_potential", "ranks", "weight_profile",
                                        "spectrum"}
    seeds = report["results"]["dense"]["seeds"]
    assert seeds["seeds"] == 2 and seeds["vmap_seconds"] > 0 and "2 seeds" in out
    assert seeds["max_loss_difference"] < 1e-4  # the vmapped runs are the looped ones
    apis = report["results"]["dense"]["model_apis"]
    assert apis["same_losses"] == {"linen": True, "nnx": True, "functions": True}
    assert apis["nnx_over_linen"] > 0 and apis["functions_over_linen"] > 0
    assert "NNX" in out and "plain functions" in out
    assert report["results"]["tom"]["ratio_to_dense"] > 0
    assert (fp["units"], fp["removals"]) == (300, 270)
    assert fp["loo_fp_ms"] > 0 and fp["greedy_fp_reference_s"] > fp["greedy_fp_s"] > 0
    assert fp["hook_over_epoch"] > 0 and "leave-one-out" in out
    assert list(report["results"]) == ["dense", "edge_popup", "masked", "tom"]
    assert report["results"]["edge_popup"]["ratio_to_dense"] > 0
    masked = report["results"]["masked"]
    assert masked["weights"] == 64 * 300 + 300 * 100 + 100 * 10  # LeNet on 8x8 digits
    assert masked["global_mask_ms"] > 0 and masked["sort_ms"] > 0
    assert masked["epoch_ratio_to_dense"] > 0 and "global magnitude mask" in out
    dense_result = report["results"]["dense"]
    assert dense_result["steps_per_epoch"] == math.ceil(1438 / 64)  # val_fraction=0
    assert dense_result["step_ms"] > 0 and dense_result["epoch_seconds"] > 0
    assert dense_result["images_per_second"] == pytest.approx(64e3 / dense_result["step_ms"])
    assert dense_result["ratio_to_dense"] == 1.0
    assert "step_ms" in out and "overhead" in out


def test_benchmark_selection_mode(run_module):
    out = run_module("experiments.benchmark", "--select_size=50000", "--steps=3")
    report = json.loads(out[out.index("{"):])
    assert report["size"] == 50000 and report["speedup"] > 0
    assert "speedup" in out.splitlines()[0]


def test_plot_writes_curves(tmp_path):
    import optax

    import randjax
    from experiments import plot
    from randjax import data, models
    run = tmp_path / "run"
    randjax.fit(models.get("lenet300_100", width=0.25), data.load("digits"), optax.adam(1e-3),
                epochs=2, batch_size=64, workdir=run, progress=False)
    out = tmp_path / "curves.png"
    plot.plot_runs({"run": plot.read_metrics(run)}, out, title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="is .* a run directory"):
        plot.read_metrics(tmp_path / "nothing")


@pytest.mark.parametrize("method", ["dense", "edge_popup", "laperm"])
def test_cli_killed_with_sigkill_resumes_to_the_same_parameters(tmp_path, run_module, method):
    # Dense; a method with frozen trees; an optimizer with a projection state.
    import signal
    import time
    args = [sys.executable, "-m", "experiments.train",
            f"--config=experiments/configs/{method}.py", "--config.model=lenet300_100",
            "--config.epochs=12", "--config.batch_size=32"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + [f"--workdir={killed}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "3").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    run_module(*args[2:], f"--workdir={killed}")
    run_module(*args[2:], f"--workdir={tmp_path / 'straight'}")
    resumed = json.loads((killed / "summary.json").read_text())
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert resumed["steps"] == straight["steps"] == 12 * math.ceil(1294 / 32)


@pytest.mark.parametrize("k", [2, 8])
def test_slot_lenet_fmnist_presets_match_the_reference_settings(k):
    config = presets.get_config(f"slot_lenet_fmnist_k{k}")
    expected = dict(method="slot_machine", dataset="fashion_mnist", model="lenet300_100",
                    use_bias=False, k=k, selection="greedy", eval_selection=None,
                    slot_init="official", shared_options=False, optimizer="sgd",
                    learning_rate=0.1, momentum=0.9, weight_decay=0.0,
                    schedule="constant", epochs=10, batch_size=128, val_fraction=0.0,
                    normalize="standardize", crop_padding=0, flip=False,
                    drop_remainder=False, train_limit=None)
    assert {key: config[key] for key in expected} == expected
    assert "maxwell-aladago/slot-machines" in presets.PRESETS[
        f"slot_lenet_fmnist_k{k}"].__doc__
    assert registry.build(config, optax.identity()).reparam.spec == dict(
        method="slot_machine", k=k, selection="greedy", eval_selection="greedy",
        init="official", shared_options=False)


def test_slot_machine_through_train_and_evaluate():
    from experiments.configs import slot_machine
    config = slot_machine.get_config()
    config.update(epochs=1, train_limit=500, width=0.5)
    from randjax import models
    default = models.get(config.model).kernel_init  # config.init: the zoo's default
    assert train.make_model(config, 10).kernel_init is default
    result = train.train_and_evaluate(config, None, progress=False)
    assert result.summary["steps"] == math.ceil(500 / 128)
    state = result.state
    assert state.trainable["Dense_0"]["kernel"].shape == (64, 150, 8)  # scores
    assert state.frozen["Dense_0"]["kernel"].shape == (64, 150, 8)  # options
    assert result.history[-1]["test_accuracy"] > 0.1


def test_laperm_presets_match_the_reference_settings_and_share_theta0():
    import jax

    import randjax
    lp, adam = presets.get_config("laperm_lenet_fmnist"), presets.get_config("adam_lenet_fmnist")
    common = {"dataset": "fashion_mnist", "model": "lenet300_100",
              "use_bias": True, "init": "kaiming_uniform", "optimizer": "adam",
              "learning_rate": 1e-3, "weight_decay": 0.0, "schedule": "constant",
              "epochs": 5, "batch_size": 128, "val_fraction": 0.0,
              "normalize": "standardize", "crop_padding": 0, "flip": False,
              "drop_remainder": False, "train_limit": None}
    assert {k: lp[k] for k in common} == common == {k: adam[k] for k in common}
    assert (lp.method, adam.method) == ("laperm", "dense")
    assert (lp.sync_period, lp.laperm_include_1d, lp.reset_inner_state,
            lp.laperm_eval) == (20, True, False, "synced")
    assert adam.get("sync_period") is None
    assert "ihsuy/Train-by-Reconnect" in presets.PRESETS["laperm_lenet_fmnist"].__doc__
    # Keras he_uniform: U(+-sqrt(6 / fan_in)).
    w = randjax.init.get(lp.init)(jax.random.key(0), (784, 300))
    assert float(abs(w).max()) <= math.sqrt(6 / 784) < float(abs(w).max()) * 1.001
    # The same initial weights: init_state depends on the seed, not the optimizer.
    states = [randjax.train.init_state(
        train.make_model(c, 10), randjax.dense(), train.build_method(c, 60_000).optimizer,
        (28, 28, 1), jax.random.key(0)) for c in (lp, adam)]
    jax.tree.map(np.testing.assert_array_equal, states[0].trainable, states[1].trainable)
    assert randjax.methods.laperm.laperm_states(states[0].opt_state)
    assert not randjax.methods.laperm.laperm_states(states[1].opt_state)
    sorted0 = randjax.methods.laperm.laperm_states(states[0].opt_state)[0].sorted0
    assert sorted0["Dense_0"]["bias"] is not None  # biases synced too
    assert hasattr(states[1].opt_state, "hyperparams")  # plain inject_hyperparams(adam)


def test_laperm_through_train_and_evaluate_reports_synced_accuracy():
    import jax.numpy as jnp

    import randjax
    from experiments.configs import laperm
    config = laperm.get_config()
    config.update(epochs=1, train_limit=500, width=0.25, sync_period=3,
                  laperm_include_1d=True, val_fraction=0.0)
    result = train.train_and_evaluate(config, None, progress=False)
    record = result.history[-1]
    assert result.summary["steps"] == 4 and record["eval_transform"] == "synced_state"
    state = result.state
    synced = randjax.methods.laperm.synced_params(state.trainable, state.opt_state)
    assert not np.array_equal(synced["Dense_0"]["kernel"], state.trainable["Dense_0"]["kernel"])
    digits = randjax.data.load("digits", val_fraction=0.0)
    logits = train.make_model(config, 10).apply({"params": synced}, jnp.asarray(digits.test.x))
    accuracy = float((logits.argmax(-1) == jnp.asarray(digits.test.y)).mean())
    assert record["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    config.laperm_eval = "current"
    assert registry.build(config, optax.identity()).eval_transform is None
    config.laperm_eval = "nope"
    with pytest.raises(ValueError, match="unknown laperm_eval 'nope'"):
        registry.build(config, optax.identity())


def test_laperm_and_lookahead_wrap_the_configured_optimizer():
    import jax.numpy as jnp

    import randjax
    from experiments.configs import edge_popup, laperm, lookahead
    config = laperm.get_config()
    config.update(sync_period=5, reset_inner_state=True)
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    state = train.build_method(config, 1280).optimizer.init(params)
    (lp_state,) = randjax.methods.laperm.laperm_states(state)
    assert lp_state.sorted0["b"] is None  # laperm_include_1d=False: kernels only
    # A setting of another method is refused, not ignored.
    config = edge_popup.get_config()
    config.sync_period = 5
    with pytest.raises(ValueError, match=r"\['sync_period'\] are not settings of method "
                                         "'edge_popup'"):
        train.build_method(config, 1280)
    config = lookahead.get_config()
    config.update(lookahead_sync_period=2, lookahead_step_size=0.5, learning_rate=0.1,
                  optimizer="sgd", momentum=0.0)
    method = train.build_method(config, 1280)
    tx, rp = method.optimizer, method.reparam
    trainable, _ = rp.init(None, {"w": jnp.zeros(2)})
    state = tx.init(trainable)
    grads = optax.LookaheadParams(fast={"w": jnp.ones(2)}, slow={"w": jnp.zeros(2)})
    for _ in range(2):
        updates, state = tx.update(grads, state, trainable)
        trainable = optax.apply_updates(trainable, updates)
    # Two fast SGD steps of -0.1, then slow = 0 + 0.5 * (-0.2), fast synced to it.
    np.testing.assert_allclose(trainable.slow["w"], [-0.1, -0.1], rtol=1e-6)
    np.testing.assert_allclose(trainable.fast["w"], [-0.1, -0.1], rtol=1e-6)
    assert rp.apply(trainable, None, train=False) is trainable.slow


def test_lookahead_preset_through_train_and_evaluate():
    import optax
    config = presets.get_config("lookahead_lenet_fmnist")
    config.update(dataset="digits", epochs=1, width=0.25, train_limit=300)
    result = train.train_and_evaluate(config, None, progress=False)
    assert isinstance(result.state.trainable, optax.LookaheadParams)
    assert result.history[-1]["test_accuracy"] > 0.1


def test_benchmark_laperm_reports_amortised_step_and_sync_cost(tmp_path, run_module):
    out_file = tmp_path / "bench.json"
    out = run_module("experiments.benchmark", "--model=lenet300_100", "--dataset=digits",
                     "--batch=64", "--steps=10", "--epochs=2", f"--json={out_file}",
                     "--methods=laperm", "--laperm_sync_period=5")
    report = json.loads(out_file.read_text())
    assert list(report["results"]) == ["dense", "laperm"]
    lp = report["results"]["laperm"]
    assert lp["sync_period"] == 5 and lp["sync_ms"] > 0 and lp["amortised_ratio"] > 0
    assert lp["amortised_step_ms"] == lp["block_step_ms"] > 0
    # The updates alone: one sort-based sync per 5 steps costs far more
    # than 5 plain Adam updates of LeNet.
    assert lp["update_ms"] > 2 * lp["plain_update_ms"] > 0
    assert lp["amortised_ratio_from_updates"] > 1
    assert "amortised step" in out and "updates alone" in out


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("method, fields, message", [
    ("dense", dict(batch_size=0), r"config.batch_size must be a Python int >= 1, got 0"),
    ("dense", dict(eval_batch_size=0), "config.eval_batch_size must be a Python int >= 1"),
    ("dense", dict(checkpoint_every=0), "config.checkpoint_every must be a Python int >= 1"),
    ("dense", dict(epochs=-1), "config.epochs must be a Python int >= 0"),
    ("dense", dict(seed=-1), "config.seed must be a Python int >= 0"),
    ("dense", dict(num_classes=0), "config.num_classes must be >= 1"),
    ("dense", dict(warmup_epochs=-1), "config.warmup_epochs must be a Python int >= 0"),
    ("dense", dict(warmup_epochs=10, epochs=10), "config.warmup_epochs=10 must be below "
                                                 "config.epochs=10"),
    ("dense", dict(learning_rate=float("nan")), "config.learning_rate must be a finite"),
    ("dense", dict(learning_rate=-0.1), r"config.learning_rate must be in \[0.0, inf\]"),
    ("dense", dict(lr_gamma=0.0), "config.lr_gamma must be > 0.0"),
    ("dense", dict(lr_milestones=(3, 1)), "config.lr_milestones must increase strictly"),
    ("dense", dict(lr_milestones=(-1,)), "config.lr_milestones entry must be a Python int"),
    ("dense", dict(momentum=1.0), r"config.momentum must be in \[0, 1\), got 1.0"),
    ("dense", dict(weight_decay=-1e-4), "config.weight_decay must be in"),
    ("dense", dict(optimizer="nadam"), "unknown optimizer 'nadam' \\(config.optimizer\\)"),
    ("dense", dict(width=float("nan")), "width must be a finite Python real"),
    ("dense", dict(bn_epsilon=-1e-5), "bn_epsilon must be > 0"),
    ("dense", dict(init="nope"), "unknown initializer 'nope'"),
    ("dense", dict(model="nope"), "unknown model 'nope'"),
    ("edge_popup", dict(density=1.5), r"density must be in \(0, 1\]"),
    ("slot_machine", dict(k=1), "k must be a Python int >= 2"),
])
def test_bad_config_fields_are_refused_before_the_data_is_read(monkeypatch, method, fields,
                                                                message):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the config was checked")

    monkeypatch.setattr(train.data_lib, "load", no_data)
    config = registry.get_config(method)
    config.update(fields)
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, None, progress=False)


def test_schedule_values_legal_but_useless_warn():
    config = dense.get_config()
    config.update(schedule="step", lr_milestones=(2, 12), epochs=10)
    with pytest.warns(UserWarning, match=r"config.lr_milestones \[12\] are at or past "
                                         r"config.epochs=10: never reached"):
        train.make_schedule(config, 5)
    config.update(schedule="constant", learning_rate=0.0)
    with pytest.warns(UserWarning, match="config.learning_rate is 0"):
        train.make_schedule(config, 5)


def test_num_classes_field_reaches_the_data_set():
    config = dense.get_config()
    config.update(num_classes=12, epochs=0, train_limit=100, width=0.1)
    assert train.load_dataset(config).num_classes == 12
    config.num_classes = 5
    with pytest.raises(ValueError, match=r"label \d at index \d+ is outside \[0, 5\)"):
        train.load_dataset(config)


@pytest.mark.parametrize("flag, expected", [
    ("--config.batch_sz=1", "--config.batch_sz=1: config has no field 'batch_sz'; did you "
                            "mean config.batch_size"),
    ("--config.no_such_field=1", "config has no field 'no_such_field'"),
    ("--config.batch_size=0", "config.batch_size must be a Python int >= 1, got 0"),
    ("--config.use_bias=no", "--config.use_bias=no: ('Non-boolean argument"),
])
def test_cli_bad_config_field_is_one_line_with_exit_status_2(tmp_path, flag, expected):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=experiments/configs/dense.py",
         flag, f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_every_preset_and_method_config_passes_the_checks():
    for name in presets.PRESETS:
        config = presets.get_config(name)
        check = train.check_config if config.method == "gimp" else train.check_run_config
        check(config)
    for method in ("dense", "edge_popup", "gimp", "laperm", "lookahead", "masked",
                   "slot_machine", "supermask", "tom"):  # experiments/configs/*.py
        config = registry.get_config(method)
        (train.check_config if method == "gimp" else train.check_run_config)(config)


def test_cli_divergence_is_one_line_with_exit_status_1(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=experiments/configs/dense.py",
         "--config.learning_rate=1e30", "--config.epochs=2", f"--workdir={tmp_path}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    fatal = [line for line in proc.stderr.splitlines() if line.startswith("FATAL")]
    assert len(fatal) == 1 and "training diverged" in fatal[0] and "(epoch 1, batch" in fatal[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "summary.json").exists()


def test_cli_tensorboard_writes_event_files(tmp_path, run_module):
    run_module("experiments.train", "--config=experiments/configs/dense.py",
               "--config.epochs=2", "--config.tensorboard=True", f"--workdir={tmp_path}")
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
    assert "tensorboard" not in json.loads((tmp_path / "config.json").read_text())


def test_train_and_evaluate_takes_an_nnx_model(tmp_path):
    from flax import nnx

    from experiments import train as train_lib
    from experiments.configs import dense

    class Net(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(64, 10, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.linear(x.reshape(len(x), -1))

    config = dense.get_config()
    config.update(epochs=3, learning_rate=0.01)
    result = train_lib.train_and_evaluate(config, str(tmp_path), progress=False, model=Net())
    assert result.summary["test_accuracy"] > 0.85
    assert json.loads((tmp_path / "fingerprint.json").read_text())["model"].startswith("nnx ")


def test_factored_slot_machine_through_train_and_evaluate():
    from experiments.configs import slot_machine
    from randjax.methods.slot_machine import SlotSGDState
    config = slot_machine.get_config()
    assert config.slot_mode == "plain"
    config.update(epochs=1, train_limit=500, width=0.5, slot_mode="factored",
                  weight_decay=1e-4, nesterov=True, schedule="cosine")
    result = train.train_and_evaluate(config, None, progress=False)
    state = result.state
    assert state.trainable["Dense_0"]["kernel"].shape == (64, 150)  # one u per connection
    assert state.frozen["Dense_0"]["kernel"].shape == (2, 64, 150, 8)  # options, s(0)
    inner = state.opt_state.inner_state  # inject_hyperparams around slot_sgd
    assert isinstance(inner, SlotSGDState) and 0 < float(inner.scale) < 1
    assert result.history[-1]["test_accuracy"] > 0.1
    assert 0 < result.history[-1]["learning_rate"] < 0.1  # logged, cosine decayed


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_factored_slot_machine_refuses_adam_before_the_data_is_read(monkeypatch, optimizer):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the config was checked")

    monkeypatch.setattr(train.data_lib, "load", no_data)
    config = registry.get_config("slot_machine")
    config.update(slot_mode="factored", optimizer=optimizer)
    with pytest.raises(ValueError, match="slot_mode='factored' trains with SGD only"):
        train.train_and_evaluate(config, None, progress=False)
    config.update(slot_mode="factorised", optimizer="sgd")
    with pytest.raises(ValueError, match="config.slot_mode must be one of"):
        train.check_run_config(config)


def test_cli_refuses_factored_slot_machine_with_adam(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train",
         "--config=experiments/configs/slot_machine.py", "--config.slot_mode=factored",
         "--config.optimizer=adam", f"--workdir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "trains with SGD only" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def _train_with_cache_flags(tmp_path, name, *flags, env_cache=None):
    """A 1-epoch digits run with ``flags``; its environment has ``XDG_CACHE_HOME``
    in ``tmp_path`` and ``$JAX_COMPILATION_CACHE_DIR`` only if ``env_cache``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV)}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    if env_cache:
        env["JAX_COMPILATION_CACHE_DIR"] = str(env_cache)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=experiments/configs/dense.py",
         "--config.epochs=1", f"--workdir={tmp_path / name}", *flags],
        capture_output=True, text=True, timeout=600, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _cached(directory) -> int:
    return len(list(directory.glob("*"))) if directory.exists() else 0


def test_compilation_cache_flags(tmp_path):
    default = tmp_path / "xdg" / "randjax" / "xla"
    _train_with_cache_flags(tmp_path, "off", "--nocompilation_cache",
                            env_cache=tmp_path / "env")
    assert _cached(default) == 0 and _cached(tmp_path / "env") == 0   # off means off
    _train_with_cache_flags(tmp_path, "default")
    assert _cached(default) > 0          # on by default, in $XDG_CACHE_HOME/randjax/xla
    _train_with_cache_flags(tmp_path, "env", env_cache=tmp_path / "env")
    assert _cached(tmp_path / "env") > 0       # JAX's own variable is respected ...
    _train_with_cache_flags(tmp_path, "flag", f"--compilation_cache_dir={tmp_path / 'mine'}",
                            env_cache=tmp_path / "env2")
    assert _cached(tmp_path / "mine") > 0 and _cached(tmp_path / "env2") == 0   # ... unless
