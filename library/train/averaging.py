"""Averages of the weights that training keeps beside the model: an exponential moving average (for evaluation)
and Lookahead's slow weights (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back").

Both cover every floating-point tensor of the state dict (parameters and BatchNorm's running statistics), live
on the model's device, and are part of the training checkpoint, so a resumed run continues them exactly.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


class EMA:
    """ema ← decay · ema + (1 − decay) · weights after every step; `applied(model)` evaluates with it."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start the average at `model`'s current weights."""
        self.average = {k: v.detach().clone() for k, v in _float_state(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in _float_state(model).items():
            self.average[key].lerp_(value, 1 - self.decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """`model` holding the averaged weights inside the block, its own restored after (even on error)."""
        own = {k: v.detach().clone() for k, v in _float_state(model).items()}
        model.load_state_dict(self.average, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(own, strict=False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.average.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            self.average[key].copy_(value)


class Lookahead:
    """Every `steps` optimiser steps: slow ← slow + alpha · (fast − slow), then fast ← slow."""

    def __init__(self, model: nn.Module, steps: int, alpha: float):
        self.steps, self.alpha = steps, alpha
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start the slow weights at `model`'s current ones."""
        self.slow = {k: v.detach().clone() for k, v in _float_state(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimiser step number `step` (1-based)."""
        if step % self.steps:
            return
        fast = _float_state(model)
        for key, slow in self.slow.items():
            slow.lerp_(fast[key], self.alpha)
            fast[key].copy_(slow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.slow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            self.slow[key].copy_(value)
