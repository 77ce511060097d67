"""jobs/train_mnist_models.py end to end: models A and B trained as Ray tasks (a real local Ray, as a user runs
the job), logged to a real MLflow store, registered, and loaded back by name."""
import os
import subprocess
import sys

import mlflow
import pytest

from conftest import REPO
from library import tracking
from library.data.options import DataOptions, load_data
from library.training import evaluate

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def run_job(store, data_root, *args):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "PYTHONWARNINGS": "ignore"}
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
        assert tracking.registered_run(name) == run.info.run_id
        assert f"registered as '{name}' version 1" in out.stdout


def test_a_registered_model_loads_by_name_with_its_logged_accuracy(trained, mnist_root):
    # the test split exactly as the job's --smoke-test saw it
    data = load_data(DataOptions(dataset="mnist", data_root=str(mnist_root), val_size=50, train_size=512, test_size=256))
    for name in ("mnist_a", "mnist_b"):
        model = tracking.load_registered_model(name)
        assert not model.training
        logged = mlflow.MlflowClient().get_run(tracking.registered_run(name)).data.metrics["test_acc"]
        assert evaluate(model, data.test)["acc"] == pytest.approx(logged)


def test_an_unregistered_name_says_how_to_make_it(trained):
    with pytest.raises(tracking.ModelNotRegisteredError, match="no model registered as 'mnist_c'.*train_mnist_models"):
        tracking.load_registered_model("mnist_c")


def test_an_unknown_model_fails_before_ray_starts(tmp_path, mnist_root):
    out = run_job(tmp_path, mnist_root, "--models=[mnist_a,mnsit_b]")
    assert out.returncode == 2 and "unknown model 'mnsit_b'" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()
