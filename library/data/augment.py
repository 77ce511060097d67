"""Batched data augmentation on N×C×H×W image tensors (uint8 or float), on whatever device they are on.

A handful of tensor operations per call for the whole batch, no Python loop over images and no DataLoader
workers (the airbench habit). The loader draws augmented uint8 chunks of thousands of images through
`Augment.bind`, before conversion to float, so per-call overheads are spread thin. Each function takes a
`torch.Generator` on the images' device so runs are reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F


def _uniform(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device)


def random_flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    flip = _uniform(len(x), g, x.device) < p
    out = x.clone()
    out[flip] = x[flip].flip(3)
    return out


class PaddedSource:
    """Images padded (and mirrored) once, from which random crops (and flips) are drawn by index.

    Drawing a batch is one indexing operation that gathers, crops and flips at once: each image's padded
    planes are flattened, and a crop at (dy, dx) is then one contiguous run starting at dy·W + dx whose rows are
    W wide, of which the first w are kept. Costs the padded copy (twice with `flip`) in memory: ~440 MB for
    CIFAR-10's 45k training images.

    pad_mode "reflect" mirrors the border into the padding (airbench's translation) instead of zeros; `alternate`
    flips each image on every other draw (airbench's alternating flips: random for its first draw, then the
    other way each time), so every epoch shows each image the other way round from the last. Its phase is not
    part of a checkpoint: a resumed run draws it afresh.
    """

    def __init__(self, images: torch.Tensor, pad: int, flip: bool, pad_mode: str = "zeros", alternate: bool = False):
        n, c, self.h, self.w = images.shape
        self.pad, self.width = pad, self.w + 2 * pad
        self.alternate, self.mirrored = alternate and flip, None  # per image: its last draw's flip
        if pad_mode == "reflect" and pad:
            padded = F.pad(F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(images.dtype), (0, 0, 0, 1))
        else:
            padded = F.pad(images, (pad, pad, pad, pad + 1))  # one spare row, so the last window fits
        planes = torch.stack([padded, padded.flip(3)]) if flip else padded[None]
        self.windows = planes.flatten(3).unfold(3, self.h * self.width, 1)  # views of every crop, no copy

    def draw(self, index: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, span = len(index), 2 * self.pad + 1
        dy = (_uniform(n, g, index.device) * span).long()
        dx = (_uniform(n, g, index.device) * span).long()
        mirror = (_uniform(n, g, index.device) * len(self.windows)).long()  # 0 or, with flip, 1
        if self.alternate:
            if self.mirrored is None:
                self.mirrored = (_uniform(self.windows.shape[1], g, index.device) < 0.5).long()
            mirror = 1 - self.mirrored[index]
            self.mirrored[index] = mirror
        runs = self.windows[mirror, index, :, dy * self.width + dx]  # N×C×(h·W)
        return runs.view(n, -1, self.h, self.width)[..., : self.w].contiguous()


def random_crop(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Zero-pad by `pad` pixels and cut a random H×W window per image."""
    if pad <= 0:
        return x
    return PaddedSource(x, pad, flip=False).draw(torch.arange(len(x), device=x.device), g)


def random_resized_crop(
    x: torch.Tensor, g: torch.Generator, scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> torch.Tensor:
    """torchvision's RandomResizedCrop at the input size, batched: a random box of `scale` area fraction and
    `ratio` aspect per image, resampled bilinearly. Boxes that would leave the image are clamped to it (where
    torchvision retries, then falls back to a centre crop). uint8 in, uint8 out (rounded, as PIL does)."""
    n = len(x)
    area = scale[0] + (scale[1] - scale[0]) * _uniform(n, g, x.device)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _uniform(n, g, x.device)
    aspect = torch.exp(log_r)
    bw = torch.sqrt(area * aspect).clamp(max=1.0)  # box width / image width
    bh = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (2 * _uniform(n, g, x.device) - 1) * (1 - bw)  # centre in affine_grid's [-1, 1] coordinates
    cy = (2 * _uniform(n, g, x.device) - 1) * (1 - bh)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = bw, cx, bh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else out


def cutout(x: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """Zero a size×size square at a random centre per image (DeVries & Taylor, 2017); it may hang off the edge."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = (_uniform(n, g, x.device) * h).long()[:, None, None]
    cx = (_uniform(n, g, x.device) * w).long()[:, None, None]
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    if size % 2 == 0:  # an even square: drop one row and column so it is exactly size wide
        inside &= (ys - cy < size // 2) & (xs - cx < size // 2)
    return x.masked_fill(inside[:, None], 0)


@dataclass(frozen=True)
class Augment:
    """The training-time augmentation of one run; evaluation never augments."""

    crop: Literal["none", "pad", "resized"] = "pad"
    pad: int = 4  # pixels of padding for crop="pad"
    scale_min: float = 0.8  # smallest area fraction for crop="resized"
    flip: bool = True
    cutout: int = 0  # side of the zeroed square, pixels; 0 = off
    pad_mode: Literal["zeros", "reflect"] = "zeros"  # what crop="pad" pads with
    flip_mode: Literal["random", "alternate"] = "random"  # alternate: each image the other way every epoch

    def bind(self, images: torch.Tensor) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
        """A function `draw(index, generator)` returning augmented uint8 copies of `images[index]`.

        Padded crops and flips come from a `PaddedSource` built here, once per data set; the resized crop and
        cutout then run on the drawn batch.
        """
        fused = self.crop != "resized"  # pad-crop and flip are drawn in one step; flip after a resized crop
        if fused and (self.crop == "pad" or self.flip):
            source = PaddedSource(images, self.pad if self.crop == "pad" else 0, self.flip, self.pad_mode,
                                  self.flip_mode == "alternate")
            first = source.draw
        else:
            first = lambda index, g: images[index]  # noqa: E731

        def draw(index: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            x = first(index, g)
            if self.crop == "resized":
                x = random_resized_crop(x, g, (self.scale_min, 1.0))
                if self.flip:
                    x = random_flip(x, g)
            return cutout(x, g, self.cutout)

        return draw

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Augment a batch of images directly."""
        return self.bind(x)(torch.arange(len(x), device=x.device), g)
