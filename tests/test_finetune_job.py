"""C5: the fine-tune-vs-scratch job end to end on tiny Oxford-IIIT Pet, as the smoke campaign ran it
(`finetune_pretrained.py --smoke-test`, the very command a user types, on the campaign's local Ray, into a real
MLflow store): these tests read the runs it left rather than running the job again."""
import mlflow
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_finetune_job_compares_pretrained_and_scratch(smoke_campaign):
    store = smoke_campaign[0]
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["campaign_smoke.finetune"])
    assert sorted(runs["tags.mlflow.runName"]) == ["finetune resnet18", "pretrained", "scratch"]
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert 0 <= parent["metrics.pretrained.test_top1"] <= parent["metrics.pretrained.test_top5"] <= 1
    assert "finetune_vs_scratch.csv" in {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"])}
