"""Building blocks shared by the registry's models: input normalisation, norm/activation factories, weight
init, and the classifier shell that gives every model the same timm-like interface."""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import nn

from .scratch import Conv2d as ScratchConv2d

Norm = Literal["bn", "gn", "ln", "none"]
Act = Literal["relu", "mish", "gelu", "silu"]
Init = Literal["kaiming", "torch"]

_ACTS = {"relu": nn.ReLU, "mish": nn.Mish, "gelu": nn.GELU, "silu": nn.SiLU}


def default_stats(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation a model uses unless told otherwise: CIFAR-10's for RGB, MNIST's for one channel."""
    from ..data import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD

    if in_chans == 3:
        return CIFAR10_MEAN, CIFAR10_STD
    if in_chans == 1:
        return MNIST_MEAN, MNIST_STD
    return (0.5,) * in_chans, (0.25,) * in_chans


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the model's first layer: models take [0, 1] images, so attacks, CAM and
    feature extraction all work in pixel space and nobody has to remember a dataset's statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.flatten().tolist()]}, std={[round(v, 4) for v in self.std.flatten().tolist()]}"


def make_act(act: Act) -> nn.Module:
    if act not in _ACTS:
        raise ValueError(f"unknown activation {act!r}; choose from {', '.join(_ACTS)}")
    return _ACTS[act]()


def make_norm(norm: Norm, channels: int) -> nn.Module:
    """BatchNorm, GroupNorm with gcd(C, 32) groups (32 at the usual widths), LayerNorm over (C, H, W) written as
    a one-group GroupNorm, or nothing. Only BatchNorm depends on the other images of the batch."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        groups = math.gcd(channels, 32)
        return nn.GroupNorm(groups, channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose from bn, gn, ln, none")


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1, norm: Norm = "none") -> nn.Conv2d:
    """A 'same'-padded conv; without a bias when a normalisation follows, since its mean subtraction cancels any
    bias exactly (experiment A10a)."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=norm == "none")


def init_weights(model: nn.Module, scheme: Init, nonlinearity: str = "relu") -> str:
    """Initialise conv and linear weights; returns a description of what was done, for the run's params.

    kaiming: He-normal (fan_out for convs, as in torchvision's ResNet) with zero biases, norm layers at 1/0;
    torch: PyTorch's defaults left as they are (Kaiming-uniform with a=√5, i.e. U(±1/√fan_in)).
    """
    if scheme == "torch":
        return "torch default: kaiming_uniform(a=sqrt(5)) weights, U(±1/sqrt(fan_in)) biases"
    if scheme != "kaiming":
        raise ValueError(f"unknown init {scheme!r}; choose from kaiming, torch")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, ScratchConv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return f"kaiming_normal(fan_out, {nonlinearity}) convs, kaiming_normal(fan_in, linear) classifier, zero biases"


class Classifier(nn.Module):
    """[0, 1] images -> Normalize -> `body` (a feature map) -> global pool (average, or max) -> dropout -> linear
    (× `logit_scale`).

    The timm interface: `forward_features` returns the last feature map (what CAM needs), `forward_head(f,
    pre_logits=True)` the pooled features (what linear probes need); `num_features` is the pooled width.
    """

    def __init__(
        self,
        body: nn.Module,
        num_features: int,
        num_classes: int,
        in_chans: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dropout: float = 0.0,
        pool: Literal["avg", "max"] = "avg",
        fc_bias: bool = True,
        logit_scale: float = 1.0,
    ):
        super().__init__()
        default_mean, default_std = default_stats(in_chans)
        mean, std = mean or default_mean, std or default_std
        if not len(mean) == len(std) == in_chans:
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} need one value per input channel ({in_chans})")
        self.normalize = Normalize(mean, std)
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, num_classes, bias=fc_bias)
        self.logit_scale = logit_scale  # logits × this: a fixed temperature (airbench's 1/9)
        self.num_features = num_features
        self.num_classes = num_classes
        self.init_scheme = "torch default"  # builders overwrite this with what init_weights() reports

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.dropout(self.pool(features).flatten(1))
        if pre_logits:
            return pooled
        logits = self.fc(pooled)
        return logits if self.logit_scale == 1.0 else logits * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FlatClassifier(nn.Sequential):
    """[0, 1] images → Normalize → layers → logits, for models whose head is a flatten + MLP rather than a
    global pool (no `forward_features` feature map to speak of)."""

    def __init__(self, in_chans: int, mean, std, *layers: nn.Module):
        default_mean, default_std = default_stats(in_chans)
        super().__init__(Normalize(mean or default_mean, std or default_std), *layers)
        self.init_scheme = "torch default: kaiming_uniform(a=sqrt(5)) weights, U(±1/sqrt(fan_in)) biases"


def first_conv(model: nn.Module) -> nn.Module:
    """The first convolution of a model (whose filters E3 visualises): the first module with a 4-d weight."""
    for m in model.modules():
        weight = getattr(m, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 4:
            return m
    raise ValueError(f"{type(model).__name__} has no convolution")
