"""The study jobs (A1/A2 + A10a, A10b, A4, A5–A8, F1) end to end with --smoke-test: a real local Ray, a real
MLflow store, tiny CIFAR-10 in the real layout. Each job ran as a subprocess, as a user runs it, in the smoke
campaign (conftest's `smoke_campaign`, with the settings below); these tests read the runs it left."""
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import REPO, execute_notebook, job_env, load_job
from library.cli import run_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# job -> (trials of its smoke test, artifacts its parent run must hold). bn_study keeps the smoke test's two
# seeds (the aggregation over seeds); the campaign's smoke profile runs the others on one seed
# (library/campaign/units.py; norm_batch_study's smoke test already does), which halves their trials.
JOBS = {
    "bn_study": (4, ["train_loss_per_epoch.png", "filters/no_bn.png", "filters/bn.png", "a10a_bias_before_bn.json"]),
    "norm_batch_study": (4, ["accuracy_vs_batch_size.png", "accuracy_by_batch.csv"]),
    "pipeline_study": (4, ["train_acc_per_iteration.png"]),
    "vanishing_gradients": (3, ["train_acc_per_iteration.png", "gradient_magnitude.png", "architecture/a5.md",
                                "architecture/a7.md", "architecture/a8.md"]),
    "vit_study": (3, ["accuracy_time.csv", "filters/cnn.png"]),
}
COMMON = ["results.csv", "results.json", "summary.csv", "summary.json", "train_loss_per_epoch.png"]


def experiment(job: str) -> str:
    return f"campaign_smoke.{job}"  # the campaign's name for its unit's runs


def run_study(job: str, store: Path, data_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = job_env(store, data_root)
    cmd = [sys.executable, str(REPO / "jobs" / f"{job}.py"), "--smoke-test", f"--name={experiment(job)}",
           f"--storage_path={store / 'ray'}", "--ray_address=local", *args]
    return subprocess.run(cmd, cwd=store, env=env, capture_output=True, text=True, timeout=900)


def study_runs(store: Path, experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.MlflowClient().search_runs([exp.experiment_id], max_results=1000)
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def artifacts(run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in mlflow.MlflowClient().list_artifacts(run_id, path):
        out |= artifacts(run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.fixture(scope="module")
def finished(smoke_campaign, campaign_root):
    """`finished(job)`: (the store where the smoke campaign ran the study, its data root)."""
    return lambda job: (smoke_campaign[0], campaign_root)


@pytest.mark.parametrize("job", list(JOBS))
def test_study_logs_one_child_per_variant_and_seed_and_the_comparison_in_the_parent(finished, job):
    store, _ = finished(job)
    trials, expected = JOBS[job]
    parents, children = study_runs(store, experiment(job))
    assert len(parents) == 1 and len(children) == trials
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["complete"] == "true"
    assert set(COMMON + expected) <= artifacts(parent.info.run_id)
    assert all(c.info.status == "FINISHED" and 0 <= c.data.metrics["test_acc"] <= 1 for c in children)
    assert all({"model/model.pt", "model/model.json"} <= artifacts(c.info.run_id) for c in children)
    names = {c.info.run_name for c in children}
    assert len(names) == trials and all("/seed" in n for n in names)
    results = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                                  artifact_path="results.json")).read_text())
    assert len(results) == trials and all(r["test_acc"] == pytest.approx(
        next(c.data.metrics["test_acc"] for c in children if c.info.run_id == r["run_id"])) for r in results)


@pytest.mark.parametrize("job", ["pipeline_study", "vanishing_gradients"])
def test_per_iteration_studies_log_every_step_with_gradient_magnitudes(finished, job):
    store, _ = finished(job)
    _, children = study_runs(store, experiment(job))
    client = mlflow.MlflowClient()
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "step.train_acc")]
        assert steps == list(range(1, 13))  # --steps=12 in the smoke test
        grads = client.get_metric_history(child.info.run_id, "step.grad_first")
        assert len(grads) == 12 and all(m.value >= 0 for m in grads)


def test_bn_study_records_the_bias_check_and_the_init(finished):
    job = "bn_study"
    store, _ = finished(job)
    parent = study_runs(store, experiment(job))[0][0]
    assert parent.data.metrics["a10a.max_abs_logit_diff"] < 1e-10
    assert parent.data.metrics["a10a.max_abs_bias_grad"] < 1e-10
    assert parent.data.params["variant.bn.init"].startswith("kaiming")


def test_running_a_finished_study_again_adds_no_runs(finished):
    job = "bn_study"
    store, data_root = finished(job)
    parents, children = study_runs(store, experiment(job))
    again = run_study(job, store, data_root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "complete already" in again.stdout
    after = study_runs(store, experiment(job))
    assert len(after[0]) == len(parents) and len(after[1]) == len(children)


@pytest.mark.parametrize("args, message", [
    (["--variants=[no_bn,nope]"], "unknown variant"),
    (["--search=optuna"], "search=grid"),
    (["--seeds=[]"], "seeds"),
])
def test_bad_study_options_fail_before_ray_starts(args, message, capsys):
    job = load_job("bn_study")
    with pytest.raises(SystemExit) as stopped:
        run_job(job.main, job.JobConfig, argv=args)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_notebook_rebuilds_a_study_from_mlflow(finished, monkeypatch):
    job = "vanishing_gradients"  # a study with per-iteration metrics
    store, _ = finished(job)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("STUDY_EXPERIMENT", experiment(job))  # the newest study of that experiment
    outputs, text = execute_notebook("study_report.ipynb")
    assert "a7" in text and "test_acc_mean" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4  # loss, accuracy, G first, G last
