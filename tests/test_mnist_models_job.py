"""jobs/train_mnist_models.py end to end: models A and B trained as Ray tasks (a real local Ray, as a user runs
the job), logged to a real MLflow store, registered, and loaded back by name."""
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import REPO, job_env, new_store
from library import model_store
from library.data.options import DataOptions, load_data
from library.train.evaluation import evaluate

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def run_job(store, data_root, *args):
    env = job_env(store)
    return subprocess.run([sys.executable, str(REPO / "jobs" / "train_mnist_models.py"), "--smoke-test",
                           f"--data_root={data_root}", "--val_size=50", "--ray_address=local", *args],
                          cwd=store, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_root):
    store = tmp_path_factory.mktemp("mnist_models")
    out = run_job(store, mnist_root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    return store, out


def test_both_models_are_logged_and_registered(trained):
    store, out = trained
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("mnist_models")
    runs = {r.data.params["model"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"mnist_a", "mnist_b"}
    assert runs["mnist_a"].data.params["seed"] != runs["mnist_b"].data.params["seed"]  # independently trained
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
        assert "test_acc" in run.data.metrics
        assert model_store.registered_run(name) == run.info.run_id
        assert f"registered as '{name}' version 1" in out.stdout


def test_a_registered_model_loads_by_name_with_its_logged_accuracy(trained, mnist_root):
    # the test split exactly as the job's --smoke-test saw it
    data = load_data(DataOptions(dataset="mnist", data_root=str(mnist_root), val_size=50, train_size=512, test_size=256))
    for name in ("mnist_a", "mnist_b"):
        model = model_store.load_registered_model(name)
        assert not model.training
        logged = mlflow.MlflowClient().get_run(model_store.registered_run(name)).data.metrics["test_acc"]
        assert evaluate(model, data.test)["acc"] == pytest.approx(logged)


def test_an_unregistered_name_says_how_to_make_it(trained):
    with pytest.raises(model_store.ModelNotRegisteredError, match="no model registered as 'mnist_c'.*train_mnist_models"):
        model_store.load_registered_model("mnist_c")


def test_an_unknown_model_fails_before_ray_starts(tmp_path, mnist_root):
    store = new_store(tmp_path) / "mlflow.db"
    before = store.read_bytes(), store.stat().st_mtime_ns
    out = run_job(tmp_path, mnist_root, "--models=[mnist_a,mnsit_b]")
    assert out.returncode == 2 and "unknown model 'mnsit_b'" in out.stderr
    assert (store.read_bytes(), store.stat().st_mtime_ns) == before  # nothing written to the store


@pytest.mark.parametrize("search", ["ascending", "bisect"])
def test_eps_sweep_attacks_the_registered_models_with_robust_flags(trained, mnist_root, search):
    store, _ = trained
    env = job_env(store)
    experiment = f"eps_sweep_smoke_{search}"
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "eps_sweep.py"), "--smoke-test",
                          "--models=[registered:mnist_a,registered:mnist_b:1]", f"--data_root={mnist_root}",
                          "--eps_255=[4,8,16,32]", "--ray_address=local", f"--search={search}",
                          f"--experiment={experiment}", f"--pgd_table={search == 'ascending'}"],
                         cwd=store, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "D7, at ε = 8/255 and 16/255" in out.stdout
    run = mlflow.search_runs(experiment_names=[experiment]).iloc[0]
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])} | {
        a.path for a in client.list_artifacts(run["run_id"], "curves")}
    assert {"sweep.json", "sweep.csv", "d7_eps8_eps16.csv"} <= artifacts
    assert ("pgd_table.csv" in artifacts) == ("D11" in out.stdout) == (search == "ascending")
    assert sum(p.startswith("curves/") for p in artifacts) == 2
    logged = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="sweep.json")).read_text())
    table = pd.DataFrame(logged["data"], columns=logged["columns"])  # MLflow's table format
    for (_, _), group in table.groupby(["model", "attack"]):
        robust = group.sort_values("eps")["robust_acc"].tolist()
        assert robust == sorted(robust, reverse=True)  # the robust flags make every curve monotone
        assert (group["robust_acc_low"] <= group["robust_acc"]).all() and (group["robust_acc"] <= group["robust_acc_high"]).all()
