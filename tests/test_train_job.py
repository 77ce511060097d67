"""jobs/train_cnn.py end to end: tiny CIFAR-10 in the real layout, a real local MLflow store."""
import json
import os
import subprocess
import sys

import mlflow
import pytest

from conftest import REPO, load_job, staged_copy_ok
from library.cli import parse_job_config


@pytest.fixture(scope="module")
def job():
    return load_job("train_cnn")


def test_smoke_run_records_everything_in_mlflow(job, cifar_root, mlflow_store, tmp_path):
    cfg = parse_job_config(job.JobConfig, ["--smoke-test", f"--data_root={cifar_root}", "--val_size=50",
                                           "--model=mish_cnn_bn"], job.SMOKE)
    with staged_copy_ok():
        summary = job.main(cfg)
    client = mlflow.MlflowClient()
    run = client.get_run(summary["run_id"])
    params, metrics = run.data.params, run.data.metrics
    assert params["model"] == "mish_cnn_bn" and params["epochs"] == "2" and params["smoke_test"] == "True"
    assert params["data.verified"] == "False" and params["data.val_images"] == "50"
    assert params["model.init"].startswith("kaiming_normal")
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "images_per_s", "epoch_s", "test_acc", "test_loss"} <= set(metrics)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert len(client.get_metric_history(run.info.run_id, "test_acc")) == 1  # the test set is touched once
    assert metrics["test_acc"] == pytest.approx(summary["test_acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_curves.png", "first_layer_filters.png", "history.json", "model"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/model.json", "model/model.pt"}
    spec = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                               artifact_path="model/model.json")).read())
    assert spec["model"] == "mish_cnn_bn" and spec["model_kw"]["num_classes"] == 10
    assert (tmp_path / "outputs" / run.info.run_id / "model.pt").is_file()  # the local copy


def _run_job(*args, cwd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, str(REPO / "jobs" / "train_cnn.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_bad_key_fails_before_any_work(tmp_path):
    out = _run_job("--smoke-test", "--learning_rate=0.1", cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown config key 'learning_rate'" in out.stderr and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())  # no store, no outputs


def test_missing_data_fails_with_the_files_to_stage(tmp_path):
    # an empty data root and a download that cannot succeed (nothing listens on port 9)
    out = _run_job("--smoke-test", f"--data_root={tmp_path / 'empty'}", cwd=tmp_path,
                   env_extra={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                              "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"})
    assert out.returncode == 2, out.stderr
    assert "CIFAR-10 is not in the data root" in out.stderr and "data_batch_1" in out.stderr
    assert "Traceback" not in out.stderr


def test_scratch_cnn_on_mnist_records_curves_and_filters(job, mnist_root, mlflow_store):
    """B2's route: the scratch-layer CNN through the same job, on MNIST in torchvision's raw layout."""
    cfg = parse_job_config(job.JobConfig, ["--smoke-test", f"--data_root={mnist_root}", "--dataset=mnist",
                                           "--model=scratch_cnn", "--crop=none", "--flip=false", "--val_size=50", "--batch_size=16"],
                           job.SMOKE)
    summary = job.main(cfg)
    client = mlflow.MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.data.params["model"] == "scratch_cnn" and run.data.params["dataset"] == "mnist"
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_curves.png", "first_layer_filters.png", "history.json", "model"} <= artifacts
    assert summary["val_acc"] > 0.2  # the synthetic digits are easy: two epochs beat chance (0.1) clearly
