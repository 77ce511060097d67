"""CIFAR-10 through torchvision's dataset class, into uint8 tensors."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10

from .images import ImageData, ImageSet, split_train_val
from .storage import DatasetFiles, data_root, prepare

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the 50k training images in [0, 1]; the models normalise with them internally.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class _StagedCIFAR10(CIFAR10):
    """torchvision's CIFAR-10 reader for a copy in the standard layout whose md5 sums differ from the official
    archive. `prepare()` has already compared the checksums (and warned); torchvision would refuse the files."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def cifar10_files() -> DatasetFiles:
    return DatasetFiles(
        name="CIFAR-10",
        folder=CIFAR10.base_folder,
        files={name: md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list}
        | {CIFAR10.meta["filename"]: CIFAR10.meta["md5"]},
        download=lambda root: CIFAR10(str(root), train=True, download=True),
        sources=[
            f"{CIFAR10.url} (md5 {CIFAR10.tgz_md5}): put the archive itself in the data root, or its extracted"
            f" {CIFAR10.base_folder}/ folder",
        ],
    )


def _to_set(ds: CIFAR10) -> ImageSet:
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # N×H×W×C -> N×C×H×W
    return ImageSet(images, torch.as_tensor(ds.targets, dtype=torch.long))


def load_cifar10(root: str | Path | None = None, val_size: int = 5000, seed: int = 0, download: bool = True) -> ImageData:
    """CIFAR-10 as uint8 tensors: a seeded split of the 50k training images into train/validation, and the
    10k test images. Downloads once into the data root (see `storage.data_root`) if absent."""
    root = data_root(root)
    verified = prepare(cifar10_files(), root, download=download)
    reader = CIFAR10 if verified else _StagedCIFAR10
    full = _to_set(reader(str(root), train=True))
    test = _to_set(reader(str(root), train=False))
    train, val = split_train_val(full, val_size, seed)
    return ImageData("cifar10", train, val, test, CIFAR10_CLASSES, verified=verified)
