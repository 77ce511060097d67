"""Batches drawn from an on-device uint8 image tensor: a permutation per epoch, augmentation as batched tensor ops.

The data set is moved to the device once; each batch is an index into it, converted to float [0, 1] there.
Normalisation is not done here: every model in the registry normalises its [0, 1] input itself.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from .images import ImageSet


class DeviceLoader:
    """Iterate (images float N×C×H×W in [0, 1], labels) over an `ImageSet` that lives on `device`.

    shuffle: a fresh permutation from `generator` each epoch; drop_last: skip the final short batch (training
    keeps batch statistics honest with it); augment: called on each float batch with the generator.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data = data
        self.device = data.images.device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and len(data) >= batch_size  # never yield nothing
        self.augment = augment
        self.generator = generator or torch.Generator(device=self.device).manual_seed(0)

    def __len__(self) -> int:
        n, b = len(self.data), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.data.images[index].float().div_(255)
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield x, self.data.labels[index]
