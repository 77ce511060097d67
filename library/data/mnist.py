"""MNIST into uint8 tensors (N×1×28×28): torchvision downloads the files, they are read here (torchvision's import
brings torch._dynamo, ~1.5 s, which a job that only reads MNIST, such as an ε-sweep, should not pay)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .images import ImageData, ImageSet, split_train_val
from .storage import DatasetCorruptError, DatasetFiles, data_root, prepare

MNIST_CLASSES = tuple(str(d) for d in range(10))
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

# md5 of the unpacked idx files, which is what torchvision reads (its own table checks the .gz archives,
# whose bytes depend on the gzip that wrote them; the unpacked contents do not).
_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's first mirror (tests check it)


def _download_mnist(root: Path) -> None:
    from torchvision.datasets import MNIST

    MNIST(str(root), train=True, download=True)


def mnist_files() -> DatasetFiles:
    return DatasetFiles(
        name="MNIST",
        folder="MNIST/raw",
        files=dict(_RAW_MD5),
        download=_download_mnist,
        sources=[f"{MNIST_MIRROR}{name}.gz (then gunzip)" for name in _RAW_MD5],
    )


def read_idx(path: Path, dims: int) -> torch.Tensor:
    """An unsigned-byte idx file (the MNIST format: zero, zero, type 0x08, the dimension count, then each size as a
    big-endian int32, then the bytes) with `dims` dimensions, as a uint8 tensor."""
    data = path.read_bytes()
    header = 4 + 4 * dims
    sizes = np.frombuffer(data[4:header], dtype=">u4").tolist() if len(data) >= header else []
    if data[:4] != bytes((0, 0, 8, dims)) or len(sizes) != dims or len(data) - header != int(np.prod(sizes)):
        raise DatasetCorruptError(f"{path} is not an MNIST idx file of {dims} dimension(s) (its header or size is "
                                  f"wrong); replace it with the unpacked file from {MNIST_MIRROR}{path.name}.gz")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(sizes).copy())


def load_mnist(root: str | Path | None = None, val_size: int = 5000, seed: int = 0, download: bool = True) -> ImageData:
    """MNIST as uint8 tensors: a seeded train/validation split of the 60k training digits, and the 10k test set."""
    root, spec = data_root(root), mnist_files()
    verified = prepare(spec, root, download=download)
    folder, sets = root / spec.folder, []
    for split in ("train", "t10k"):
        images = read_idx(folder / f"{split}-images-idx3-ubyte", 3)
        labels = read_idx(folder / f"{split}-labels-idx1-ubyte", 1)
        if len(labels) != len(images):
            raise DatasetCorruptError(f"{folder}: {split} has {len(images)} images and {len(labels)} "
                                      f"labels; replace both files with those from {MNIST_MIRROR}")
        sets.append(ImageSet(images.unsqueeze(1).contiguous(), labels.long()))
    train_set, val_set = split_train_val(sets[0], val_size, seed)
    return ImageData("mnist", train_set, val_set, sets[1], MNIST_CLASSES, verified=verified)
