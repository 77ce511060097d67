"""The all-convolutional CIFAR-10 net of the vanishing-gradient study (A5–A8), with its deep variants.

A5 is convolutions with ReLU, pooling and one linear classifier. A7 inserts `extra_layers` 5×5 convolutions
(padding 2, stride 1) between the first and the second convolution and removes every BatchNorm: with
PyTorch's default init each ReLU layer scales the signal's variance by about 1/6, so after twenty of them the
forward signal and the backward gradient reaching the first layers are both vanishingly small. A8 keeps every
layer and adds no normalisation, but wraps each extra layer in an identity shortcut, x + conv(relu(x)), and
starts the branches small (He init scaled by 1/√L): the gradient then reaches the first layer through the
identity path undiminished whatever the depth, and the branches learn from there.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

from torch import nn

from .layers import Classifier, Norm, conv, init_weights, make_norm
from .registry import register_model

AllConvInit = Literal["kaiming", "torch"]


class ResidualConv(nn.Module):
    """x + conv(relu(x)): a pre-activation shortcut around one convolution."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)

    def forward(self, x):
        return x + self.conv(self.act(x))


def _block(c_in: int, c_out: int, kernel: int, norm: Norm) -> list[nn.Module]:
    return [conv(c_in, c_out, kernel, norm=norm), make_norm(norm, c_out), nn.ReLU()]


def _extra(channels: int, count: int, kernel: int, norm: Norm, residual: bool) -> list[nn.Module]:
    if residual:
        return [ResidualConv(channels, kernel) for _ in range(count)]
    return [m for _ in range(count) for m in _block(channels, channels, kernel, norm)]


@register_model
def allconv_cnn(
    num_classes: int = 10,
    in_chans: int = 3,
    widths: Sequence[int] = (32, 64, 128),
    extra_layers: int = 0,
    extra_kernel: int = 5,
    norm: Norm = "bn",
    residual: bool = False,
    init: AllConvInit = "kaiming",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
):
    """conv 5×5 (widths[0]) → ReLU → max-pool 2, [`extra_layers` × conv `extra_kernel`² (widths[0]) → ReLU],
    then per further width two 3×3 convs → ReLU and a max-pool, global average pool, linear classifier. A norm
    layer follows every conv unless `norm="none"`; `residual` puts a shortcut around each extra conv (A8).

    init="torch" keeps PyTorch's default (kaiming-uniform with a=√5: variance 1/(3·fan_in)), the init under
    which A7's gradients vanish; "kaiming" is He-normal, with the residual branches scaled by 1/√extra_layers.
    """
    if len(widths) < 2:
        raise ValueError("need at least two widths (the first stage and one more)")
    if extra_kernel % 2 == 0 or extra_layers < 0:
        raise ValueError(f"extra_kernel must be odd and extra_layers >= 0, got {extra_kernel}, {extra_layers}")
    layers: list[nn.Module] = [*_block(in_chans, widths[0], 5, norm), nn.MaxPool2d(2)]
    layers += _extra(widths[0], extra_layers, extra_kernel, norm, residual)
    c = widths[0]
    for i, width in enumerate(widths[1:]):
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        layers += _block(c, width, 3, norm) + _block(width, width, 3, norm)
        c = width
    body = nn.Sequential(*(m for m in layers if not isinstance(m, nn.Identity)))
    model = Classifier(body, c, num_classes, in_chans, mean, std)
    model.init_scheme = init_weights(model, init)
    if residual and extra_layers and init == "kaiming":
        scale = 1 / math.sqrt(extra_layers)
        for m in body.modules():
            if isinstance(m, ResidualConv):
                m.conv.weight.data.mul_(scale)
        model.init_scheme += f"; residual branches ×1/√{extra_layers}"
    return model
