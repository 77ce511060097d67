"""In-memory image data sets: uint8 N×C×H×W tensors with int64 labels, and the seeded train/validation split."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class ImageSet:
    """One split: `images` uint8 N×C×H×W (0..255), `labels` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class ImageData:
    """A data set as used for training: train and validation splits carved from the official training set, and
    the official test set, which only a final evaluation touches."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    verified: bool = True  # False: a staged copy whose checksums differ from the official archive

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def limit(self, train: int = 0, val: int = 0, test: int = 0, seed: int = 0) -> "ImageData":
        """A smaller copy for quick runs (0 keeps a split whole); a seeded random sample of each split."""
        g = torch.Generator().manual_seed(seed)

        def cut(split: ImageSet, n: int) -> ImageSet:
            if n <= 0 or n >= len(split):
                return split
            return split.subset(torch.randperm(len(split), generator=g)[:n])

        return replace(self, train=cut(self.train, train), val=cut(self.val, val), test=cut(self.test, test))


def split_train_val(full: ImageSet, val_size: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded, class-stratified split of `full` into (train, validation) with `val_size` validation images.

    Stratified so that even a small validation split holds every class in its training proportion.
    """
    if not 0 <= val_size < len(full):
        raise ValueError(f"val_size={val_size} must be in [0, {len(full)})")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(full), generator=g)
    labels = full.labels[order]
    val_parts = []
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = (counts.double() * val_size / len(full)).floor().long()
    # hand the rounding remainder to the largest classes first, so the split has exactly val_size images
    for i in torch.argsort(counts, descending=True)[: val_size - int(quotas.sum())]:
        quotas[i] += 1
    for c, q in zip(classes.tolist(), quotas.tolist()):
        val_parts.append(order[labels == c][:q])
    val_index = torch.cat(val_parts) if val_parts else torch.empty(0, dtype=torch.long)
    is_val = torch.zeros(len(full), dtype=torch.bool)
    is_val[val_index] = True
    train_index = torch.arange(len(full))[~is_val]
    return full.subset(train_index), full.subset(torch.sort(val_index).values)
