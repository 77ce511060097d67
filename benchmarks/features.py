"""Feature extraction against the plain loop a user would write, and the linear-probe job re-run on cached features.

    CV_DATA_ROOT=~/.cache/shared-data python benchmarks/features.py [--images=128] [--rounds=3] [--full_size=true]

(1) Extraction on Oxford-IIIT Pet test images, interleaved rounds, medians, in images per wall second and per
CPU second (this process and its DataLoader workers): the project's `library.pretrained.features.extract` (what
each shard task runs) against the plain loop: PIL decode and timm's eval transform in a 2-worker `DataLoader`,
the same `tf_efficientnet_lite0` with its classifier removed (`num_classes=0`) under `inference_mode`, L2-normalised.
Both get the same weights and must give the same features. Goal: project / plain ≥ 0.9 on both measures.
(2) `jobs/linear_probe.py` run as a user runs it, twice against a fresh cache: the first run extracts (Ray tasks),
the second finds every feature cached. On the data root's Pets, and with --full_size on a synthetic Pets of the
real count and size (37 breeds, 3,680 trainval + 3,669 test JPEGs of 500×375). Goal: second / first ≤ 0.05.
"""
from __future__ import annotations

import copy
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_name, save  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config as BaseConfig  # noqa: E402
from library.data.photos import load_pets  # noqa: E402
from library.data.storage import data_root  # noqa: E402
from library.pretrained.backbones import LITE0, BackboneSpec  # noqa: E402
from library.pretrained.features import extract  # noqa: E402
from library.runtime import pick_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FULL_PETS = {"trainval": 3680, "test": 3669, "breeds": 37, "size": (500, 375)}  # Oxford-IIIT Pet's own counts


@dataclass(frozen=True)
class Config(BaseConfig):
    backbone: str = LITE0  # a timm name, optionally @weights
    images: int = 128  # Pets test images per timed extraction round
    batch_size: int = 32
    rounds: int = 3  # timed rounds per contender, interleaved, after one warm-up each
    full_size: bool = False  # also time the probe job on a synthetic Pets of the real count and size
    probe: bool = True  # time the probe job at all


class PlainDataset(torch.utils.data.Dataset):
    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def plain_loop(model: torch.nn.Module, transform, photos, n: int, batch_size: int) -> np.ndarray:
    """The contender: what a user writes from timm's and PyTorch's documentation."""
    loader = torch.utils.data.DataLoader(PlainDataset(photos.paths[:n], photos.labels[:n], transform),
                                         batch_size=batch_size, num_workers=2)
    out = []
    with torch.inference_mode():
        for x, _ in loader:
            out.append(F.normalize(model(x), dim=1))
    return torch.cat(out).numpy()


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the DataLoader's workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def race(contenders: dict, n: int, rounds: int) -> dict[str, dict]:
    """Warm-up, then `rounds` interleaved rounds; per contender the median images per wall and per CPU second."""
    for fn in contenders.values():
        fn()
    samples = {name: {"wall": [], "cpu": []} for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            wall, cpu = time.perf_counter(), cpu_seconds()
            fn()
            samples[name]["wall"].append(n / (time.perf_counter() - wall))
            samples[name]["cpu"].append(n / (cpu_seconds() - cpu))
    return {name: {"images_per_s": round(statistics.median(s["wall"]), 2),
                   "images_per_cpu_s": round(statistics.median(s["cpu"]), 2),
                   "samples": {k: [round(v, 2) for v in vs] for k, vs in s.items()}} for name, s in samples.items()}


def write_synthetic_pets(root: Path) -> Path:
    """Oxford-IIIT Pet's layout at its real size: JPEGs of textured noise, 37 breeds, torchvision's split files."""
    from PIL import Image

    images, notes = root / "oxford-iiit-pet" / "images", root / "oxford-iiit-pet" / "annotations"
    images.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = FULL_PETS["size"]
    base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for split in ("trainval", "test"):
        for i in range(FULL_PETS[split]):
            breed = i % FULL_PETS["breeds"]
            name = f"{'Breed' if breed < 12 else 'breed'}{breed:02d}_{split}{i}"  # capitals: cats, as in Pets
            coarse = np.roll(base, (breed * 3, i % 50), axis=(0, 1)).repeat(8, 0).repeat(8, 1)
            pixels = np.clip(coarse + rng.normal(0, 12, coarse.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(images / f"{name}.jpg", quality=90)
            lines[split].append(f"{name} {breed + 1} {1 if breed < 12 else 2} {breed + 1}")
    for split, rows in lines.items():
        (notes / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def probe_job_seconds(backbone: str, data_root: Path, cache: Path, store: Path) -> float:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}", HF_HUB_OFFLINE="1",
               CV_DATA_ROOT=str(data_root))
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "jobs" / "linear_probe.py"), f"--backbones=[{backbone}]",
                    f"--cache_dir={cache}", "--ray_address=local"], cwd=store, env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def probe_twice(backbone: str, data_root: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        first = probe_job_seconds(backbone, data_root, Path(tmp) / "cache", Path(tmp))
        second = probe_job_seconds(backbone, data_root, Path(tmp) / "cache", Path(tmp))
    images = len(load_pets(data_root, "trainval")) + len(load_pets(data_root, "test"))
    print(f"probe job on {images} images: {first:.1f} s first, {second:.1f} s with cached features "
          f"(ratio {second / first:.3f}, goal <= 0.05)", flush=True)
    return {"images": images, "first_run_s": round(first, 1), "cached_rerun_s": round(second, 1),
            "ratio": round(second / first, 4), "goal": 0.05}


def main(args: Config) -> dict:
    import timm.data

    device = pick_device("auto")
    backbone = BackboneSpec.parse(args.backbone).load()
    photos = load_pets(None, "test")
    n = min(args.images, len(photos))
    plain_model = copy.deepcopy(backbone.model).eval()
    plain_model.reset_classifier(0)  # timm's num_classes=0: the model returns its pooled features
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(plain_model), is_training=False)
    ours = extract(backbone, photos, range(n), args.batch_size)[0]
    theirs = plain_loop(plain_model, transform, photos, n, args.batch_size)
    difference = float(np.abs(ours - theirs).max())
    speed = race({"project": lambda: extract(backbone, photos, range(n), args.batch_size),
                  "plain_loop": lambda: plain_loop(plain_model, transform, photos, n, args.batch_size)},
                 n, args.rounds)
    ratios = {k: round(speed["project"][k] / speed["plain_loop"][k], 3) for k in ("images_per_s", "images_per_cpu_s")}
    print(f"extraction of {n} images: project {speed['project']['images_per_s']} images/s "
          f"({speed['project']['images_per_cpu_s']} per CPU-s), plain loop {speed['plain_loop']['images_per_s']} "
          f"({speed['plain_loop']['images_per_cpu_s']}); project / plain {ratios} (goal >= 0.9); "
          f"largest feature difference {difference:.2e}", flush=True)
    result = {"device": device_name(device), "backbone": args.backbone, "torch_threads": torch.get_num_threads(),
              "extraction": {"images": n, "batch_size": args.batch_size, **speed, "project_over_plain": ratios,
                             "max_feature_difference": difference, "goal": ">= 0.9"}}
    if args.probe:
        result["probe_job"] = {"sample": probe_twice(args.backbone, data_root())}
        if args.full_size:
            with tempfile.TemporaryDirectory() as tmp:
                result["probe_job"]["full_size_synthetic"] = probe_twice(args.backbone, write_synthetic_pets(Path(tmp)))
    print(f"wrote {save('features', result)}")
    return result


if __name__ == "__main__":
    run_job(main, Config)
