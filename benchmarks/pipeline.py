"""Input pipeline: our on-device tensor loader vs torchvision's PIL transforms in a DataLoader, same augmentation.

Both produce float [0, 1] batches of 256 augmented CIFAR-10 training images (zero-pad 4 + random 32×32 crop,
random horizontal flip), shuffled; normalisation is left to the model in both. Each timed call is one full
epoch over the 45k training images. Ours runs at each of `--threads` (a fixed torch thread count, or "auto": the
loader's governor, `runtime.CoreShare`, here measuring every second instead of every 5 s so that its short
epochs see the steady state), on an idle machine and beside `--loads` processes spinning on a core each (a
machine shared with another job). Goal: ≥ 10× the DataLoader in every case.

    python benchmarks/pipeline.py [--data_root=DIR] [--rounds=5] [--workers=2] [--threads=[1,2,auto]] [--loads=[0,1]]
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from benchmarks.common import busy_cores, device_name, interleave, save, threads  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config as BaseConfig  # noqa: E402
from library.data import Augment, DeviceLoader, load_cifar10  # noqa: E402
from library.runtime import pick_device  # noqa: E402


@dataclass(frozen=True)
class Config(BaseConfig):
    data_root: str = ""  # default: $CV_DATA_ROOT
    batch_size: int = 256  # images per batch
    rounds: int = 5  # timed epochs per contender, interleaved
    workers: int = 2  # DataLoader worker processes (this machine has 2 cores)
    threads: tuple[str, ...] = ("1", "2", "auto")  # our loader's torch threads (on the CPU)
    loads: tuple[int, ...] = (0, 1)  # other busy processes during the measurement
    device: str = "auto"


class PILCifar(Dataset):
    """What torchvision's CIFAR10.__getitem__ does: an H×W×C uint8 array -> PIL image -> transforms."""

    def __init__(self, images_hwc, labels, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def epochs(loader, device: torch.device, to_device: bool):
    def go() -> int:
        n = 0
        for x, y in loader:
            if to_device:
                x = x.to(device, non_blocking=True)
            n += len(x)
        return n
    return go


def ours_at(count: str, train, cfg: Config, device: torch.device):
    """Our loader at a fixed thread count or under its governor; warmed up for 3 s (the governor settles)."""
    with threads(count):
        loader = DeviceLoader(train.to(device), cfg.batch_size, shuffle=True, drop_last=True,
                              augment=Augment(crop="pad", pad=4, flip=True),
                              generator=torch.Generator(device=device).manual_seed(0))
    if loader.cores is not None and loader.cores.last is not None:
        loader.cores.every_s = 1.0
    epoch = epochs(loader, device, False)

    def go() -> int:
        if loader.cores is not None:
            torch.set_num_threads(loader.cores.threads)  # this contender's count (another one ran before)
            loader.cores.resume()  # the other contenders' runs (the PIL loader's worker processes) are not load
        return epoch()

    start = time.perf_counter()
    while time.perf_counter() - start < 3:  # the governor measures across these epochs and settles
        epoch()
    return go


def main(cfg: Config) -> dict:
    device = pick_device(cfg.device)
    train = load_cifar10(cfg.data_root or None).train
    pil = PILCifar(train.images.permute(0, 2, 3, 1).numpy(), train.labels.numpy(), transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]))
    theirs = DataLoader(pil, cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, pin_memory=device.type == "cuda")
    counts = cfg.threads if device.type == "cpu" else ("auto",)
    results, speedups = {}, {}
    for load in cfg.loads:
        with busy_cores(load):
            contenders = {f"device_tensor_loader@{c}": ours_at(c, train, cfg, device) for c in counts}
            contenders["torchvision_pil_dataloader"] = epochs(theirs, device, True)
            timings = interleave(contenders, device, cfg.rounds)
        base = timings["torchvision_pil_dataloader"]["images_per_s"]
        results[f"busy_{load}"] = timings
        speedups[f"busy_{load}"] = {c: round(timings[f"device_tensor_loader@{c}"]["images_per_s"] / base, 1)
                                    for c in counts}
        for name, t in timings.items():
            print(f"{load} busy core(s)  {name:<32} {t['images_per_s']:>10.0f} images/s", flush=True)
        print(f"{load} busy core(s): speed-up by thread count {speedups[f'busy_{load}']}", flush=True)
    worst = min(v for by_count in speedups.values() for v in by_count.values())
    result = {"benchmark": "pipeline", "device": device_name(device), "config": vars(cfg), "results": results,
              "speedups": speedups, "worst_speedup": worst, "goal": ">= 10x in every case"}
    print(f"worst speed-up {worst:.1f}x (goal >= 10x) on {result['device']}; saved {save('pipeline', result)}")
    return result


if __name__ == "__main__":
    run_job(main, Config)
