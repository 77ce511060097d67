"""MNIST through torchvision's dataset class, into uint8 tensors (N×1×28×28)."""
from __future__ import annotations

from pathlib import Path

from .images import ImageData, ImageSet, split_train_val
from .storage import DatasetFiles, data_root, prepare

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


def mnist_files() -> DatasetFiles:
    from torchvision.datasets import MNIST  # here, not at the top: torchvision's import costs a second

    return DatasetFiles(
        name="MNIST",
        folder="MNIST/raw",
        files=dict(_RAW_MD5),
        download=lambda root: MNIST(str(root), train=True, download=True),
        sources=[f"{m}{name}.gz (then gunzip)" for m in MNIST.mirrors[:1] for name in _RAW_MD5],
    )


def load_mnist(root: str | Path | None = None, val_size: int = 5000, seed: int = 0, download: bool = True) -> ImageData:
    """MNIST as uint8 tensors: a seeded train/validation split of the 60k training digits, and the 10k test set."""
    from torchvision.datasets import MNIST

    root = data_root(root)
    verified = prepare(mnist_files(), root, download=download)
    sets = []
    for train in (True, False):
        ds = MNIST(str(root), train=train)
        sets.append(ImageSet(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
    train_set, val_set = split_train_val(sets[0], val_size, seed)
    return ImageData("mnist", train_set, val_set, sets[1], MNIST_CLASSES, verified=verified)
