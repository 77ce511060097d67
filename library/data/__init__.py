"""Data sets as on-device uint8 tensors, downloaded once under a lock, augmented in batches."""
from .augment import Augment, cutout, random_crop, random_flip, random_resized_crop
from .cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from .images import ImageData, ImageSet, split_train_val
from .loader import DeviceLoader
from .mnist import MNIST_MEAN, MNIST_STD, load_mnist
from .storage import DATA_ROOT_ENV, DatasetCorruptError, DatasetNotFoundError, StagedCopyWarning, data_root

LOADERS = {"cifar10": load_cifar10, "mnist": load_mnist}


def load_dataset(name: str, root=None, val_size: int = 5000, seed: int = 0, download: bool = True) -> ImageData:
    """Load a data set by name (`LOADERS`): train/validation split of the training set, plus the test set."""
    if name not in LOADERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](root, val_size=val_size, seed=seed, download=download)


__all__ = [
    "Augment", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "DATA_ROOT_ENV", "DatasetCorruptError",
    "DatasetNotFoundError",
    "DeviceLoader", "ImageData", "ImageSet", "LOADERS", "MNIST_MEAN", "MNIST_STD", "StagedCopyWarning", "cutout",
    "data_root", "load_cifar10", "load_dataset", "load_mnist", "random_crop", "random_flip", "random_resized_crop",
    "split_train_val",
]
