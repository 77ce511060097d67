"""jobs/tune_cnn.py end to end: a real local Ray, a real MLflow store, tiny CIFAR-10 in the real layout.

The job runs as a subprocess, as a user runs it, so each run starts and stops its own Ray."""
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from conftest import SMOKE_SWEEP, execute_notebook, job_env, load_job, run_tune, tune_cmd
from library.cli import run_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def runs_of(store: Path, experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.MlflowClient().search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


@pytest.fixture
def smoke(tune_smoke):
    return tune_smoke


def test_smoke_sweep_logs_a_parent_and_one_child_per_trial(smoke):
    store, out = smoke
    parents, children = runs_of(store, SMOKE_SWEEP)
    [state] = (store / "ray").glob(f"{SMOKE_SWEEP}-*")  # <name>-<digest of the settings>
    trial_dirs = [p for p in state.iterdir() if p.is_dir() and p.name.startswith("trainable_")]
    assert len(parents) == 1 and len(children) == len(trial_dirs) == 3
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert len({c.data.tags["trial_id"] for c in children}) == 3
    for child in children:  # named for what the trial is: w8-s2-d1-k3-bn-mish-no_residual lr=0.0051 ... [trial id]
        assert re.fullmatch(r"w(8|16)-s2-d1-k[35]-bn-(relu|mish)-(no_)?residual lr=\S+ batch_size=64 epochs=2 \[\w+\]",
                            child.info.run_name), child.info.run_name
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        assert steps == list(range(1, len(steps) + 1)) and steps  # each epoch once
        assert child.data.params["space.stages"] == "2" and "model_kw.widths" in child.data.params
    # the best configuration is tested once, and everything the comparison needs is in the parent
    assert len(client.get_metric_history(parent.info.run_id, "test_acc")) == 1
    assert parent.data.params["sweep.search"] == "optuna" and parent.data.params["sweep.scheduler"] == "asha"
    assert parent.data.params["space.kernel"] == "[3, 5]" and "best.lr" in parent.data.params
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.json", "leaderboard.csv", "learning_curves.png", "parameter_importance.png",
            "accuracy_vs_parameters.png", "final_training_curves.png", "best_config.txt", "best_config.json",
            "model"} <= artifacts
    assert "test accuracy" in out.stdout


def test_rerunning_a_finished_sweep_adds_nothing(smoke, campaign_root):
    store, _ = smoke
    before_parents, before_children = runs_of(store, SMOKE_SWEEP)
    out = run_tune(store, campaign_root, SMOKE_SWEEP)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "complete already" in out.stdout
    parents, children = runs_of(store, SMOKE_SWEEP)
    assert len(parents) == 1 and len(children) == len(before_children)
    client = mlflow.MlflowClient()
    for metric in ("test_acc", "best_val_acc"):
        assert len(client.get_metric_history(parents[0].info.run_id, metric)) == 1


def test_a_sweep_with_other_settings_never_shares_the_state_of_another(smoke, campaign_root):
    """Same name, one setting changed: a new sweep (its own Tune state and parent run), not a resume of the first."""
    store, _ = smoke
    out = run_tune(store, campaign_root, SMOKE_SWEEP, "--space.kernel=[3]", "--num_samples=2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming" not in out.stdout and "complete already" not in out.stdout
    assert len(list((store / "ray").glob(f"{SMOKE_SWEEP}-*"))) == 2
    parents, _ = runs_of(store, SMOKE_SWEEP)
    assert len(parents) == 2 and len({p.data.tags["sweep_path"] for p in parents}) == 2


def test_the_console_says_what_runs_in_a_few_lines(smoke):
    """A short banner, one line per finished trial, no third-party chatter."""
    _, out = smoke
    # Ray's warning that the machine's disk is nearly full is the machine's state, for the user to see, not chatter
    lines = [line for line in out.stdout.splitlines() if "file_system_monitor" not in line]
    assert lines[0].startswith("==== tune_cnn.py · git ") and lines[2].startswith("results: MLflow store ")
    assert sum(line.startswith("trial ") and " done: " in line for line in lines) == 3
    assert "#/experiments/" in lines[-1] and lines[-1].endswith("?workflowType=machine_learning")  # where to look
    assert len(lines) <= 20, out.stdout
    for noise in ("A new study created", "TensorBoard", "Checkpoint successfully created", "Token authentication",
                  "Creating initial MLflow database tables", "Trial status:", "snapshotting"):
        assert noise not in out.stdout + out.stderr, noise


def test_every_figure_of_the_smoke_sweep_has_something_drawn(smoke):
    """Each PNG the sweep logged (the parent's comparison, every trial's and the final fit's figures) is a drawing,
    not a blank canvas, at smoke scale (one- and two-epoch trials)."""
    import numpy as np
    from PIL import Image

    store, _ = smoke
    parents, children = runs_of(store, SMOKE_SWEEP)
    client = mlflow.MlflowClient()
    checked = 0
    for run in parents[:1] + children:
        for artifact in client.list_artifacts(run.info.run_id):
            if artifact.path.endswith(".png"):
                path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact.path,
                                                           dst_path=str(store / "figures" / run.info.run_id))
                pixels = np.asarray(Image.open(path).convert("RGB"))
                drawn = (pixels != pixels[0, 0]).any(axis=-1).mean()
                assert drawn > 0.005, f"{artifact.path} of {run.info.run_name} is blank ({drawn:.1%})"  # a one-line
                # message ("too few finished trials to estimate importances") draws ~1%
                checked += 1
    assert checked >= 5  # learning curves, accuracy vs parameters, importances, final curves and filters


def test_an_interrupted_sweep_resumes_into_the_same_runs(tmp_path, cifar_root, monkeypatch):
    args = ("--num_samples=4", "--max_concurrent=1", "--scheduler=fifo", "--space.epochs=[3]", "--retrain=false")
    proc = subprocess.Popen(tune_cmd(tmp_path, "resume", *args), cwd=tmp_path, env=job_env(tmp_path, cifar_root),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        # a trial has checkpointed: any checkpoint, since Tune keeps two and a fast trial's first lives under a second
        while not list((tmp_path / "ray").glob("resume-*/trainable_*/checkpoint_*")):
            assert proc.poll() is None and time.time() < deadline, "the sweep ended before it could be interrupted"
            time.sleep(0.05)
        # SIGTERM to the job's whole process group, as `timeout` sends it (`ray job stop` and
        # `kill` send it to the driver alone, which takes it the same way): handled as Ctrl-C (SIGINT) is. The
        # job's local Ray is outside that group: in it, the GCS would stop under the driver, which then waited
        # out Ray's 60-s reconnect timeout and died without saving the sweep's state
        os.killpg(proc.pid, signal.SIGTERM)
        first_output = proc.communicate(timeout=45)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, first_output[-3000:]
    assert "Run the same command again to resume it" in first_output, first_output[-3000:]
    parents, interrupted = runs_of(tmp_path, "resume")
    assert 1 <= len(interrupted) < 4 or any(c.info.status == "KILLED" for c in interrupted)
    # nothing left RUNNING without a process behind it: the interrupted runs say so
    assert all(r.info.status != "RUNNING" for r in parents + interrupted)
    assert parents[0].info.status == "KILLED"
    if not all(c.info.status == "FINISHED" for c in interrupted):  # (a trial may end before the stop lands)
        assert any(c.info.status == "KILLED" for c in interrupted)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("SWEEP_EXPERIMENT", raising=False)
    _, text = execute_notebook("sweep_report.ipynb")  # says so, rather than showing a table of NaN
    assert "This sweep is unfinished" in text and "no test accuracy yet" in text

    out = run_tune(tmp_path, cifar_root, "resume", *args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming the sweep" in out.stdout
    parents, children = runs_of(tmp_path, "resume")
    assert len(parents) == 1 and len(children) == 4
    assert len({c.data.tags["trial_id"] for c in children}) == 4
    client = mlflow.MlflowClient()
    for child in children:
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == [1, 2, 3]


def test_a_time_to_accuracy_sweep_ranks_by_accuracy_within_each_trials_time_budget(tmp_path, cifar_root):
    out = run_tune(tmp_path, cifar_root, "timed", "--metric=val_acc_at_time", "--trial_time_s=0.3",
                   "--space.epochs=[4]", "--num_samples=2", "--scheduler=fifo")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parents, children = runs_of(tmp_path, "timed")
    client = mlflow.MlflowClient()
    for child in children:  # each trial stopped after the epoch whose training time reached the budget
        train_s = [m.value for m in client.get_metric_history(child.info.run_id, "train_s")]
        assert train_s[-1] >= 0.3 and (len(train_s) == 1 or train_s[-2] < 0.3) and len(train_s) <= 4
        assert "val_acc_at_time" in child.data.metrics
    parent = parents[0]
    assert "best_val_acc_at_time" in parent.data.metrics and "test_acc" in parent.data.metrics
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/leaderboard.json"))
    scores = [row["val_acc_at_time"] for row in table]
    assert scores == sorted(scores, reverse=True)  # ranked by accuracy within the time budget


def test_time_to_accuracy_needs_a_time_budget(tmp_path, cifar_root):
    out = run_tune(tmp_path, cifar_root, "untimed", "--metric=val_acc_at_time", timeout=120)
    assert out.returncode == 2 and "trial_time_s" in out.stderr


def test_a_sweep_over_two_model_families_concludes_with_the_best_of_either(tmp_path, cifar_root):
    families = {"model": {"improved_cnn": {"width": [8], "stages": [2], "lr": (1e-3, 1e-2, "log")},
                          "airbench_cnn": {"width1": [8], "width2": 16, "width3": 16, "optimizer": "sgd_1024",
                                           "lr": (5.0, 15.0, "log"), "batch_size": 64, "tta": "flip"}},
                "epochs": [2], "batch_size": [64]}
    out = run_tune(tmp_path, cifar_root, "families", f"--space={families!r}", "--num_samples=4", "--scheduler=fifo")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parents, children = runs_of(tmp_path, "families")
    assert len(children) == 4 and all(c.info.run_name.split()[0] in families["model"] for c in children)
    parent = parents[0]
    assert parent.data.params["best.model"] in families["model"] and "test_acc" in parent.data.metrics
    assert {"leaderboard.csv", "accuracy_vs_parameters.png", "parameter_importance.png"} <= {
        a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}


def test_population_based_training_runs_with_random_search(tmp_path, cifar_root):
    out = run_tune(tmp_path, cifar_root, "pbt", "--search=random", "--scheduler=pbt", "--num_samples=3",
                   "--max_concurrent=2", "--space.epochs=[3]", "--grace_period=1", "--retrain=false")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parents, children = runs_of(tmp_path, "pbt")
    statuses = [c.info.status for c in children]
    assert len(parents) == 1 and statuses == ["FINISHED"] * 3, (statuses, out.stdout[-3000:])


def test_an_adversarial_training_sweep_is_ranked_by_robust_accuracy(tmp_path, cifar_root):
    """D10: PGD adversarial training through the same job; trials, the leaderboard and the final fit carry the
    accuracy under PGD."""
    out = run_tune(tmp_path, cifar_root, "robust", "--num_samples=2", "--space.epochs=[1]", "--adv_eps_255=48",
                   "--adv_steps=2", "--metric=val_robust_acc")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parents, children = runs_of(tmp_path, "robust")
    parent = parents[0].data
    assert len(children) == 2 and all(0 <= c.data.metrics["val_robust_acc"] <= 1 for c in children)
    assert all(float(c.data.params["adv_eps_255"]) == 48 for c in children)
    assert parent.metrics["best_val_robust_acc"] == max(c.data.metrics["val_robust_acc"] for c in children)
    assert 0 <= parent.metrics["test_robust_acc"] <= 1 and "under PGD at 48/255" in out.stdout
    board = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=parents[0].info.run_id,
                                                                artifact_path="leaderboard.json")).read_text())
    assert [row["val_robust_acc"] for row in board] == sorted((row["val_robust_acc"] for row in board), reverse=True)


@pytest.mark.parametrize("arg, key", [("--space.kernell=[3]", "kernell"), ("--num_sample=3", "num_sample"),
                                      ("--space.lr=(0.1, 0.01)", "space.lr"), ("--space.norm=['bn']", "airbench_cnn"),
                                      ("--space.model.improved_cnn.norm=['xx']", "space.norm"),
                                      ("--scheduler=pbt", "pbt needs search=random"),
                                      ("--metric=val_robust_acc", "needs a robust radius")])
def test_bad_keys_fail_before_ray_starts(arg, key, capsys):
    import ray

    job = load_job("tune_cnn")
    with pytest.raises(SystemExit) as stopped:
        run_job(job.main, job.JobConfig, argv=[arg])
    assert stopped.value.code == 2 and key in capsys.readouterr().err
    assert not ray.is_initialized()


def test_a_bad_key_exits_with_one_line_and_no_traceback(tmp_path, cifar_root):
    out = run_tune(tmp_path, cifar_root, "bad", "--space.kernell=[3]", timeout=120)
    assert out.returncode == 2 and "kernell" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Started a local Ray" not in out.stdout + out.stderr


def test_the_notebook_rebuilds_the_comparison_from_mlflow(smoke, monkeypatch):
    store, _ = smoke
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.delenv("SWEEP_EXPERIMENT", raising=False)  # default settings: the newest sweep in the store
    outputs, text = execute_notebook("sweep_report.ipynb")
    assert "unfinished" not in text and "-s2-d1-k" in text and "test accuracy after the final fit" in text  # trials by their names
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # accuracy-vs-parameter, curves, importance


def test_the_default_budget_is_sized_to_the_machine_and_the_command_line_wins(monkeypatch):
    from library.cli import parse_job_config

    job = load_job("tune_cnn")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(job.torch.cuda, "is_available", lambda: False)
    cpu = job.resolve_budget(parse_job_config(job.JobConfig, []))
    assert cpu.budget == "cpu" and cpu.num_samples == 12 and cpu.train_size == 8000 and cpu.time_budget_s == 1200
    assert cpu.space["epochs"] == [5] and cpu.space["model"]["improved_cnn"]["depth"] == [1]
    assert "about 15 minutes on 2 CPU cores" in job.describe_budget(cpu)
    mine = job.resolve_budget(parse_job_config(job.JobConfig, ["--num_samples=40", "--space.model.improved_cnn.depth=[2]"]))
    assert mine.num_samples == 40 and mine.space["model"]["improved_cnn"] == job.JobConfig().space["model"]["improved_cnn"] | {"depth": [2]}
    assert mine.train_size == 8000  # the rest of the cpu budget still applies
    full = job.resolve_budget(parse_job_config(job.JobConfig, ["--budget=gpu"]))
    assert full == job.JobConfig(budget="gpu")  # the settings as they are: the full search
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert job.resolve_budget(parse_job_config(job.JobConfig, [])).budget == "gpu"  # a cluster job


def test_the_time_budget_carries_across_a_resume_and_says_it_ended_the_sweep():
    """Tune keeps a sweep's budget as active time saved with its state: a sweep that spent most of it before an
    interruption stops soon after its resume, and the driver must take that as finished (budget spent), not as
    interrupted, though its own fit ran far shorter than the budget."""
    import pickle
    import time

    from library.search.budget import SweepBudget, _spent, budget_spent, expect

    first = SweepBudget(0.4, "/sweeps/a")
    assert not first.stop_all()
    time.sleep(0.3)
    assert not first.stop_all() and not budget_spent("/sweeps/a")  # 0.3 s of 0.4 spent, then interrupted
    resumed = pickle.loads(pickle.dumps(first))  # as Tune restores it from the sweep's saved state
    assert not resumed.stop_all()
    time.sleep(0.15)
    assert resumed.stop_all() and budget_spent("/sweeps/a") and not budget_spent("/sweeps/b")
    _spent.clear()  # a new process runs the command again: the restored stopper says the budget ended the sweep
    expect("/sweeps/a", 3600)  # even with a larger budget: Tune ended the search
    assert budget_spent("/sweeps/a") is False and pickle.loads(pickle.dumps(resumed)) and budget_spent("/sweeps/a")


def test_a_sweep_resumed_with_a_larger_budget_goes_on_for_the_difference():
    """`time_budget_s` is a run setting: resumed with more, the sweep gets the difference; with 0, no limit."""
    import pickle

    from library.search.budget import SweepBudget, expect

    spent = SweepBudget(100, "/sweeps/c")
    spent._budget = -1.0  # ran out: 101 s of 100 spent
    expect("/sweeps/c", 400)
    resumed = pickle.loads(pickle.dumps(spent))
    assert not resumed.stop_all() and resumed._budget == 299.0
    expect("/sweeps/c", 0)
    assert pickle.loads(pickle.dumps(spent))._budget == float("inf")
