"""Training throughput of registry models on real CIFAR-10: images/s of `library.train.loop.train`'s own loop.

Each timed round trains one epoch on a fixed sample of the training split (forward, backward, optimiser step,
on-device augmentation; evaluation excluded); models are interleaved round by round.

    python benchmarks/train_throughput.py [--models='("mish_cnn", "resnet_cifar")'] [--images=2048] [--rounds=3]
        [--threads=[auto]] [--loads=[0]]

`--threads` compares fixed torch thread counts with "auto" (the loader's governor, `runtime.CoreShare`);
`--loads` runs them beside that many processes spinning on a core each (a machine shared with another job).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import busy_cores, device_name, save, summarize, threads  # noqa: E402
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
    threads: tuple[str, ...] = ("auto",)  # torch threads: fixed counts, or auto (the loader's governor)
    loads: tuple[int, ...] = (0,)  # other busy processes during the measurement
    device: str = "auto"


def main(cfg: Config) -> dict:
    device = pick_device(cfg.device)
    data = load_cifar10(cfg.data_root or None, val_size=0).limit(train=cfg.images)
    default_threads = torch.get_num_threads()
    results = {}
    for load in cfg.loads:
        names = [f"{m}@{t}" for m in cfg.models for t in cfg.threads]
        samples: dict[str, list[float]] = {n: [] for n in names}
        with busy_cores(load):
            for round_ in range(cfg.rounds + 1):
                for name in names:
                    model, count = name.split("@")
                    torch.set_num_threads(default_threads)  # what a fresh job starts with
                    run = TrainConfig(model=model, epochs=1, batch_size=cfg.batch_size, device=cfg.device, seed=round_)
                    with threads(count):
                        speed = train(run, data).history[0]["images_per_s"]
                    if round_ > 0:  # round 0 warms up allocators and kernels
                        samples[name].append(speed)
        results[f"busy_{load}"] = summarize(samples)
        for name, r in results[f"busy_{load}"].items():
            print(f"{load} busy core(s)  {name:<20} {r['images_per_s']:>8.0f} training images/s  "
                  f"(samples {r['samples']})", flush=True)
    result = {"benchmark": "train_throughput", "device": device_name(device), "config": vars(cfg), "results": results}
    print(f"on {result['device']}; saved {save('train_throughput', result)}")
    return result


if __name__ == "__main__":
    run_job(main, Config)
