"""C5: the fine-tune-vs-scratch job end to end on tiny Oxford-IIIT Pet (real local Ray, real MLflow store)."""
import subprocess
import sys

import mlflow
import pytest

from conftest import REPO, job_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_finetune_job_compares_pretrained_and_scratch(tmp_path, pets_root):
    env = job_env(tmp_path, pets_root)
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "finetune_pretrained.py"), "--smoke-test",
                          "--ray_address=local"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["finetune_smoke"])
    assert sorted(runs["tags.mlflow.runName"]) == ["finetune resnet18", "pretrained", "scratch"]
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert 0 <= parent["metrics.pretrained.test_top1"] <= parent["metrics.pretrained.test_top5"] <= 1
    assert "finetune_vs_scratch.csv" in {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"])}
