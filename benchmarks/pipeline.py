"""Input pipeline: our on-device tensor loader vs torchvision's PIL transforms in a DataLoader, same augmentation.

Both produce float [0, 1] batches of 256 augmented CIFAR-10 training images (zero-pad 4 + random 32×32 crop,
random horizontal flip), shuffled; normalisation is left to the model in both. Each timed call is one full
epoch over the 45k training images. Goal: ≥ 10× the DataLoader.

    python benchmarks/pipeline.py [--data_root=DIR] [--rounds=5] [--workers=2]
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from benchmarks.common import device_name, interleave, save  # noqa: E402
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
    device: str = "auto"


class PILCifar(Dataset):
    """What torchvision's CIFAR10.__getitem__ does: an H×W×C uint8 array -> PIL image -> transforms."""

    def __init__(self, images_hwc, labels, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def main(cfg: Config) -> dict:
    device = pick_device(cfg.device)
    train = load_cifar10(cfg.data_root or None).train
    ours = DeviceLoader(train.to(device), cfg.batch_size, shuffle=True, drop_last=True,
                        augment=Augment(crop="pad", pad=4, flip=True),
                        generator=torch.Generator(device=device).manual_seed(0))
    pil = PILCifar(train.images.permute(0, 2, 3, 1).numpy(), train.labels.numpy(), transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()]))
    theirs = DataLoader(pil, cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, pin_memory=device.type == "cuda")

    def run(loader, to_device: bool):
        def go() -> int:
            n = 0
            for x, y in loader:
                if to_device:
                    x = x.to(device, non_blocking=True)
                n += len(x)
            return n
        return go

    timings = interleave({"device_tensor_loader": run(ours, False), "torchvision_pil_dataloader": run(theirs, True)},
                         device, cfg.rounds)
    ratio = timings["device_tensor_loader"]["images_per_s"] / timings["torchvision_pil_dataloader"]["images_per_s"]
    result = {"benchmark": "pipeline", "device": device_name(device), "config": vars(cfg),
              "results": timings, "speedup": round(ratio, 1), "goal": ">= 10x"}
    for name, t in timings.items():
        print(f"{name:<28} {t['images_per_s']:>10.0f} images/s")
    print(f"speed-up {ratio:.1f}x (goal >= 10x) on {result['device']}; saved {save('pipeline', result)}")
    return result


if __name__ == "__main__":
    run_job(main, Config)
