"""CIFAR-10 into uint8 tensors: torchvision downloads and names the files; they are read here, by an unpickler
that can only build what the format holds (a dict of lists, strings and one uint8 numpy array), so a tampered
batch file in a shared data root raises `DatasetCorruptError` instead of running code."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .images import ImageData, ImageSet, split_train_val
from .storage import DatasetCorruptError, DatasetFiles, data_root, prepare

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the 50k training images in [0, 1]; the models normalise with them internally.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


# the only globals a CIFAR-10 batch refers to: numpy's array reconstruction (numpy 1 and 2 module paths; the
# official archive was written by Python 2's numpy), and bytes decoding of a Python 3 protocol-2 pickle
_ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR-10 batch never does")
        return super().find_class(module, name)


# torchvision's CIFAR10 class attributes (tests check they agree), here so that naming the files imports nothing:
# torchvision's import brings torch._dynamo (~1.5 s), which a job that only reads CIFAR-10 should not pay
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL, CIFAR10_TGZ_MD5 = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
CIFAR10_TRAIN = (("data_batch_1", "c99cafc152244af753f735de768cd75f"), ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                 ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"), ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                 ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"))
CIFAR10_TEST = (("test_batch", "40351d587109b95175f43aff81a1287e"),)
CIFAR10_META = ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888")


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(root), train=True, download=True)


def read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One CIFAR-10 batch file: its images (N×3072 uint8, channel-major) and labels, read without running code."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
        data, labels = batch["data"], [int(y) for y in batch["labels"]]
        ok = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
        ok = ok and len(labels) == len(data) and all(0 <= y < len(CIFAR10_CLASSES) for y in labels)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DatasetCorruptError(f"{path} is not a CIFAR-10 batch ({type(e).__name__}: {e}); it was not run. "
                                  f"Replace it with the file from the official archive, "
                                  f"{CIFAR10_URL}") from e
    if not ok:
        raise DatasetCorruptError(f"{path} does not hold CIFAR-10 images (a uint8 N×3072 'data' and N labels in "
                                  f"0..9); replace it with the file from the official archive, "
                                  f"{CIFAR10_URL}")
    return data, labels


def cifar10_files() -> DatasetFiles:
    return DatasetFiles(
        name="CIFAR-10",
        folder=CIFAR10_FOLDER,
        files=dict(CIFAR10_TRAIN + CIFAR10_TEST + (CIFAR10_META,)),
        download=_download_cifar10,
        sources=[f"{CIFAR10_URL} (md5 {CIFAR10_TGZ_MD5}): put the archive itself in the data root, or its extracted"
                 f" {CIFAR10_FOLDER}/ folder"],
    )


def _read_split(root: Path, train: bool) -> ImageSet:
    batches = [read_batch(root / CIFAR10_FOLDER / name) for name, _ in (CIFAR10_TRAIN if train else CIFAR10_TEST)]
    images = np.concatenate([data for data, _ in batches]).reshape(-1, 3, 32, 32)  # stored channel-major
    labels = [y for _, batch_labels in batches for y in batch_labels]
    return ImageSet(torch.from_numpy(images), torch.as_tensor(labels, dtype=torch.long))


def load_cifar10(root: str | Path | None = None, val_size: int = 5000, seed: int = 0, download: bool = True) -> ImageData:
    """CIFAR-10 as uint8 tensors: a seeded split of the 50k training images into train/validation, and the
    10k test images. Downloads once into the data root (see `storage.data_root`) if absent."""
    root = data_root(root)
    verified = prepare(cifar10_files(), root, download=download)
    full, test = _read_split(root, train=True), _read_split(root, train=False)
    train, val = split_train_val(full, val_size, seed)
    return ImageData("cifar10", train, val, test, CIFAR10_CLASSES, verified=verified)
