"""Images made by a model's input gradients: class maximisation (D8) and feature inversion (D9).

Against a standard network both give high-frequency patterns that convince the network and nobody else; against
an adversarially trained one (D10) the input gradients are perceptually aligned, and the same optimisation
draws recognisable shapes (Santurkar et al. 2019, "Image synthesis with a single robust classifier"; Engstrom
et al. 2019, "Adversarial robustness as a prior for learned representations"). So both functions regularise
lightly (random shifts) or not at all: what shows is the model's prior, not the regulariser's.

Images are N×C×H×W in [0, 1]; models take [0, 1] inputs (normalisation inside). The model's mode is restored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..explain import conv_outputs
from ..runtime import eval_mode


def maximise_class(model: nn.Module, start: torch.Tensor, classes: list[int], steps: int = 200, lr: float = 0.02,
                   jitter: int = 8, pull: float = 0.0, seed: int = 0) -> torch.Tensor:
    """D8: from `start` (1×C×H×W or one image per class), Adam ascent on log P(class | x) for each class, with
    random shifts of up to `jitter` pixels (so the change cannot hang on exact pixel positions) and optionally
    an L2 pull of weight `pull` toward the start (summed over pixels: 1e-3 already holds a 224² image back from
    any target). Returns one image per class."""
    g = torch.Generator().manual_seed(seed)
    origin = start.detach().expand(len(classes), *start.shape[1:]).clone()
    x = origin.clone().requires_grad_(True)
    target = torch.tensor(classes, device=start.device)
    optimizer = torch.optim.Adam([x], lr=lr)
    with eval_mode(model):
        for _ in range(steps):
            dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
            log_p = model(torch.roll(x, (dy, dx), dims=(2, 3))).log_softmax(1)
            loss = -log_p.gather(1, target[:, None]).sum() + pull * (x - origin).square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(0, 1)
    return x.detach()


def early_middle_late_layers(model: nn.Module, image: torch.Tensor) -> list[str]:
    """D9's three layers: the first, the middle and the last convolution (in the order a forward pass runs them)."""
    names = list(dict.fromkeys(name for name, _ in conv_outputs(model, image[:1])))
    if not names:
        raise ValueError(f"{type(model).__name__} has no convolutions to invert")
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


class _Capture:
    """Forward hooks that keep the outputs of the named modules, in the order of `names`."""

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no module named {', '.join(missing)} in {type(model).__name__}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: self.outputs.__setitem__(n, o))
                      for n in names]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def invert_features(model: nn.Module, image: torch.Tensor, layers: list[str], steps: int = 300, lr: float = 0.05,
                    seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """D9: for each layer, an image that starts as uniform noise and minimises ‖φ(x) − φ(image)‖² / ‖φ(image)‖²,
    φ the layer's output (Adam in pixel space, kept in [0, 1], no other prior). All layers are solved together
    as one batch, image i matched at layer i only, so a step costs one forward and backward pass.
    Returns the reconstructions (one per layer) and each one's final relative distance."""
    g = torch.Generator().manual_seed(seed)
    capture = _Capture(model, layers)
    try:
        with eval_mode(model):
            with torch.no_grad():
                model(image[:1])
                goals = [capture.outputs[n].detach() for n in layers]
            x = torch.rand(len(layers), *image.shape[1:], generator=g).to(image.device).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=lr)
            for _ in range(steps):
                model(x)
                distances = torch.stack([
                    F.mse_loss(capture.outputs[n][i:i + 1], goal, reduction="sum") / goal.square().sum().clamp_min(1e-12)
                    for i, (n, goal) in enumerate(zip(layers, goals))])
                optimizer.zero_grad()
                distances.sum().backward()
                optimizer.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
            with torch.no_grad():  # the distances of the final, clamped images
                model(x)
                final = [float(F.mse_loss(capture.outputs[n][i:i + 1], goal, reduction="sum") / goal.square().sum())
                         for i, (n, goal) in enumerate(zip(layers, goals))]
    finally:
        capture.remove()
    return x.detach(), final
