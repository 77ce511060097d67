"""An airbench-class CIFAR-10 network (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024): a
frozen whitening stem, three conv → max-pool → BatchNorm → GELU groups of free widths, a max-pooled linear head
whose logits are scaled down. Written here in the registry's terms; `benchmarks/` compares it with the `airbench`
package itself.

The stem is a 2×2 convolution without padding whose filters whiten the image's 2×2 patches: the eigenvectors
of their second-moment matrix over training images, scaled by 1/√(eigenvalue + eps), and the same filters
negated (so the activation after keeps both signs). It is fitted from data (`init_from_data`, which training
calls before the first step) and never trained; only its bias is.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Act, Classifier, make_act
from .registry import register_model

_SECOND_MOMENTS: dict[tuple, torch.Tensor] = {}  # (images' identity, kernel) -> patch second moments, per process


def _identity(images: torch.Tensor) -> tuple:
    """A cheap key for a set of images: shape, dtype and a strided sample of the values (the same data set loaded
    twice in one process gives the same key)."""
    sample = images.flatten()[:: max(1, images.numel() // 4096)].float()
    return tuple(images.shape), str(images.dtype), float(sample.sum()), float((sample * sample).sum())


def patch_second_moments(images: torch.Tensor, kernel: int, chunk: int = 512) -> torch.Tensor:
    """E[p pᵀ] over every `kernel`×`kernel` patch p (flattened, C·k² long) of `images` (N×C×H×W, float), in chunks
    of images so memory stays at one chunk's patches."""
    dim = images.shape[1] * kernel * kernel
    total, count = torch.zeros(dim, dim, dtype=torch.float64), 0
    for start in range(0, len(images), chunk):
        patches = F.unfold(images[start:start + chunk].double(), kernel).transpose(1, 2).reshape(-1, dim)
        total += patches.T @ patches
        count += len(patches)
    return total / max(1, count)


class WhiteningStem(nn.Module):
    """2×2 (by default) valid convolution with 2·C·k² filters that whiten patches, fitted by `fit`; weight frozen."""

    def __init__(self, in_chans: int, kernel: int = 2, eps: float = 5e-4):
        super().__init__()
        self.kernel, self.eps = kernel, eps
        self.conv = nn.Conv2d(in_chans, 2 * in_chans * kernel * kernel, kernel, padding=0, bias=True)
        self.conv.weight.requires_grad_(False)

    def fit(self, images: torch.Tensor) -> None:
        """Whitening filters from `images` (N×C×H×W, as this layer sees them: normalised)."""
        key = (_identity(images), self.kernel)
        if key not in _SECOND_MOMENTS:
            _SECOND_MOMENTS[key] = patch_second_moments(images.detach().cpu(), self.kernel)
        eigenvalues, eigenvectors = torch.linalg.eigh(_SECOND_MOMENTS[key])
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + self.eps)[:, None]).float()
        filters = filters.view(-1, *self.conv.weight.shape[1:])
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([filters, -filters]).to(self.conv.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvGroup(nn.Sequential):
    """conv 3×3 → max-pool 2×2 → BN → act → conv 3×3 → BN → act (convs without bias: BN follows)."""

    def __init__(self, c_in: int, c_out: int, act: Act, bn_momentum: float, bn_eps: float, bn_scale: bool):
        norms = [nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum) for _ in range(2)]
        for norm in norms:
            norm.weight.requires_grad_(bn_scale)  # airbench keeps the scale at 1 and trains only the shift
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), norms[0], make_act(act),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), norms[1], make_act(act))


class AirbenchNet(Classifier):
    """Classifier whose body opens with a `WhiteningStem`; `init_from_data` fits it."""

    def init_from_data(self, images: torch.Tensor, limit: int = 5000) -> None:
        """Fit the whitening stem on (at most `limit` of) the training images, uint8 or [0, 1] floats, N×C×H×W."""
        x = images[:limit].float()
        x = x / 255 if images.dtype == torch.uint8 else x
        with torch.no_grad():
            self.body[0].fit(self.normalize(x.to(self.normalize.mean.device)))


@register_model
def airbench_cnn(
    num_classes: int = 10,
    in_chans: int = 3,
    width1: int = 64,
    width2: int = 256,
    width3: int = 256,
    whiten_kernel: int = 2,
    whiten_eps: float = 5e-4,
    act: Act = "gelu",
    bn_momentum: float = 0.4,
    bn_eps: float = 1e-12,
    bn_scale: bool = False,
    logit_scale: float = 1 / 9,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
):
    """airbench94's network: whitening stem (2·C·k² channels, `whiten_kernel`×`whiten_kernel`, fitted from the
    training images) → act → three ConvGroups of `width1`/`width2`/`width3` channels → global max-pool → linear
    without bias → × `logit_scale`. BatchNorm: `bn_momentum` is torch's (the weight of each batch: airbench's
    0.6 decay is 0.4), `bn_eps`, and `bn_scale=False` freezes the scales at 1. 236 MFLOPs per 32×32 image at the
    default widths."""
    if min(width1, width2, width3) < 1 or whiten_kernel < 1:
        raise ValueError("widths and whiten_kernel must be positive")
    stem = WhiteningStem(in_chans, whiten_kernel, whiten_eps)
    widths = (width1, width2, width3)
    groups, c = [], stem.conv.out_channels
    for width in widths:
        groups.append(ConvGroup(c, width, act, bn_momentum, bn_eps, bn_scale))
        c = width
    body = nn.Sequential(stem, make_act(act), *groups)
    model = AirbenchNet(body, c, num_classes, in_chans, mean, std, pool="max", fc_bias=False, logit_scale=logit_scale)
    model.init_scheme = "torch default convs; whitening stem fitted from the training images"
    return model
