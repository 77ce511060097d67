"""Training throughput of registry models on real CIFAR-10: images/s of `library.train.loop.train`'s own loop.

Each timed round trains one epoch on a fixed sample of the training split (forward, backward, optimiser step,
on-device augmentation; evaluation excluded); models are interleaved round by round.

    python benchmarks/train_throughput.py [--models='("mish_cnn", "resnet_cifar")'] [--images=2048] [--rounds=3]
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_name, save, summarize  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config as BaseConfig  # noqa: E402
from library.data import load_cifar10  # noqa: E402
from library.runtime import pick_device  # noqa: E402
from library.train.loop import train  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402


@dataclass(frozen=True)
class Config(BaseConfig):
    models: tuple[str, ...] = ("mish_cnn", "resnet_cifar")  # A1 and A9
    data_root: str = ""  # default: $CV_DATA_ROOT
    images: int = 2048  # training images per timed round
    batch_size: int = 256  # images per step
    rounds: int = 3  # timed rounds per model, interleaved, after one warm-up round each
    device: str = "auto"


def main(cfg: Config) -> dict:
    device = pick_device(cfg.device)
    data = load_cifar10(cfg.data_root or None, val_size=0).limit(train=cfg.images)
    samples: dict[str, list[float]] = {m: [] for m in cfg.models}
    for round_ in range(cfg.rounds + 1):
        for model in cfg.models:
            run = TrainConfig(model=model, epochs=1, batch_size=cfg.batch_size, device=cfg.device, seed=round_)
            speed = train(run, data).history[0]["images_per_s"]
            if round_ > 0:  # round 0 warms up allocators and kernels
                samples[model].append(speed)
    results = summarize(samples)
    result = {"benchmark": "train_throughput", "device": device_name(device), "config": vars(cfg), "results": results}
    for model, r in results.items():
        print(f"{model:<16} {r['images_per_s']:>8.0f} training images/s  (samples {r['samples']})")
    print(f"on {result['device']}; saved {save('train_throughput', result)}")
    return result


if __name__ == "__main__":
    run_job(main, Config)
