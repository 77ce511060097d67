"""Scoring a model: loss and accuracy (optionally with test-time augmentation), and accuracy under PGD.

Test-time augmentation (airbench's levels): `flip` averages the logits of each image and its mirror; `flip_translate`
averages that with the same for the image shifted one pixel up-left and one down-right (reflect padding). Each
level costs 2× and 6× the forward passes of none.
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..adversarial.attacks import PGD
from ..data import DeviceLoader, ImageSet
from ..runtime import eval_mode

TTA = Literal["none", "flip", "flip_translate"]
# Images per forward pass where a config leaves it at 0, by device type. On the CPU a larger batch is no faster
# (2,000 CIFAR images, improved_cnn and airbench_cnn alike, took the same time at 256 as at 1,024) but it holds more
# activations: at 1,024 a new process faulted in 175-208k pages to evaluate (peak RSS ~1.4 GB), at 256 54-64k
# (~0.8 GB). A new process is every Tune trial and Ray task, and on this VM such first touches cost 2-13 µs a page
# (the most where the host must back the page first: 3 s of kernel time for one evaluation). A GPU wants large ones.
CPU_EVAL_BATCH, GPU_EVAL_BATCH = 256, 1024


def eval_batch_size(requested: int, device: torch.device) -> int:
    """`requested`, or where it is 0 the default for `device`: CPU_EVAL_BATCH on the CPU, else GPU_EVAL_BATCH."""
    return requested or (CPU_EVAL_BATCH if device.type == "cpu" else GPU_EVAL_BATCH)


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tta_logits(model: nn.Module, x: torch.Tensor, tta: TTA = "none") -> torch.Tensor:
    """The logits of `model` on the [0, 1] images `x` (B×C×H×W), averaged over the `tta` views."""
    if tta == "none":
        return model(x)
    mirrored = 0.5 * (model(x) + model(x.flip(3)))
    if tta == "flip":
        return mirrored
    if tta != "flip_translate":
        raise ValueError(f"unknown tta {tta!r}; choose from none, flip, flip_translate")
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
    return 0.5 * mirrored + 0.25 * sum(0.5 * (model(s) + model(s.flip(3))) for s in shifted)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 0, amp: bool = True,
             tta: TTA = "none") -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` on `data` (moved to the model's device), in eval mode with
    `tta`, `batch_size` images at a time (0: the device's default); restores the model's mode."""
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    with eval_mode(model):
        for x, y in DeviceLoader(data.to(device), eval_batch_size(batch_size, device)):
            with autocast(device, amp):
                logits = tta_logits(model, x, tta)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    n = max(1, len(data))
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


def robust_accuracy(model: nn.Module, data: ImageSet, cfg) -> float:
    """Accuracy on PGD images (radius `cfg.robust_eps`, `cfg.adv_steps` steps from a seeded random start) of the
    first `cfg.robust_images` images of `data` (`cfg`: a TrainConfig); the model's mode is restored."""
    device = next(model.parameters()).device
    eps = cfg.robust_eps
    attack = PGD(model, eps, alpha=cfg.adv_step_ratio * eps, steps=cfg.adv_steps, seed=cfg.seed)
    n = cfg.robust_images
    subset = ImageSet(data.images[:n], data.labels[:n]).to(device)
    correct = 0
    for x, y in DeviceLoader(subset, eval_batch_size(cfg.eval_batch_size, device)):
        with autocast(device, cfg.amp):
            correct += int((attack(x, y).probabilities.argmax(1) == y).sum())
    return correct / max(1, len(subset))
