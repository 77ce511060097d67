"""MNIST models: the CNN built only from the scratch layers (B2), and the two classifiers "model A" and
"model B" that the attack studies (D5–D7) compare: a convolutional net and a fully connected one, so the
comparison is between two genuinely different function classes, not two seeds of one."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .layers import Classifier, FlatClassifier, Init, init_weights
from .registry import register_model
from .scratch import Conv2d
from .scratch_pool import MaxPool2d


@register_model
def scratch_cnn(num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (16, 32, 64),
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, init: Init = "kaiming"):
    """B2, only B1's layers: per width a scratch 3×3 conv (stride 1, padding 1, bias) → ReLU, with a scratch
    2×2/2 max-pool between stages; global average pool, linear. 28×28 → 14×14 → 7×7 with the defaults.
    (Seed 002's Figure 1 is an image the text does not carry; this is a small CNN of the same kind.)"""
    if not widths:
        raise ValueError("need at least one width")
    layers: list[nn.Module] = []
    c = in_chans
    for i, width in enumerate(widths):
        if i > 0:
            layers.append(MaxPool2d(2, stride=2))
        layers += [Conv2d(c, width, 3, stride=1, padding=1, bias=True), nn.ReLU()]
        c = width
    model = Classifier(nn.Sequential(*layers), c, num_classes, in_chans, mean, std)
    model.init_scheme = init_weights(model, init, nonlinearity="relu")
    return model


@register_model
def mnist_a(num_classes: int = 10, in_chans: int = 1, image_size: int = 28, dropout: float = 0.25,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """Model A (D5–D7): PyTorch's MNIST example net: conv 32 3×3 → ReLU → conv 64 3×3 → ReLU → max-pool 2×2 →
    dropout → linear 128 → ReLU → dropout (×2) → linear."""
    side = (image_size - 4) // 2
    return FlatClassifier(
        in_chans, mean, std,
        nn.Conv2d(in_chans, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout),
        nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Dropout(2 * dropout), nn.Linear(128, num_classes),
    )


@register_model
def mnist_b(num_classes: int = 10, in_chans: int = 1, image_size: int = 28, hidden: int = 512,
            dropout: float = 0.2, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """Model B (D5–D7): a fully connected net, flatten → (linear `hidden` → ReLU → dropout) ×2 → linear."""
    return FlatClassifier(
        in_chans, mean, std,
        nn.Flatten(), nn.Linear(in_chans * image_size * image_size, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes),
    )
