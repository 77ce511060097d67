"""Batches drawn from an on-device uint8 image tensor: a permutation per epoch, augmentation as batched tensor ops.

The data set is moved to the device once. Each epoch it is visited in a fresh random order, a chunk of several
thousand images at a time: the chunk is drawn and augmented as uint8 (crops and flips are exact there), then
cut into batches that are converted to float [0, 1]. Normalisation is not done here: every model in the
registry normalises its [0, 1] input itself. On the CPU the loader keeps torch's thread count to the cores other
processes leave free (`runtime.CoreShare`), for its own augmentation and for the training steps between batches.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..runtime import CoreShare
from .augment import Augment
from .images import ImageSet

CHUNK_IMAGES = 8192  # images augmented per call: amortises per-call overhead, bounds the extra memory (~25 MB)


class DeviceLoader:
    """Iterate (images float N×C×H×W in [0, 1], labels) over an `ImageSet` that lives on `device`.

    shuffle: a fresh permutation from `generator` each epoch; drop_last: skip the final short batch (training
    keeps batch statistics honest with it); augment: drawn from with `Augment.bind`, on uint8 chunks.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        generator: torch.Generator | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data = data
        self.device = data.images.device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and len(data) >= batch_size  # never yield nothing
        self.generator = generator or torch.Generator(device=self.device).manual_seed(0)
        self._draw = augment.bind(data.images) if augment is not None else lambda index, g: data.images[index]
        self.cores = CoreShare() if self.device.type == "cpu" else None

    def __len__(self) -> int:
        n, b = len(self.data), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self) * self.batch_size if self.drop_last else len(self.data)
        if self.shuffle:
            order = torch.randperm(len(self.data), generator=self.generator, device=self.device)[:n]
        else:
            order = torch.arange(n, device=self.device)
        step = max(self.batch_size, CHUNK_IMAGES // self.batch_size * self.batch_size)  # whole batches per chunk
        for start in range(0, n, step):
            index = order[start : start + step]
            yield self._draw(index, self.generator), self.data.labels[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self._chunks():
            for start in range(0, len(labels), self.batch_size):
                if self.cores is not None:
                    self.cores.adjust()  # cheap: it measures at most every few seconds
                x = images[start : start + self.batch_size]
                yield x.to(torch.float32).mul_(1 / 255), labels[start : start + self.batch_size]  # 10× .div_(255)
