"""A small vision transformer trained from scratch on CIFAR-10 (F1), from timm's `VisionTransformer`: patch
embedding, learned positional embedding and a class token, `depth` pre-norm transformer blocks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import Normalize, default_stats
from .registry import register_model


class NormalizedViT(nn.Module):
    """[0, 1] images → Normalize → timm ViT, keeping timm's interface (forward_features gives the tokens,
    forward_head(pre_logits=True) the pooled class-token features, num_features their width)."""

    def __init__(self, vit: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.vit = vit
        self.num_features, self.num_classes = vit.num_features, vit.num_classes
        self.init_scheme = "timm ViT init: trunc_normal(0.02) weights, zero biases, pos_embed trunc_normal(0.02)"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(self.normalize(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.vit.forward_head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def vit_cifar(num_classes: int = 10, in_chans: int = 3, image_size: int = 32, patch_size: int = 4,
              embed_dim: int = 192, depth: int = 4, num_heads: int = 3, mlp_ratio: float = 2.0,
              dropout: float = 0.0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """F1: 4×4 patches (an 8×8 grid on CIFAR-10), `embed_dim` wide, `depth` blocks of `num_heads`-head
    attention and an MLP of `mlp_ratio`·embed_dim; ≈1.2M parameters with the defaults."""
    from timm.models.vision_transformer import VisionTransformer

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    vit = VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                            drop_rate=dropout)
    default_mean, default_std = default_stats(in_chans)
    return NormalizedViT(vit, mean or default_mean, std or default_std)
