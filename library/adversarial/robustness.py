"""Robust accuracy against ε: ε-sweeps with robust flags or bisection, confidence intervals, the PGD table.

An ε-sweep runs ε in increasing order and attacks, at each ε, only the images still standing (classified
correctly, or for a targeted attack not yet pushed to the target, at every smaller ε). An image broken at ε is
counted broken at every larger ε, so the curve is monotone by construction, and the work at large ε shrinks
to the images that resist: each row records how many were attacked and how many backward passes it cost.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn

from ..runtime import eval_mode
from .attacks import PGD
from .registry import AttackSpec

def _batches(index: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """`index` in pieces of at most `size`; none when it is empty (split would give one empty piece)."""
    return index.split(size) if len(index) else ()


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits in eval mode, its own mode restored."""
    with eval_mode(model):
        return model(x)


def standing_at_start(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Images with something to attack at ε = 0: correctly classified (untargeted) / not already the target."""
    predicted = _logits(model, x).argmax(1)
    return predicted != target if target is not None else predicted == y


def _targets_and_standing(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor,
                          standing: torch.Tensor | None, classes: int | None):
    """A sweep's targets (None for an untargeted attack) and its flags: a copy of `standing` as given (a chunk
    continuing another), else the images with something to attack at ε = 0."""
    if classes is None:
        classes = int(_logits(model, x[:1]).shape[1])
    target = spec.targets(y, classes)
    return target, standing_at_start(model, x, y, target) if standing is None else standing.clone()


def sweep(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, eps_values: list[float],
          standing: torch.Tensor | None = None, classes: int | None = None,
          batch_size: int = 256) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Attack the standing images at each ε (ascending) with robust flags. Returns one row per ε (n, standing,
    attacked, backward passes, seconds) and the flags after the last ε, to continue with a next chunk."""
    target, standing = _targets_and_standing(model, spec, x, y, standing, classes)
    rows = []
    for eps in sorted(eps_values):
        attack = spec.build(model, eps)
        start, passes, attacked = time.perf_counter(), 0, int(standing.sum())
        index = standing.nonzero().flatten()
        for chunk in _batches(index, batch_size):
            result = attack(x[chunk], y[chunk], None if target is None else target[chunk])
            standing[chunk[result.success]] = False
            passes += int(result.backward_passes.sum())
        rows.append({"eps": eps, "n": len(x), "standing": int(standing.sum()), "attacked": attacked,
                     "backward_passes": passes, "seconds": time.perf_counter() - start})
    return rows, standing


def bisection_sweep(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, eps_values: list[float],
                    standing: torch.Tensor | None = None, classes: int | None = None,
                    batch_size: int = 256) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """The same curve as `sweep` from about log2(len(eps_values) + 1) attacks per image instead of up to one per
    ε: each image's breaking point on the grid is found by bisection. An image broken at ε counts as broken at
    every larger ε (its adversarial image is a witness, as in `sweep`); one that survives the attack at ε counts
    as standing at every smaller ε, where the attack searches a smaller ball (an assumption `sweep` does not
    make: its curve may then differ where the attack is not monotone in ε). Same rows and return as `sweep`."""
    grid = sorted(eps_values)
    target, standing = _targets_and_standing(model, spec, x, y, standing, classes)
    # an image stands at grid[k] for k < lo, is broken at grid[k] for k >= hi; bisect until lo == hi
    lo = torch.zeros(len(x), dtype=torch.long, device=x.device)
    hi = torch.where(standing, len(grid), 0).to(lo)
    work = [{"attacked": 0, "backward_passes": 0, "seconds": 0.0} for _ in grid]
    while (lo < hi).any():
        open_ = (lo < hi).nonzero().flatten()
        mid = (lo[open_] + hi[open_]) // 2
        for k in mid.unique().tolist():
            index = open_[mid == k]
            attack, start = spec.build(model, grid[k]), time.perf_counter()
            for chunk in _batches(index, batch_size):
                result = attack(x[chunk], y[chunk], None if target is None else target[chunk])
                hi[chunk[result.success]] = k
                lo[chunk[~result.success]] = k + 1
                work[k]["backward_passes"] += int(result.backward_passes.sum())
            work[k]["attacked"] += len(index)
            work[k]["seconds"] += time.perf_counter() - start
    rows = [{"eps": eps, "n": len(x), "standing": int((hi > k).sum()), **work[k]} for k, eps in enumerate(grid)]
    return rows, hi == len(grid)


def independent_work(model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, eps_values: list[float],
                     batch_size: int = 256) -> int:
    """The backward passes of the usual alternative: at every ε, a fresh attack on every correctly classified
    image, run for its whole budget (no robust flags, no early stopping), as a loop over ε of a library's
    attack does. The baseline of the work benchmark."""
    baseline = dataclasses.replace(spec, early_stop=False)
    target = spec.targets(y, int(_logits(model, x[:1]).shape[1]))
    start = standing_at_start(model, x, y, target)
    return sum(sweep(model, baseline, x, y, [eps], start, batch_size=batch_size)[0][0]["backward_passes"]
               for eps in eps_values)


def pgd_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_values: list[float], iterations: list[int],
              step_ratio: float = 0.25, batch_size: int = 256) -> list[dict[str, Any]]:
    """D11: top-1 and top-5 accuracy on PGD images for every (iterations, ε), no early stopping (the attack's
    full strength), with the wall time of each cell."""
    rows = []
    for steps in iterations:
        for eps in eps_values:
            attack = PGD(model, eps, alpha=step_ratio * eps, steps=steps, random_start=False, early_stop=False)
            start, top1, top5 = time.perf_counter(), 0, 0
            for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
                ranked = attack(xb, yb).probabilities.topk(5, dim=1).indices
                top1 += int((ranked[:, 0] == yb).sum())
                top5 += int((ranked == yb[:, None]).any(1).sum())
            rows.append({"iterations": steps, "eps": eps, "top1": top1 / len(x), "top5": top5 / len(x),
                         "seconds": time.perf_counter() - start})
    return rows
