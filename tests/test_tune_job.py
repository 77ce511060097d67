"""jobs/tune_cnn.py end to end: a real local Ray, a real MLflow store, tiny CIFAR-10 in the real layout.

The job runs as a subprocess, as a user runs it, so each run starts and stops its own Ray."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from conftest import REPO, execute_notebook, job_env, load_job
from library.cli import run_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def tune_cmd(store: Path, name: str, *args: str) -> list[str]:
    # --ray_address=local: always a fresh local Ray, never a cluster `ray start` left on the machine
    return [sys.executable, str(REPO / "jobs" / "tune_cnn.py"), "--smoke-test", f"--name={name}",
            f"--storage_path={store / 'ray'}", "--ray_address=local", *args]


def run_tune(store, data_root, name, *args, timeout=600):
    return subprocess.run(tune_cmd(store, name, *args), cwd=store, env=job_env(store, data_root),
                          capture_output=True, text=True, timeout=timeout)


def runs_of(store: Path, experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.MlflowClient().search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cifar_root):
    store = tmp_path_factory.mktemp("tune_smoke")
    out = run_tune(store, cifar_root, "smoke")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return store, out


def test_smoke_sweep_logs_a_parent_and_one_child_per_trial(smoke):
    store, out = smoke
    parents, children = runs_of(store, "smoke")
    trial_dirs = [p for p in (store / "ray" / "smoke").iterdir() if p.is_dir() and p.name.startswith("trainable_")]
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
            "accuracy_vs_parameters.png", "final_training_curves.png", "best_config.txt", "model"} <= artifacts
    assert "test accuracy" in out.stdout


def test_rerunning_a_finished_sweep_adds_nothing(smoke, cifar_root):
    store, _ = smoke
    before_parents, before_children = runs_of(store, "smoke")
    out = run_tune(store, cifar_root, "smoke")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "complete already" in out.stdout
    parents, children = runs_of(store, "smoke")
    assert len(parents) == 1 and len(children) == len(before_children)
    client = mlflow.MlflowClient()
    for metric in ("test_acc", "best_val_acc"):
        assert len(client.get_metric_history(parents[0].info.run_id, metric)) == 1


def test_an_interrupted_sweep_resumes_into_the_same_runs(tmp_path, cifar_root):
    args = ("--num_samples=4", "--max_concurrent=1", "--scheduler=fifo", "--space.epochs=[3]", "--retrain=false")
    proc = subprocess.Popen(tune_cmd(tmp_path, "resume", *args), cwd=tmp_path, env=job_env(tmp_path, cifar_root),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / "ray" / "resume").glob("trainable_*/checkpoint_000001")):  # a trial mid-way
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before it could be interrupted"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    first_output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, first_output[-3000:]
    parents, interrupted = runs_of(tmp_path, "resume")
    assert 1 <= len(interrupted) < 4 or any(c.info.status == "KILLED" for c in interrupted)
    # nothing left RUNNING without a process behind it: the interrupted runs say so
    assert all(r.info.status != "RUNNING" for r in parents + interrupted)
    assert parents[0].info.status == "KILLED" and any(c.info.status == "KILLED" for c in interrupted)

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


def test_population_based_training_runs_with_random_search(tmp_path, cifar_root):
    out = run_tune(tmp_path, cifar_root, "pbt", "--search=random", "--scheduler=pbt", "--num_samples=3",
                   "--max_concurrent=2", "--space.epochs=[3]", "--grace_period=1", "--retrain=false")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parents, children = runs_of(tmp_path, "pbt")
    assert len(parents) == 1 and len(children) == 3 and all(c.info.status == "FINISHED" for c in children)


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
                                      ("--space.lr=(0.1, 0.01)", "space.lr"), ("--space.norm=['xx']", "unknown norm"),
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
    monkeypatch.setenv("SWEEP_EXPERIMENT", "smoke")
    outputs, text = execute_notebook("sweep_report.ipynb")
    assert "-s2-d1-k" in text and "test accuracy after the final fit" in text  # trials by their names
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # accuracy-vs-parameter, curves, importance
