"""The per-image attack job (D1, D2, D7, D8, D9) and the transfer job (D3, D4) end to end with --smoke-test, and the
D2 transformations."""
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO, job_env
from library.adversarial.transforms import D2_TRANSFORMS, crop80, rotate30


def run(job: str, store, *args, data_root=None):
    env = job_env(store, data_root)
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), "--smoke-test", *args], cwd=store,
                          env=env, capture_output=True, text=True, timeout=600)


def artifacts(run_id):
    return {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}


def test_transforms_keep_shape_and_range_and_sample_with_a_generator():
    x = torch.rand(2, 3, 64, 64)
    g = torch.Generator().manual_seed(0)
    for transform in D2_TRANSFORMS.values():
        out = transform(x, g)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(D2_TRANSFORMS["flip"](D2_TRANSFORMS["flip"](x)), x)
    assert not torch.equal(crop80(x, torch.Generator().manual_seed(1)), crop80(x, torch.Generator().manual_seed(2)))
    assert torch.allclose(rotate30(x, None, degrees=0.0), x, atol=1e-5)


@pytest.mark.ray
@pytest.mark.slow
def test_attack_images_job_logs_the_figures_and_the_transform_table(tmp_path):
    corgi = tmp_path / "start.png"  # D8's start and D9's image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(corgi)
    out = run("attack_images", tmp_path, f"--start={corgi}", "--ray_address=local", "--labels=[945]")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_row = mlflow.search_runs(experiment_names=["attack_images_smoke"]).iloc[0]
    assert {"d1_probability_ascent.png", "d7_momentum_margin.png", "d2_eot_momentum_margin.png", "d2_transforms.csv",
            "d2_survival.csv", "d8_class_maximisation.png", "d9_feature_inversion.png",
            "clean_top1.csv"} <= artifacts(run_row["run_id"])
    assert run_row["metrics.clean_correct"] in (0.0, 1.0) and "clean predictions: smoke_gradient.png" in out.stdout
    assert 0 <= run_row["metrics.d1_probability_ascent.success_rate"] <= 1
    assert all(run_row[f"metrics.d9.{stage}.relative_distance"] >= 0 for stage in ("early", "middle", "late"))


@pytest.mark.ray
@pytest.mark.slow
def _trained_models(store, data_root) -> list[str]:
    """Two small CIFAR models trained for a few steps and logged into runs of the test's store, as `run:` specs:
    random-init models classify none of the synthetic test images correctly, leaving D3 nothing to attack."""
    from library import model_store, tracking
    from library.data import load_cifar10
    from library.train.loop import train
    from library.train.recipe import TrainConfig, model_options

    data = load_cifar10(data_root, val_size=50)
    tracking.connect(f"sqlite:///{store / 'mlflow.db'}")
    specs = []
    for name in ("mish_cnn", "mish_cnn_bn"):
        cfg = TrainConfig(model=name, epochs=3, batch_size=32, warmup_epochs=0.5, crop="none", flip=False)
        model = train(cfg, data).model
        with tracking.start_run("transfer_sources", run_name=name) as run:
            model_store.log_model(model, name, model_options(cfg, data))
        specs.append(f"run:{run.info.run_id}")
    return specs


def test_transfer_job_logs_the_pairs_and_the_matrix(tmp_path, cifar_root):
    specs = _trained_models(tmp_path, cifar_root)
    out = run("transfer_attack", tmp_path, "--ray_address=local", "--val_size=50", f"--models=[{','.join(specs)}]",
              "--step_255=8", data_root=cifar_root)  # 5 steps of 8/255: enough to fool the small models
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "D4: accuracy of each model" in out.stdout and "nothing to attack" not in out.stdout
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_row = mlflow.search_runs(experiment_names=["transfer_attack_smoke"]).iloc[0]
    logged = artifacts(run_row["run_id"])
    assert {"transfer_matrix.csv", "transfer_matrix.png", "d3_0.png", "d3_1.png"} <= logged  # a figure per source
    matrix = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_row["run_id"],
                                                             artifact_path="transfer_matrix.csv"), index_col=0)
    assert matrix.shape == (2, 2) and matrix.notna().all().all()
    assert (matrix.values.diagonal() < 1).all()  # each source's own images fool it, at least partly


def test_transfer_job_needs_two_models(tmp_path):
    out = run("transfer_attack", tmp_path, "--models=[init:mish_cnn]")
    assert out.returncode == 2 and "at least two" in out.stderr


def test_gradient_images_job_puts_each_model_in_a_row(tmp_path, cifar_root):
    out = run("gradient_images", tmp_path, data_root=cifar_root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = mlflow.search_runs(experiment_names=["gradient_images_smoke"]).iloc[0]["run_id"]
    assert {"d8_class_maximisation.png", "d9_feature_inversion.png", "gradient_images.csv"} <= artifacts(run_id)
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="gradient_images.csv"))
    assert set(table["model"]) == {"init:mish_cnn", "init:mish_cnn_bn"}
    for _, rows in table.groupby("model"):  # 2 classes maximised, 3 layers inverted
        assert dict(rows["measure"].value_counts()) == {"probability": 2, "relative_distance": 3, "pixel_rmse": 3}


def test_gradient_images_job_rejects_a_class_the_data_lacks(tmp_path, cifar_root):
    out = run("gradient_images", tmp_path, "--maximise=[3,12]", data_root=cifar_root)
    assert out.returncode == 2 and "[12] are not classes" in out.stderr
