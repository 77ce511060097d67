"""Batched data augmentation on float N×C×H×W tensors in [0, 1], on whatever device the batch is on.

One kernel launch per operation for the whole batch, no Python loop over images and no DataLoader workers
(the airbench habit). Each function takes a `torch.Generator` on the batch's device so runs are reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


def _uniform(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device)


def random_flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    flip = _uniform(len(x), g, x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_crop(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Zero-pad by `pad` pixels and cut a random H×W window per image (one gather for the batch)."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = (_uniform(n, g, x.device) * (2 * pad + 1)).long()
    dx = (_uniform(n, g, x.device) * (2 * pad + 1)).long()
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # N×1×H×1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # N×1×1×W
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_resized_crop(
    x: torch.Tensor, g: torch.Generator, scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> torch.Tensor:
    """torchvision's RandomResizedCrop at the input size, batched: a random box of `scale` area fraction and
    `ratio` aspect per image, resampled bilinearly. Boxes that would leave the image are clamped to it (where
    torchvision retries, then falls back to a centre crop)."""
    n = len(x)
    area = scale[0] + (scale[1] - scale[0]) * _uniform(n, g, x.device)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _uniform(n, g, x.device)
    aspect = torch.exp(log_r)
    bw = torch.sqrt(area * aspect).clamp(max=1.0)  # box width / image width
    bh = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (2 * _uniform(n, g, x.device) - 1) * (1 - bw)  # centre in affine_grid's [-1, 1] coordinates
    cy = (2 * _uniform(n, g, x.device) - 1) * (1 - bh)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = bw, cx, bh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
    return x * (~inside)[:, None].to(x.dtype)


@dataclass(frozen=True)
class Augment:
    """The training-time augmentation of one run; evaluation never augments."""

    crop: Literal["none", "pad", "resized"] = "pad"
    pad: int = 4  # pixels of zero padding for crop="pad"
    scale_min: float = 0.8  # smallest area fraction for crop="resized"
    flip: bool = True
    cutout: int = 0  # side of the zeroed square, pixels; 0 = off

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.crop == "pad":
            x = random_crop(x, g, self.pad)
        elif self.crop == "resized":
            x = random_resized_crop(x, g, (self.scale_min, 1.0))
        if self.flip:
            x = random_flip(x, g)
        return cutout(x, g, self.cutout)
