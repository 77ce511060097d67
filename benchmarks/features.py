"""Feature extraction throughput, and the linear-probe job's wall time with cached features against a first run.

    CV_DATA_ROOT=~/.cache/shared-data python benchmarks/features.py [--backbone=...] [--images=128] [--rounds=3]

(1) images/s of `library.pretrained.features.extract` (decode + timm eval transform + forward + pool + L2-normalise) on
Oxford-IIIT Pet test images, in this process, interleaved rounds, median. (2) `jobs/linear_probe.py` run as a user
runs it, twice against a fresh cache directory: the first run extracts (Ray tasks), the second finds every
feature in the cache. Goal: second / first ≤ 0.05.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import dataclass  # noqa: E402

from benchmarks.common import device_name, interleave, save  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config as BaseConfig  # noqa: E402
from library.data.photos import load_pets  # noqa: E402
from library.pretrained.backbones import LITE0, BackboneSpec  # noqa: E402
from library.pretrained.features import extract  # noqa: E402
from library.runtime import pick_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def probe_job_seconds(backbone: str, cache: Path, store: Path) -> float:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}", HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "jobs" / "linear_probe.py"), f"--backbones=[{backbone}]",
                    f"--cache_dir={cache}", "--ray_address=local", "--shards=2"], cwd=store, env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Config(BaseConfig):
    backbone: str = LITE0  # a timm name, optionally @weights
    images: int = 128  # Pets test images per timed extraction round
    batch_size: int = 32
    rounds: int = 3  # timed extraction rounds after one warm-up


def main(args: Config) -> None:
    device = pick_device("auto")
    backbone = BackboneSpec.parse(args.backbone).load()
    photos = load_pets(None, "test")
    n = min(args.images, len(photos))
    speed = interleave({"extract": lambda: len(extract(backbone, photos, range(n), args.batch_size)[1])}, device,
                       args.rounds)["extract"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        first = probe_job_seconds(args.backbone, tmp / "cache", tmp)
        second = probe_job_seconds(args.backbone, tmp / "cache", tmp)
    result = {"device": device_name(device), "backbone": args.backbone, "torch_threads": torch.get_num_threads(),
              "extraction": {"images": n, "batch_size": args.batch_size, **speed},
              "probe_job": {"first_run_s": round(first, 1), "cached_rerun_s": round(second, 1),
                            "ratio": round(second / first, 3), "goal": 0.05,
                            "data": f"oxford-iiit-pet trainval+test ({len(load_pets(None, 'trainval'))}+{len(photos)})"}}
    print(f"{device_name(device)}: extraction {speed['images_per_s']:.1f} images/s; probe job {first:.1f} s first, "
          f"{second:.1f} s with cached features (ratio {second / first:.3f})")
    print(f"wrote {save('features', result)}")


if __name__ == "__main__":
    run_job(main, Config)
