"""The search space and the Tune adapter's pieces that need no running Ray."""
import json
import math
import re
from pathlib import Path

import optuna
import pytest
import torch
from ray import tune

from conftest import staged_copy_ok
from library.config import ConfigError
from library.search.space import IMPROVED_CNN_SPACE, SearchSpace, dimension, optuna_distributions
from library.train.recipe import TrainConfig
from library.search.checkpoints import restore_state
from library.search.sweep import SweepOptions, expected_trials
from library.train.fit import merge_train_val

BASE = TrainConfig(model="improved_cnn")


def test_the_default_space_is_valid_and_every_sample_is_a_working_config():
    space = SearchSpace(IMPROVED_CNN_SPACE, BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        constants = space.define_by_run(trial)
        cfg = space.apply(trial.params | constants)
        assert cfg.model == "improved_cnn" and len(cfg.model_kw["widths"]) == trial.params["stages"]
        assert cfg.model_kw["widths"][0] == trial.params["width"] and cfg.epochs in (10, 20)
        assert 3e-4 <= cfg.lr <= 1e-2
        study.tell(trial, 0.5)


def test_points_map_onto_the_train_config_and_model_options():
    space = SearchSpace({"width": [16], "stages": [3], "kernel": [5], "lr": (1e-3, 1e-2, "log"), "norm": "gn"}, BASE)
    cfg = space.apply({"width": 16, "stages": 3, "kernel": 5, "lr": 0.002, "norm": "gn"})
    assert cfg.model_kw == {"widths": (16, 32, 64), "kernel": 5, "norm": "gn"} and cfg.lr == 0.002
    assert space.fixed() == {"norm": "gn"} and [d.name for d in space.searched] == ["width", "stages", "kernel", "lr"]


@pytest.mark.parametrize("spec, match", [
    ({"kernell": [3]}, "unknown search-space key 'kernell'"),
    ({"seed": [1, 2]}, "unknown search-space key 'seed'"),
    ({"lr": (0.1, 0.01)}, "space.lr"),
    ({"lr": (0, 1, "log")}, "space.lr"),
    ({"lr": (1, 2, "lin")}, "space.lr"),
    ({"kernel": []}, "space.kernel"),
    ({"kernel": [3, 4]}, "odd"),
    ({"batch_size": [0, 64]}, "batch_size"),
    ({"norm": ["bn", "weird"]}, "space.norm='weird' is not one of"),
])
def test_a_bad_space_is_refused_with_the_key_named(spec, match):
    with pytest.raises(ConfigError, match=match):
        SearchSpace(spec, BASE)


def test_tune_spaces_for_random_and_grid_search():
    space = SearchSpace({"kernel": [3, 5], "lr": (1e-3, 1e-2, "log"), "depth": (1, 3), "norm": "bn"}, BASE)
    random_space = space.tune_space()
    assert isinstance(random_space["lr"], tune.search.sample.Float) and random_space["norm"] == "bn"
    assert isinstance(random_space["depth"], tune.search.sample.Integer)
    with pytest.raises(ConfigError, match="grid search takes lists"):
        space.tune_space(grid=True)
    grid = SearchSpace({"kernel": [3, 5], "depth": [1, 2, 3]}, BASE)
    assert grid.tune_space(grid=True)["kernel"] == {"grid_search": [3, 5]}
    assert expected_trials(SweepOptions(search="grid", num_samples=2), grid) == 12
    assert expected_trials(SweepOptions(num_samples=7), grid) == 7


def test_optuna_distributions_match_the_space():
    dists = optuna_distributions([dimension("a", [1, 2]), dimension("b", (1, 4)), dimension("c", (0.1, 1.0, "log")),
                                  dimension("d", "fixed")])
    assert set(dists) == {"a", "b", "c"} and dists["c"].log and isinstance(dists["b"], optuna.distributions.IntDistribution)


def test_sweep_options_validation_and_storage(monkeypatch, tmp_path):
    for bad in ({"num_samples": 0}, {"reduction_factor": 1}, {"gpus_per_trial": 1.5}, {"cpus_per_trial": 0}):
        with pytest.raises(ConfigError):
            SweepOptions(**bad)
    monkeypatch.setenv("CV_STORAGE_PATH", str(tmp_path))
    path = SweepOptions(name="x").experiment_path()
    assert re.fullmatch(rf"{tmp_path}/x-[0-9a-f]{{8}}", path)
    assert SweepOptions(name="x", storage_path="s3://bucket/runs").experiment_path().startswith("s3://bucket/runs/x-")
    # the same settings find the same state, however the sweep is run; other settings never share it
    assert SweepOptions(name="x", resume=False, ray_address="local", cpus_per_trial=2).experiment_path() == path
    assert SweepOptions(name="x", num_samples=5).experiment_path() != path
    assert SweepOptions(name="x", search_seed=1).experiment_path() != path


def test_an_unreadable_checkpoint_falls_back_to_the_one_before_then_to_scratch(tmp_path, capsys):
    trial = tmp_path / "trial"
    for epoch in (1, 2, 3):  # CheckpointConfig(num_to_keep=2) leaves the last two; an older one is harmless
        (trial / f"checkpoint_00000{epoch}").mkdir(parents=True)
        torch.save({"epoch": epoch}, trial / f"checkpoint_00000{epoch}" / "train_state.pt")
    latest = tune.Checkpoint.from_directory(str(trial / "checkpoint_000003"))
    assert restore_state(latest) == {"epoch": 3}
    (trial / "checkpoint_000003" / "train_state.pt").write_bytes(b"not a torch file")  # a full disk mid-write
    assert restore_state(latest) == {"epoch": 2}
    assert "checkpoint_000003 cannot be read" in capsys.readouterr().out
    for epoch in (1, 2):
        (trial / f"checkpoint_00000{epoch}" / "train_state.pt").unlink()
    assert restore_state(latest) is None
    assert "restarts from its first epoch" in capsys.readouterr().out
    assert restore_state(None) is None


def test_the_final_fit_trains_on_train_and_validation_together(cifar_root):
    from library.data import load_cifar10

    with staged_copy_ok():
        data = load_cifar10(cifar_root, val_size=60)
    merged = merge_train_val(data)
    assert len(merged.train) == len(data.train) + len(data.val) and len(merged.val) == 0
    assert merged.test is data.test and not math.isnan(len(merged.train))


def test_pbt_needs_random_or_grid_search_and_a_mutable_training_parameter():
    from library.search.sweep import validate_sweep

    with pytest.raises(ConfigError, match="pbt needs search=random"):
        SweepOptions(scheduler="pbt")
    with pytest.raises(ConfigError, match="at least one of lr"):
        validate_sweep(SweepOptions(scheduler="pbt", search="random"), SearchSpace({"kernel": [3, 5]}, BASE))
    validate_sweep(SweepOptions(scheduler="pbt", search="random"), SearchSpace({"lr": (1e-3, 1e-2, "log")}, BASE))
    with pytest.raises(ConfigError, match="onecycle cannot take"):  # it would ignore PBT's new lr
        validate_sweep(SweepOptions(scheduler="pbt", search="random"),
                       SearchSpace({"lr": (1e-3, 1e-2, "log"), "schedule": ["cosine", "onecycle"]}, BASE))


TWO_FAMILIES = {"model": {"improved_cnn": {"width": [8, 16], "stages": [2], "lr": (1e-3, 1e-2, "log")},
                          "airbench_cnn": {"width1": [8, 16], "width2": 16, "width3": 16, "optimizer": "sgd_1024",
                                           "lr": (5.0, 15.0, "log"), "tta": "flip"}},
                "epochs": [2]}


def test_pbt_keeps_every_checkpoint_since_a_lower_trial_may_restore_an_upper_ones_epochs_later():
    """PBT tells a lower trial to restore the checkpoint an upper one had when they were compared; the lower trial
    may wait for a slot while the upper one trains on, and a retention count would delete it first (a trial then
    fails: "Could not recover from checkpoint as it does not exist on storage anymore")."""
    from library.search.sweep import _checkpoints_kept

    assert _checkpoints_kept(SweepOptions(scheduler="pbt", search="random")) is None
    assert _checkpoints_kept(SweepOptions(scheduler="asha")) == _checkpoints_kept(SweepOptions(scheduler="fifo")) == 2


def test_a_family_space_searches_each_familys_own_parameters():
    from library.search.families import DEFAULT_SPACE, FamilySpace, make_space

    space = make_space(TWO_FAMILIES, BASE)
    assert isinstance(space, FamilySpace) and isinstance(make_space(IMPROVED_CNN_SPACE, BASE), SearchSpace)
    assert {d.name for d in space.searched} >= {"model", "improved_cnn.width", "airbench_cnn.lr"}
    study, chosen = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)), set()
    for _ in range(12):
        trial = study.ask()
        fixed = space.define_by_run(trial)
        point = trial.params | fixed
        cfg = space.apply(point)
        chosen.add(cfg.model)
        if cfg.model == "airbench_cnn":  # airbench's units and options, never improved_cnn's
            assert cfg.optimizer == "sgd_1024" and 5 <= cfg.lr <= 15 and cfg.tta == "flip"
            assert set(cfg.model_kw) == {"width1", "width2", "width3"}
        else:
            assert cfg.optimizer == "adamw" and cfg.lr <= 1e-2 and cfg.model_kw["widths"][0] in (8, 16)
        assert space.run_name(point).startswith(cfg.model) and cfg.epochs == 2
        study.tell(trial, 0.5)
    assert chosen == {"improved_cnn", "airbench_cnn"}
    make_space(DEFAULT_SPACE, BASE)  # the job's default space validates


def test_a_family_space_refuses_what_it_cannot_do():
    from library.search.families import make_space
    from library.search.sweep import validate_sweep

    with pytest.raises(ConfigError, match="space.model.airbench_cnn: unknown search-space key 'width'"):
        make_space({"model": {"airbench_cnn": {"width": [8]}, "improved_cnn": {}}}, BASE)
    with pytest.raises(ConfigError, match="needs search=optuna"):
        validate_sweep(SweepOptions(search="random"), make_space(TWO_FAMILIES, BASE))


def test_a_one_family_space_is_a_plain_space_any_searcher_takes():
    from library.search.families import make_space
    from library.search.sweep import validate_sweep

    space = make_space({"model": {"airbench_cnn": {"width1": [16, 32]}}, "epochs": [2]}, BASE)
    assert isinstance(space, SearchSpace) and space.base.model == "airbench_cnn"
    assert space.apply({"width1": 16, "epochs": 2}).model_kw == {"width1": 16}
    validate_sweep(SweepOptions(search="random", scheduler="fifo"), space)


def test_a_truncated_tune_state_stops_the_resume_with_what_to_do(tmp_path):
    from library.search.checkpoints import SweepStateError, check_saved_state

    check_saved_state(str(tmp_path / "absent"))  # a new sweep: nothing to check
    state = tmp_path / "experiment_state-2026-11-30_10-00-00.json"
    state.write_text(json.dumps({"trial_data": [], "runner_data": {}}))
    check_saved_state(str(tmp_path))
    state.write_text(state.read_text()[:20])  # a full disk mid-write
    with pytest.raises(SweepStateError, match="unreadable.*full disk.*move .* aside"):
        check_saved_state(str(tmp_path))


def test_a_job_checks_its_sweep_storage_before_it_loads_data_or_starts_ray(tmp_path):
    """validate_sweep, which the sweep and study jobs call first, refuses a damaged saved state (and a full disk:
    the same check_storage)."""
    from library.search.checkpoints import SweepStateError
    from library.search.sweep import validate_sweep

    opts = SweepOptions(name="damaged", storage_path=str(tmp_path), search="random", scheduler="fifo")
    space = SearchSpace({"lr": (1e-3, 1e-2, "log")}, BASE)
    validate_sweep(opts, space)  # a new sweep
    Path(opts.experiment_path()).mkdir()
    (Path(opts.experiment_path()) / "experiment_state-2026-12-03_12-00-00.json").write_text('{"trial_data": [')
    with pytest.raises(SweepStateError, match="unreadable"):
        validate_sweep(opts, space)


def test_a_nearly_full_disk_is_refused_before_the_sweep_starts(tmp_path):
    from library.search.checkpoints import SweepStateError, check_free_space

    check_free_space(str(tmp_path / "not" / "yet" / "made"))
    with pytest.raises(SweepStateError, match="MiB free where the sweep keeps its state.*--storage_path"):
        check_free_space(str(tmp_path), need=2**62)
