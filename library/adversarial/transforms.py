"""The transformations D2 tests adversarial examples against, as batched tensor functions on [0, 1] images
(B×3×H×W), each drawing its randomness from a generator so EOT can sample them: horizontal flip, a random crop
of 80% of the side resized back, a rotation of up to 30°, grayscale."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def flip(x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    return x.flip(3)


def crop80(x: torch.Tensor, g: torch.Generator | None = None, fraction: float = 0.8) -> torch.Tensor:
    """A crop of `fraction` of each side at a random place (the centre without a generator), resized back."""
    h, w = x.shape[-2:]
    ch, cw = round(h * fraction), round(w * fraction)
    if g is None:
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top = int(torch.randint(h - ch + 1, (1,), generator=g))
        left = int(torch.randint(w - cw + 1, (1,), generator=g))
    import torchvision.transforms.v2.functional as TF  # here: torchvision's import brings torch._dynamo (~1.5 s)

    return TF.resize(x[..., top:top + ch, left:left + cw], [h, w], antialias=True)


def rotate30(x: torch.Tensor, g: torch.Generator | None = None, degrees: float = 30.0) -> torch.Tensor:
    """A rotation by `degrees` (a random angle in ±degrees with a generator) about the centre, bilinear, the
    corners filled grey. Written with affine_grid/grid_sample so gradients flow through it (EOT)."""
    angle = degrees if g is None else float(torch.empty(1).uniform_(-degrees, degrees, generator=g))
    theta = math.radians(angle)
    h, w = x.shape[-2:]
    matrix = torch.tensor([[math.cos(theta), -math.sin(theta) * h / w, 0.0],
                           [math.sin(theta) * w / h, math.cos(theta), 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(matrix.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    rotated = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rotated + 0.5 * (1 - inside)


def grayscale(x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    return TF.rgb_to_grayscale(x, num_output_channels=3)


D2_TRANSFORMS = {"flip": flip, "crop 80%": crop80, "rotate 30°": rotate30, "grayscale": grayscale}
