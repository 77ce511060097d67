"""Attacks by name: the one name → builder table every job goes through, and `AttackSpec`, an attack with its
options as data (a job's config, a Ray task's argument) whose step sizes are fractions of ε, so one spec serves
every ε of a sweep. An unknown name is a `ConfigError` listing the valid ones, never a silent default.

    spec = AttackSpec("pgd", steps=10)
    attack = spec.build(model, eps=8 / 255)               # → PGD(model, 8/255, alpha=2/255, steps=10)
    AttackSpec("momentum_margin", eot_samples=8)          # the same attack on EOT over D2's transformations
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import ConfigError
from .attacks import EOT, FGSM, PGD, Attack, IterativeFGSM, MomentumMargin, ProbabilityAscent
from .transforms import D2_TRANSFORMS

Builder = Callable[[nn.Module, float, "AttackSpec"], Attack]  # (model, ε in [0, 1] units, options) -> attack

ATTACKS: dict[str, Builder] = {
    "fgsm": lambda model, eps, spec: FGSM(model, eps),
    "pgd": lambda model, eps, spec: PGD(model, eps, alpha=spec.step_ratio * eps, steps=spec.steps,
                                        random_start=spec.random_start, restarts=spec.restarts,
                                        early_stop=spec.early_stop),
    "iterative_fgsm": lambda model, eps, spec: IterativeFGSM(model, step=spec.step_ratio * eps, confidence=0.0,
                                                             max_steps=spec.steps, eps=eps, early_stop=spec.early_stop),
    "momentum_margin": lambda model, eps, spec: MomentumMargin(model, eps, steps=spec.steps,
                                                               early_stop=spec.early_stop),
    # always targeted, and always stops at the target: the seed's attack has no other mode
    "probability_ascent": lambda model, eps, spec: ProbabilityAscent(model, eps, lr=spec.lr, steps=spec.steps),
}
TARGETED_ONLY = ("probability_ascent",)


@dataclass(frozen=True)
class AttackSpec:
    """An attack by name (a key of `ATTACKS`) with its options; step sizes are fractions of ε."""

    name: str = "pgd"
    steps: int = 10  # iterations (pgd, iterative_fgsm, momentum_margin, probability_ascent)
    step_ratio: float = 0.25  # step size / ε (pgd, iterative_fgsm)
    restarts: int = 0  # pgd
    random_start: bool = True  # pgd
    lr: float = 1.0  # probability_ascent's λ
    targeted: bool = False  # attack toward `target_shift`-ed labels instead of away from the true ones
    target_shift: int = 1  # target = (label + shift) mod classes
    early_stop: bool = True  # stop on each sample once it succeeds (the baseline of the work benchmark: False)
    eot_samples: int = 0  # > 0: attack the average over this many of D2's random transformations per gradient (EOT)

    def __post_init__(self):
        if self.name not in ATTACKS:
            raise ConfigError(f"unknown attack {self.name!r}; valid attacks: {', '.join(sorted(ATTACKS))}")
        if self.steps < 1 or self.step_ratio <= 0 or self.restarts < 0 or self.eot_samples < 0:
            raise ConfigError(f"attack {self.name}: steps >= 1, step_ratio > 0, restarts >= 0 and eot_samples >= 0 "
                              f"(got {self.steps}, {self.step_ratio}, {self.restarts}, {self.eot_samples})")

    @property
    def label(self) -> str:
        return f"{self.name}{'_targeted' if self.targeted else ''}"

    def build(self, model: nn.Module, eps: float) -> Attack:
        """The attack on `model` at radius `eps` (in [0, 1] units), on EOT of `model` when `eot_samples` > 0."""
        if self.eot_samples:
            model = EOT(model, list(D2_TRANSFORMS.values()), samples=self.eot_samples)
        return ATTACKS[self.name](model, eps, self)

    def targets(self, labels: torch.Tensor, classes: int) -> torch.Tensor | None:
        """The targets of a targeted attack ((label + shift) mod classes), None for an untargeted one."""
        targeted = self.targeted or self.name in TARGETED_ONLY
        return (labels + self.target_shift) % classes if targeted else None
