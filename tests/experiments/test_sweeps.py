"""The study scripts: records, resumption, figures (tiny budgets on digits)."""

import json

import pytest

import randjax


def _rows(path):
    return {r["name"]: r for r in json.loads(path.read_text())}


def test_slot_sweeps_write_records_and_figures(tmp_path, run_module):
    args = ["experiments.slot_sweeps", "--dataset=digits", "--models=lenet300_100",
            "--ks=2,8", "--epochs=2", "--memory_models=lenet300_100", "--memory_ks=8",
            f"--out_dir={tmp_path}"]
    run_module(*args)
    k = _rows(tmp_path / "k.json")
    assert set(k) == {"lenet300_100/dense", *(f"lenet300_100/{m}/{n}" for m in
                                              ("greedy", "sample") for n in (2, 8))}
    assert k["lenet300_100/greedy/8"]["learning_rate"] == 0.1
    assert k["lenet300_100/sample/8"]["learning_rate"] == 25.0
    assert k["lenet300_100/greedy/8"]["test_accuracy"] > 0.5  # chance: 0.1
    assert set(_rows(tmp_path / "sharing.json")) == {"shared/2", "shared/8"}
    tune = _rows(tmp_path / "finetune.json")
    assert set(tune) == {"slots", "finetuned", "dense"}
    assert tune["dense"]["epochs"] == 4 and len(tune["finetuned"]["test_accuracy_per_epoch"]) == 2
    memory = _rows(tmp_path / "memory.json")["lenet300_100/8"]
    # Lean mode keeps two uint32 per kernel instead of 8 options per weight.
    assert memory["frozen_bytes_lean"] == 3 * 8
    assert memory["frozen_bytes_stored"] == 8 * 4 * (64 * 300 + 300 * 100 + 100 * 10)
    assert memory["bits_per_connection"] == 3 and memory["export_ratio"] > 8
    for name in ("k", "sharing", "finetune"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    out = run_module(*args)  # everything recorded: nothing trains again
    assert ": test " not in out and "memory: " not in out


def test_laperm_sweeps_write_records_and_figures(tmp_path, run_module):
    run_module("experiments.laperm_sweeps", "--dataset=digits", "--models=lenet300_100",
               "--ks=20", "--prune=0,0.5", "--epochs=2", "--agnostic_epochs=1",
               "--ranking_epochs=3", "--ranking_train_limit=300", f"--out_dir={tmp_path}")
    optimizers = _rows(tmp_path / "optimizers.json")
    assert set(optimizers) == {f"lenet300_100/{m}" for m in ("laperm", "adam", "lookahead")}
    laperm = optimizers["lenet300_100/laperm"]
    assert laperm["test_accuracy"] > 0.5  # chance: 0.1
    # 64-long kernel columns fit uint8 (4x smaller than float32); Lehmer codes
    # are smaller still.
    assert 3 < laperm["export_ratio_indices"] < laperm["export_ratio_lehmer"]
    assert _rows(tmp_path / "k.json")["k/20"]["sync_period"] == 20
    assert set(_rows(tmp_path / "pruned.json")) == {"laperm/0", "laperm/0.5", "adam/0",
                                                    "adam/0.5"}
    assert set(_rows(tmp_path / "agnostic.json")) == {"F1", "F2"}
    curves = _rows(tmp_path / "ranking.json")["Adam"]["ranking_distance"]
    assert sorted(curves) == [f"ranking/Dense_{i}/kernel" for i in range(3)]
    for curve in curves.values():  # nothing to compare with before the first epoch
        assert curve[0] is None and all(mean > 0 and std > 0 for mean, std in curve[1:])
    for name in ("optimizers", "k", "pruned", "agnostic", "ranking"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_edge_popup_sweeps_write_json_and_png(tmp_path, run_module):
    run_module("experiments.edge_popup_sweeps", "--dataset=digits", "--studies=supermask",
               "--densities=0.1,0.5", "--epochs=2", f"--out_dir={tmp_path}")
    rows = {r["name"]: r for r in json.loads((tmp_path / "supermask.json").read_text())}
    assert set(rows) == {"edge_popup/0.1", "edge_popup/0.5", "supermask", "dense"}
    assert all(len(r["test_accuracy_per_epoch"]) == 2 for r in rows.values())
    assert rows["edge_popup/0.5"]["test_accuracy"] > 0.5  # chance: 0.1
    assert 0 < rows["supermask"]["expected_density"] < 1
    assert (tmp_path / "supermask.png").stat().st_size > 10_000
    # A second call finds every run done and only redraws.
    out = run_module("experiments.edge_popup_sweeps", "--dataset=digits",
                     "--studies=supermask", "--densities=0.1,0.5", "--epochs=2",
                     f"--out_dir={tmp_path}")
    assert ": test " not in out and "wrote" in out


def test_every_study_setting_is_a_flag_that_is_read():
    from absl import flags

    from experiments import laperm_sweeps, sweeps
    defaults = laperm_sweeps.get_config()
    flag_values = flags.FlagValues()
    sweeps.define_flags(defaults, laperm_sweeps.HELP, flag_values)
    assert set(flag_values) >= set(defaults) and set(laperm_sweeps.HELP) == set(defaults)
    flag_values(["prog", "--sync_period=7", "--prune=0,0.5", "--models=f1"])
    study = sweeps.config_from_flags(defaults, flag_values)
    assert (study.sync_period, study.prune, study.models) == (7, (0.0, 0.5), ("f1",))
    # --sync_period reaches every LaPerm run outside the k study.
    assert laperm_sweeps.run_config(study, "laperm", "lenet300_100").sync_period == 7
    assert laperm_sweeps.run_config(study, "laperm", "f1", sync_period=3).sync_period == 3
    # The baselines are methods of their own, with no LaPerm setting to ignore.
    assert "sync_period" not in laperm_sweeps.run_config(study, "adam", "lenet300_100")


def test_studies_run_from_python_with_a_config(tmp_path):
    from experiments import edge_popup_sweeps
    study = edge_popup_sweeps.get_config()
    study.update(dataset="digits", densities=(0.5,), epochs=1, out_dir=str(tmp_path),
                 studies=("supermask",))
    edge_popup_sweeps.supermask_sweep(study, tmp_path)
    assert set(_rows(tmp_path / "supermask.json")) == {"edge_popup/0.5", "supermask", "dense"}


def test_pruning_sweeps_write_records_and_figures(tmp_path, run_module):
    args = ["experiments.pruning_sweeps", "--dataset=digits", "--mlps=lenet300_100",
            "--variants=lrr,sgimp", "--epochs=2", "--mlp_multiplier=0.5",
            "--mlp_target=0.25", "--baseline_densities=0.25", "--convs=conv2",
            "--conv_variants=wr", "--conv_epochs=1", "--conv_train_limit=300",
            "--conv_multiplier=0.5", "--conv_target=0.5", f"--out_dir={tmp_path}",
            f"--work_dir={tmp_path / 'runs'}"]
    run_module(*args)
    mlps = _rows(tmp_path / "mlps.json")
    assert set(mlps) == {"lenet300_100/lrr", "lenet300_100/sgimp",
                         "lenet300_100/one-shot magnitude + LRR/0.25",
                         "lenet300_100/SNIP at init/0.25", "lenet300_100/random at init/0.25"}
    lrr = mlps["lenet300_100/lrr"]
    assert [r["round"] for r in lrr["rounds"]] == [0, 1, 2]
    assert [round(r["density"], 3) for r in lrr["rounds"]] == [1.0, 0.5, 0.25]
    assert lrr["test_accuracy"] > 0.5  # chance: 0.1
    assert mlps["lenet300_100/SNIP at init/0.25"]["rounds"][0]["density"] == 0.25
    (conv,) = _rows(tmp_path / "convs.json").values()
    assert conv["train_limit"] == 300 and len(conv["rounds"]) == 2
    for name in ("mlps", "convs"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    out = run_module(*args)  # everything recorded: nothing trains again
    assert ": test " not in out


def test_structured_sweeps_write_records_and_figures(tmp_path, run_module):
    from experiments import structured_sweeps
    assert set(structured_sweeps.HELP) == set(structured_sweeps.get_config())
    args = ["experiments.structured_sweeps", "--dataset=digits", "--models=lenet300_100",
            "--lenet_epochs=2", "--spectra_epochs=0,2", "--ks=1,4", "--clusters=3",
            "--random_rounds=2", f"--out_dir={tmp_path}", f"--work_dir={tmp_path / 'runs'}"]
    run_module(*args)
    (fig2,) = _rows(tmp_path / "fig2.json").values()
    assert fig2["removed"] == 270 and fig2["units"] == 300
    assert fig2["iterations"] == 2 * 23  # 1,437 training images, batch 64
    curves = fig2["curves"]
    assert set(curves) == set(structured_sweeps.CRITERIA)
    for curve in curves.values():
        assert len(curve["accuracy"]) == 271
        assert curve["accuracy"][0] == pytest.approx(fig2["test_accuracy"], abs=1e-6)
    assert curves["random"]["std"][0] == 0 and max(curves["random"]["std"]) > 0
    # The FP criterion's potential after 270 removals is the greedy one's.
    fp = curves["FP, least correlated first"]["frame_potential"]
    assert fp[-1] > curves["FP, most correlated first"]["frame_potential"][-1]
    (sub,) = _rows(tmp_path / "subspaces.json").values()
    dense0 = sub["layers"]["Dense_0"]
    assert dense0["ks"] == [1, 4, 64]  # ks up to the rank, plus the rank itself
    assert dense0["rank_k"][-1] == pytest.approx(sub["test_accuracy"], abs=2e-3)
    assert dense0["norm_share"][-1] == pytest.approx(1.0, abs=1e-4)
    (spectra,) = _rows(tmp_path / "spectra.json").values()
    assert set(spectra["layers"]["Dense_0/kernel"]) == {"0", "2"}
    assert sum(spectra["layers"]["Dense_0/kernel"]["2"]["counts"]) == 64
    (clusters,) = _rows(tmp_path / "clustering.json").values()
    assert len(clusters["layers"]["Dense_0"]["trained"]) == 300
    for name in ("fig2", "subspaces", "spectra_lenet300_100", "dynamics_lenet300_100",
                 "clustering"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    out = run_module(*args)  # everything recorded: nothing trains again
    assert ": test " not in out


def test_tom_studies_write_records_tables_and_figures(tmp_path, run_module):
    args = ["experiments.tom_studies", "--dataset=digits", "--studies=tom,modifications",
            "--tom_models=lenet300_100",
            "--variants=lrr", "--epochs=2", "--mlp_multiplier=0.5", "--mlp_target=0.25",
            "--densities=0.25", "--tom_penalty_scale=1e-3", "--seeds=0,1",
            "--modification_model=lenet300_100", "--modification_density=0.25",
            "--modification_rounds=2", "--bn_model=resnet20", "--conv_epochs=1",
            "--conv_train_limit=200", "--bn_target=0.5", "--conv_multiplier=0.5",
            f"--out_dir={tmp_path}", f"--work_dir={tmp_path / 'runs'}"]
    run_module(*args)
    toms = _rows(tmp_path / "tom.json")
    assert set(toms) == {"lenet300_100/TOM/0.25", "lenet300_100/TOM/0.25/seed1"}
    tom = toms["lenet300_100/TOM/0.25"]
    dense, sparse = tom["rounds"]
    assert sparse["density"] == pytest.approx(0.25, abs=1e-3) and sparse["mask_steps"] > 0
    assert sparse["steps"] == 2 * dense["steps"]  # 1 dense epoch, then the 2-epoch schedule
    assert sparse["test_accuracy"] > 0.5
    # Seed 0's baselines are pruning_sweeps' records; other seeds are added beside them.
    baselines = _rows(tmp_path / "mlps.json")
    assert {"lenet300_100/lrr", "lenet300_100/lrr/seed1", "lenet300_100/sgimp",
            "lenet300_100/SNIP at init/0.25/seed1"} <= set(baselines)
    table = (tmp_path / "tom.md").read_text()
    assert "| lenet300_100 | TOM | 0.2500 |" in table and "+-" in table
    mods = _rows(tmp_path / "modifications.json")
    assert {row["how"] for row in mods.values()} == {"unmodified", *randjax.pruning.MODIFICATIONS}
    kept = {row["kept"] for row in mods.values()}
    assert len(kept) == 1  # every modification keeps the ticket's count
    assert "shuffle_masks_reinit" in (tmp_path / "modifications.md").read_text()
    out = run_module(*args)  # everything recorded: nothing trains again
    assert ": test " not in out
    run_module(*[a for a in args if not a.startswith(("--studies", "--seeds"))],
               "--studies=bn", "--seeds=0")
    bn = _rows(tmp_path / "bn.json")
    assert set(bn) == {f"resnet20/lrr/momentum {m:g}, epsilon {e:g}/seed0"
                       for m, e in ((0.99, 1e-3), (0.997, 1e-5))}
    assert all(len(row["rounds"]) == 2 for row in bn.values())
    for name in ("tom", "modifications", "bn"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
