"""Per-iteration training metrics: the loss, the batch accuracy and the gradient magnitude G of chosen layers.

G = maxᵢ |∂L/∂wᵢ| over a layer's weights (A6) is read by a hook on the weight that fires when backward
computes its gradient, so it costs no second backward pass and sees exactly the gradient the optimiser uses.
Values stay on the device as 0-d tensors and are read back once per epoch (`flush`), never with a sync per step.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.scratch import Conv2d as ScratchConv2d


def conv_layers(model: nn.Module) -> list[nn.Module]:
    """The model's convolutions in registration order (= forward order for the registry's models)."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, ScratchConv2d))]


class GradientMagnitude:
    """G = max|∂L/∂w| of each named weight, captured by a gradient hook at every backward pass.

    `latest()` returns the values of the last backward (0-d tensors on the weights' device); `remove()` takes
    the hooks off. A layer whose weight got no gradient in the last pass reports nothing.
    """

    def __init__(self, weights: dict[str, torch.Tensor]):
        self._latest: dict[str, torch.Tensor] = {}
        self._handles = [w.register_hook(self._hook(name)) for name, w in weights.items()]

    def _hook(self, name: str):
        def record(grad: torch.Tensor) -> None:
            self._latest[name] = grad.detach().abs().amax().float()
        return record

    def latest(self) -> dict[str, torch.Tensor]:
        out, self._latest = self._latest, {}
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    @classmethod
    def first_and_last_conv(cls, model: nn.Module) -> "GradientMagnitude":
        """Hooks on the first and the last convolution of `model` (metrics grad_first, grad_last); none on a
        model without convolutions."""
        convs = conv_layers(model)
        return cls({"grad_first": convs[0].weight, "grad_last": convs[-1].weight} if convs else {})


class StepRecorder:
    """Rows of per-iteration metrics: step, train_loss, train_acc (of the batch, as trained on) and, for a model
    with convolutions, grad_first and grad_last."""

    def __init__(self, model: nn.Module):
        self.gradients = GradientMagnitude.first_and_last_conv(model)
        self._pending: list[tuple[int, dict[str, torch.Tensor]]] = []

    def record(self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Call after backward (the hooks have fired) for optimiser step number `step` (counted from 1)."""
        values = {"train_loss": loss.detach().float(), "train_acc": (logits.argmax(1) == labels).float().mean()}
        self._pending.append((step, values | self.gradients.latest()))

    def flush(self) -> list[dict[str, float]]:
        """The rows recorded since the last flush, as Python numbers: one device-to-host copy."""
        if not self._pending:
            return []
        names = list(self._pending[0][1])
        stacked = torch.stack([torch.stack([values[n] for n in names]) for _, values in self._pending]).cpu().tolist()
        rows = [{"step": step, **dict(zip(names, row))} for (step, _), row in zip(self._pending, stacked)]
        self._pending = []
        return rows

    def close(self) -> None:
        self.gradients.remove()
