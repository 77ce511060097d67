"""A search over several model families at once: each family its own space (its model options, and the training
recipe that suits it), and the family itself a searched choice.

    {"model": {"improved_cnn": {"width": [32, 64], "lr": (3e-4, 1e-2, "log"), ...},
               "airbench_cnn": {"width1": [32, 64], "optimizer": "sgd_1024", "lr": (5.0, 15.0, "log"), ...}},
     "epochs": [10, 20]}                           # entries beside "model" apply to (and win in) every family

A point picks `model`, then that family's parameters, named `<family>.<name>` so each keeps its own
distributions (an lr of 11.5 per 1,024 examples for airbench's SGD is not AdamW's 3e-3). Optuna searches it
define-by-run; Tune's random and grid searches cannot express the condition.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..config import ConfigError
from ..train.recipe import TrainConfig
from .space import IMPROVED_CNN_SPACE, Dimension, SearchSpace

# airbench94's recipe (Jordan, 2024) as the centre of its family's space: SGD-Nesterov at lr 11.5 and decay
# 0.0153 per 1,024 examples, momentum 0.85, norm biases at 64× the lr, label smoothing 0.2, a linear schedule
# from 0.2 up to 1 at 23% and down to 0.07, 2-pixel reflect translation, alternating flips, flip+translate TTA.
AIRBENCH_SPACE: dict[str, Any] = {
    "width1": [32, 64],  # channels of the three conv groups (airbench94: 64, 256, 256)
    "width2": [128, 256],
    "width3": [128, 256],
    "optimizer": "sgd_1024",
    "lr": (6.0, 20.0, "log"),  # per 1,024 examples
    "weight_decay": (0.008, 0.03, "log"),  # per 1,024 examples, decoupled
    "momentum": 0.85,
    "norm_bias_lr": 64.0,
    "batch_size": [512, 1024],
    "label_smoothing": (0.1, 0.3),
    "schedule": "linear",
    "warmup_start": 0.2,
    "final_lr": 0.07,
    "warmup_epochs": 2.3,  # 23% of 10 epochs
    "crop": "pad",
    "crop_pad": 2,
    "crop_pad_mode": "reflect",
    "flip_mode": "alternate",
    "tta": "flip_translate",
    "epochs": [10, 20],
}
DEFAULT_SPACE: dict[str, Any] = {"model": {"improved_cnn": IMPROVED_CNN_SPACE, "airbench_cnn": AIRBENCH_SPACE}}


def make_space(spec: Mapping[str, Any], base: TrainConfig):
    """A `FamilySpace` when `spec["model"]` maps several families to their spaces; a `SearchSpace` for one family
    (`{"model": {"improved_cnn": {...}}}`, any searcher can take it) or for a plain space over `base.model`."""
    families = spec.get("model")
    if not isinstance(families, Mapping):
        return SearchSpace(spec, base)
    if len(families) == 1:
        [(family, own)] = families.items()
        shared = {k: v for k, v in spec.items() if k != "model"}
        return SearchSpace({**own, **shared}, dataclasses.replace(base, model=family, model_kw={}))
    return FamilySpace(spec, base)


class FamilySpace:
    """The `SearchSpace` interface over several families (see the module docstring); every family's space is
    validated on construction, as a single space is."""

    def __init__(self, spec: Mapping[str, Any], base: TrainConfig):
        families, shared = spec["model"], {k: v for k, v in spec.items() if k != "model"}
        if not families:
            raise ConfigError("space.model: no model family to search")
        self.base, self.spec = base, dict(spec)
        self.spaces: dict[str, SearchSpace] = {}
        for family, own in families.items():
            if not isinstance(own, Mapping):
                raise ConfigError(f"space.model.{family}: a family's space is a mapping, got {own!r}")
            try:  # an entry beside "model" (a user's --space.epochs=[3]) overrides every family's own
                self.spaces[family] = SearchSpace({**own, **shared}, dataclasses.replace(base, model=family, model_kw={}))
            except ConfigError as e:
                raise ConfigError(f"space.model.{family}: {e} (an entry for one family only: "
                                  f"--space.model.{family}.<key>=...)") from None
        self.dimensions = [Dimension("model", "choice", tuple(self.spaces))] + [
            dataclasses.replace(d, name=f"{family}.{d.name}") for family, space in self.spaces.items()
            for d in space.dimensions]

    @property
    def searched(self) -> list[Dimension]:
        return [d for d in self.dimensions if d.kind != "fixed"]

    def fixed(self) -> dict[str, Any]:
        return {}  # each family's fixed values come with its point (define_by_run) or from its space (apply)

    def _split(self, point: Mapping[str, Any]) -> tuple[str, SearchSpace, dict[str, Any]]:
        family = str(point["model"])
        if family not in self.spaces:
            raise ConfigError(f"model {family!r} is not a family of this space: {', '.join(self.spaces)}")
        own = {k[len(family) + 1:]: v for k, v in point.items() if k.startswith(f"{family}.")}
        return family, self.spaces[family], own

    def apply(self, point: Mapping[str, Any]) -> TrainConfig:
        _, space, own = self._split(point)
        return space.apply(space.fixed() | own)

    def run_name(self, point: Mapping[str, Any]) -> str:
        family, space, own = self._split(point)
        return f"{family} {space.run_name(own)}"

    def define_by_run(self, trial) -> dict[str, Any]:
        family = trial.suggest_categorical("model", list(self.spaces))
        return self.spaces[family].define_by_run(trial, prefix=f"{family}.")

    def tune_space(self, grid: bool = False) -> dict[str, Any]:
        raise ConfigError("a space over several model families needs search=optuna (Tune's random and grid "
                          "searches cannot make a parameter depend on the family chosen)")

    def max_epochs(self) -> int:
        return max(space.max_epochs() for space in self.spaces.values())
