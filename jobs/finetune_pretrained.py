"""Fine-tuning a pretrained backbone against training the same architecture from scratch on the same data (C5):
two Ray tasks side by side, then a top-1 / top-5 table.

    python jobs/finetune_pretrained.py                          # EfficientNet-Lite0 on Oxford-IIIT Pet
    python jobs/finetune_pretrained.py --backbone=resnet50 --epochs=10
    python jobs/finetune_pretrained.py --smoke-test

MLflow: a parent run with finetune_vs_scratch.csv (test top-1, top-5, training time) and one child run per arm
with its training loss per epoch.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402

from library import tracking  # noqa: E402
from library.pretrained.backbones import LITE0, BackboneSpec, create_backbone  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.pretrained.features import FeatureOptions, load_photos  # noqa: E402
from library.pretrained.finetune import FinetuneConfig, finetune  # noqa: E402
from library.cluster import ray_init, remote_task  # noqa: E402


@dataclass(frozen=True)
class JobConfig(FinetuneConfig):
    backbone: str = LITE0  # a timm name with pretrained weights (optionally @weights)
    data_root: str = ""  # default: $CV_DATA_ROOT, else ~/.cache/cv-campaigns/data
    limit: int = 0  # N evenly spaced images per split (quick runs); 0 = all
    cpus_per_task: float = 1.0  # Ray CPUs each task reserves; its torch threads follow them
    gpus_per_task: float = 1.0  # only when the cluster has GPUs
    ray_address: str = ""  # default: $RAY_ADDRESS, else a running cluster on this machine, else a new local Ray
    experiment: str = "finetune_vs_scratch"  # MLflow experiment
    smoke_test: bool = False


SMOKE = {"backbone": "resnet18@none", "limit": 12, "epochs": 1, "batch_size": 4, "workers": 0,
         "experiment": "finetune_smoke"}


def arm(spec: BackboneSpec, pretrained: bool, train, test, cfg: FinetuneConfig) -> dict:
    """One Ray task: the backbone with its weights (or random ones), fine-tuned and tested."""
    backbone = spec.load() if pretrained else create_backbone(spec.name, weights="none")
    return finetune(backbone, train, test, cfg, pretrained)


def main(cfg: JobConfig) -> dict:
    import ray

    spec = BackboneSpec.parse(cfg.backbone)
    train, test = load_photos(FeatureOptions(backbones=(cfg.backbone,), data_root=cfg.data_root, limit=cfg.limit))
    uri = tracking.connect()
    ray_init(cfg.ray_address)
    task = remote_task(arm, cfg.cpus_per_task, cfg.gpus_per_task)
    train_cfg = FinetuneConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(FinetuneConfig)})
    arms = {"pretrained": True, "scratch": False}
    refs = {name: task.remote(spec, pretrained, train, test, train_cfg) for name, pretrained in arms.items()}
    with tracking.start_run(cfg.experiment, run_name=f"finetune {spec.name}", config=cfg) as parent:
        rows, client = [], mlflow.MlflowClient()
        for name, ref in refs.items():
            result = ray.get(ref)
            child = tracking.create_child_run(parent, name)
            tracking.log_rows(child, result["history"], "epoch")
            for key, value in result["test"].items():
                client.log_metric(child, f"test_{key}", value)
            client.set_terminated(child)
            rows.append({"arm": name, "weights": spec.weights if arms[name] else "none", **result["test"],
                         "train_s": result["train_s"], "epochs": cfg.epochs})
            mlflow.log_metrics({f"{name}.test_{k}": v for k, v in result["test"].items()})
            print(f"{name}: test top-1 {result['test']['top1']:.4f}, top-5 {result['test']['top5']:.4f} "
                  f"({result['train_s']:.0f} s of training)")
        table = pd.DataFrame(rows)
        mlflow.log_text(table.to_csv(index=False), "finetune_vs_scratch.csv")
        mlflow.log_dict(json.loads(table.to_json(orient="records")), "finetune_vs_scratch.json")
    print(f"MLflow run {parent.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    return {"arms": rows}


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
