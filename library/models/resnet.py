"""The CIFAR ResNet of A9 (seed 002, Fig. 3)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .cnn import ResidualBlock
from .layers import Classifier, conv, init_weights
from .registry import register_model


@register_model
def resnet_cifar(
    num_classes: int = 10,
    in_chans: int = 3,
    widths: Sequence[int] = (64, 128, 256, 512),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
):
    """conv 3×3 (widths[0], stride 1) → BN → ReLU, then one residual block per further width, each with stride 2
    and a 1×1 projection shortcut (every block changes the shape), then the 4×4 average pool and a linear layer.

    Every conv is bias-free and followed by BatchNorm then ReLU; He (Kaiming-normal) init throughout. With the
    default widths a 32×32 input reaches 4×4 after three stride-2 blocks, so the final pool is global; it is
    written as an adaptive pool so other input sizes still work. Seed 002 names ImageNet statistics for its
    normalisation; the data set's own (CIFAR-10's) are the default here: pass `mean`/`std` to follow the seed to the letter.
    """
    layers: list[nn.Module] = [conv(in_chans, widths[0], 3, 1, "bn"), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers.append(ResidualBlock(c_in, c_out, 2, "bn", "relu"))
    model = Classifier(nn.Sequential(*layers), widths[-1], num_classes, in_chans, mean, std)
    model.init_scheme = init_weights(model, "kaiming")
    return model
