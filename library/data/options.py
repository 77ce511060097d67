"""The data options every training job shares, as a dataclass mixin, and loading from them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import Config
from . import load_dataset
from .images import ImageData


@dataclass(frozen=True)
class DataOptions(Config):
    dataset: Literal["cifar10", "mnist"] = "cifar10"  # the image set; each job's default is the one its experiments use
    data_root: str = ""  # default: $CV_DATA_ROOT, else ~/.cache/cv-campaigns/data
    val_size: int = 5000  # images of the training set held out for validation (seeded, stratified)
    train_size: int = 0  # cap on training images, 0 = all (quick runs)
    test_size: int = 0  # cap on test images, 0 = all
    split_seed: int = 0  # seeds the train/validation split and the caps, independently of training seeds

    def __post_init__(self):
        super().__post_init__()
        self.require(val_size=self.val_size >= 0, train_size=self.train_size >= 0, test_size=self.test_size >= 0)


def load_data(opts: DataOptions) -> ImageData:
    data = load_dataset(opts.dataset, opts.data_root or None, val_size=opts.val_size, seed=opts.split_seed)
    return data.limit(train=opts.train_size, test=opts.test_size, seed=opts.split_seed)
