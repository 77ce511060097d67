"""Plain CNNs for CIFAR-10: the Mish CNN of A1 and its BatchNorm variant (A2), and the parametrised family that
the improved-CNN search (A3) explores."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .layers import Act, Classifier, FlatClassifier, Init, Norm, conv, init_weights, make_act, make_norm
from .registry import register_model


def _mish_cnn(norm: Norm, num_classes: int, in_chans: int, mean, std, init: Init) -> Classifier:
    def block(c_in: int, c_out: int, k: int) -> list[nn.Module]:
        return [conv(c_in, c_out, k, norm=norm), make_norm(norm, c_out), nn.Mish()]

    body = nn.Sequential(
        *block(in_chans, 32, 7),
        nn.MaxPool2d(2, stride=2),
        *block(32, 64, 3),
        *block(64, 64, 3),
    )
    # Drop the Identity placeholders of the plain variant so its layer list reads exactly as A1 specifies.
    body = nn.Sequential(*(m for m in body if not isinstance(m, nn.Identity)))
    model = Classifier(body, 64, num_classes, in_chans, mean, std)
    model.init_scheme = init_weights(model, init, nonlinearity="relu")  # Mish ≈ ReLU in gain; no Mish gain exists
    return model


@register_model
def mish_cnn(num_classes: int = 10, in_chans: int = 3, mean=None, std=None, init: Init = "kaiming",
             norm: Norm = "none"):
    """A1: conv 32 7×7 → Mish → max-pool 2×2/2 → conv 64 3×3 → Mish → conv 64 3×3 → Mish → global avg pool →
    linear. 'Same' padding throughout (the seed leaves it open). `norm` puts a normalisation after each conv
    (A10b compares bn, gn, ln and none across batch sizes); mish_cnn_bn is norm="bn"."""
    return _mish_cnn(norm, num_classes, in_chans, mean, std, init)


@register_model
def mish_cnn_bn(num_classes: int = 10, in_chans: int = 3, mean=None, std=None, init: Init = "kaiming"):
    """A2: A1 with BatchNorm after each hidden conv (before Mish); those convs carry no bias (see A10a)."""
    return _mish_cnn("bn", num_classes, in_chans, mean, std, init)


@register_model
def table1_cnn(num_classes: int = 10, in_chans: int = 3, image_size: int = 32, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None):
    """A4, seed 001's Table 1 exactly: (conv 5×5×32 → BN → ReLU → avg-pool 2×2/2) twice, conv 5×5×64 → BN → ReLU
    → avg-pool 2×2/2, fully connected 64 → BN → ReLU, fully connected 10 (the softmax is in the loss). 'Same'
    padding (the table gives none), so 32 → 16 → 8 → 4 and the first FC sees 64·4·4 inputs.

    `mean`/`std` are the input pipeline's standardisation: the default is CIFAR-10's per-channel statistics;
    raw pixels (A4's first pipeline) are mean 0, std 1/255, i.e. the 0..255 values themselves."""
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [conv(c_in, c_out, 5, norm="bn"), nn.BatchNorm2d(c_out), nn.ReLU(), nn.AvgPool2d(2, stride=2)]

    side = image_size // 8
    model = FlatClassifier(
        in_chans, mean, std, *block(in_chans, 32), *block(32, 32), *block(32, 64), nn.Flatten(),
        nn.Linear(64 * side * side, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, num_classes),
    )
    model.init_scheme = init_weights(model, "kaiming")
    return model


class ResidualBlock(nn.Module):
    """conv-norm-act-conv-norm plus the input (through a 1×1 conv + norm where the shape changes), then act."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Norm, act: Act):
        super().__init__()
        self.conv1, self.norm1, self.act1 = conv(c_in, c_out, 3, stride, norm), make_norm(norm, c_out), make_act(act)
        self.conv2, self.norm2 = conv(c_out, c_out, 3, 1, norm), make_norm(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=norm == "none"), make_norm(norm, c_out)
            )
        self.act2 = make_act(act)

    def forward(self, x):
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def _plain_block(c_in: int, c_out: int, norm: Norm, act: Act) -> nn.Sequential:
    return nn.Sequential(conv(c_in, c_out, 3, 1, norm), make_norm(norm, c_out), make_act(act))


@register_model
def improved_cnn(
    num_classes: int = 10,
    in_chans: int = 3,
    widths: Sequence[int] = (64, 128, 256),
    depth: int = 2,
    kernel: int = 3,
    norm: Norm = "bn",
    act: Act = "relu",
    residual: bool = True,
    dropout: float = 0.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
):
    """A3's search family: a stem conv (`kernel`×`kernel`, widths[0] channels), then one stage per entry of
    `widths`, each opening with a 2×2 max-pool (not the first) and holding `depth` blocks, residual blocks
    (two 3×3 convs) or plain conv-norm-act blocks; global average pool, dropout, linear.

    Defaults are a sound starting point (≈ a small ResNet-10), not the searched optimum.
    """
    if depth < 1 or not widths:
        raise ValueError("need depth >= 1 and at least one stage width")
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd so 'same' padding keeps the size, got {kernel}")
    layers: list[nn.Module] = [conv(in_chans, widths[0], kernel, 1, norm), make_norm(norm, widths[0]), make_act(act)]
    c = widths[0]
    for i, width in enumerate(widths):
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        for _ in range(depth):
            layers.append(ResidualBlock(c, width, 1, norm, act) if residual else _plain_block(c, width, norm, act))
            c = width
    model = Classifier(nn.Sequential(*layers), c, num_classes, in_chans, mean, std, dropout=dropout)
    model.init_scheme = init_weights(model, "kaiming")
    return model
