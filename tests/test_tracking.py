import socket
import time
from pathlib import Path

import mlflow
import pytest
import torch

from library import model_store, tracking
from library.models import create_model
from library.train.recipe import TrainConfig


def test_default_store_is_local_and_absolute(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_a_run_records_config_provenance_metrics_and_figures(mlflow_store, tmp_path):
    tracking.connect()
    cfg = TrainConfig(model="improved_cnn", model_kw={"depth": 1, "widths": (8, 16)})
    with tracking.start_run("exp", run_name="r", config=cfg, tags={"study": "x"}) as run:
        tracking.log_epoch({"epoch": 1, "train_loss": 2.0, "val_acc": 0.3})
        tracking.log_epoch({"epoch": 2, "train_loss": 1.5, "val_acc": 0.4})
        from library.plots import training_curves_figure
        mlflow.log_figure(training_curves_figure([{"epoch": 1, "train_loss": 1.0}]), "curves.png")
    client = mlflow.MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.data.params["model"] == "improved_cnn" and got.data.params["model_kw.depth"] == "1"
    assert got.data.params["model_kw.widths"] == "[8, 16]" and got.data.params["lr"] == str(cfg.lr)
    assert got.data.tags["study"] == "x" and got.data.tags["version.torch"] == torch.__version__
    assert "git_sha" in got.data.tags
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")] == [(1, 2.0), (2, 1.5)]
    assert "epoch" not in got.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["curves.png"]
    # the store is one folder: artifacts beside the database
    assert Path(mlflow.get_experiment_by_name("exp").artifact_location.removeprefix("file://")) == tmp_path / "mlruns"
    # a model-training experiment, so MLflow 3's UI opens on its runs (not the GenAI traces page); one made
    # elsewhere gets the tag when a job first uses it
    assert mlflow.get_experiment_by_name("exp").tags["mlflow.experimentKind"] == "custom_model_development"
    client.create_experiment("made_elsewhere")
    tracking.experiment_id("made_elsewhere")
    assert mlflow.get_experiment_by_name("made_elsewhere").tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_logged_model_comes_back_identical(mlflow_store, tmp_path):
    tracking.connect()
    model = create_model("improved_cnn", widths=(8, 16), depth=1)
    with tracking.start_run("exp") as run:
        model_store.log_model(model, "improved_cnn", {"widths": (8, 16), "depth": 1}, local_dir=tmp_path / "keep")
    assert (tmp_path / "keep" / "model.pt").is_file() and (tmp_path / "keep" / "model.json").is_file()
    back = model_store.load_model(run.info.run_id)
    x = torch.rand(2, 3, 32, 32)
    model.eval(), back.eval()
    assert torch.equal(model(x), back(x))


def test_an_unreachable_server_fails_fast_and_clearly(monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(tracking.TrackingUnavailableError, match=f"127.0.0.1:{port} does not answer.*unset"):
        tracking.connect()
    assert time.perf_counter() - start < 15


def test_an_unwritable_store_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(tracking.TrackingUnavailableError, match="cannot create"):
        tracking.connect(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")


def test_a_default_store_inside_rays_temporary_working_dir_is_warned_about(monkeypatch, tmp_path):
    job_dir = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    job_dir.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(job_dir)
    with pytest.warns(UserWarning, match="deleted after the job"):
        tracking.tracking_uri()


def test_a_new_store_opens_while_the_job_starts_and_is_whole_when_the_job_exits_at_once(tmp_path):
    """connect() builds a new sqlite store's tables in a thread; a job that fails right after (a bad data root,
    say) must not leave them half made, and a first use from the job meanwhile waits for them."""
    import subprocess
    import sys

    first = tmp_path / "exits.db"
    code = f"import sys; from library import tracking; tracking.connect('sqlite:///{first}'); sys.exit(3)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 3
    client = mlflow.MlflowClient(f"sqlite:///{first}")
    assert [e.name for e in client.search_experiments()] == ["Default"]  # raises on an out-of-date schema

    second = tmp_path / "used.db"
    code = (f"from library import tracking; tracking.connect('sqlite:///{second}'); "
            "print(tracking.experiment_id('at-once'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr[-2000:]
