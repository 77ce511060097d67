"""A search space as plain data, checked before anything runs, and the forms Optuna and Tune take it in.

Each entry maps a parameter to one of
    [a, b, c]               a categorical choice (numbers, strings, booleans),
    (low, high)             a uniform range (integers if both ends are integers),
    (low, high, "log")      a log-uniform range,
    value                   a fixed value (not searched).
A parameter is any `TrainConfig` field (lr, weight_decay, batch_size, label_smoothing, epochs, ...) or any
option of the model being searched (for `improved_cnn`: depth, kernel, norm, act, residual, dropout), plus two
derived ones that build `widths`: `width` (channels of the first stage) and `stages` (each doubling it).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from ..config import ConfigError, coerce
from ..models import create_model, model_hints, model_kwargs
from ..train.recipe import TrainConfig

DERIVED = ("width", "stages")  # become the model's `widths`
NOT_SEARCHABLE = ("model", "model_kw", "device", "seed")

IMPROVED_CNN_SPACE: dict[str, Any] = {  # A3's family; families.DEFAULT_SPACE searches it beside airbench's
    "width": [32, 64, 96],  # channels of the first stage
    "stages": [2, 3],  # stages, each after a 2×2 max-pool and twice as wide as the last
    "depth": [1, 2],  # blocks per stage
    "kernel": [3, 5, 7],  # first conv's kernel
    "norm": ["bn", "gn"],
    "act": ["relu", "mish", "silu"],
    "residual": [True, False],
    "dropout": (0.0, 0.3),
    "lr": (3e-4, 1e-2, "log"),
    "weight_decay": (1e-3, 1e-1, "log"),
    "batch_size": [128, 256, 512],
    "label_smoothing": (0.0, 0.2),
    "epochs": [10, 20],  # the epochs budget of a trial; ASHA may stop it sooner
}


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # "choice", "int", "float", "fixed"
    values: tuple = ()  # choices, or (low, high), or (value,)
    log: bool = False


def dimension(name: str, spec: Any) -> Dimension:
    """Parse one entry of a space (see the module docstring)."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"space.{name}: an empty list of choices")
        if not all(isinstance(v, (bool, int, float, str)) for v in spec):
            raise ConfigError(f"space.{name}: choices must be numbers, strings or booleans, got {spec!r}")
        return Dimension(name, "choice", tuple(spec))
    if isinstance(spec, tuple):
        log = len(spec) == 3 and spec[2] == "log"
        if len(spec) not in (2, 3) or (len(spec) == 3 and not log) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec[:2]):
            raise ConfigError(f"space.{name}: a range is (low, high) or (low, high, 'log'), got {spec!r}")
        low, high = spec[:2]
        if not low < high or (log and low <= 0):
            raise ConfigError(f"space.{name}: need low < high (and low > 0 for 'log'), got {spec!r}")
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        return Dimension(name, kind, (low, high), log)
    return Dimension(name, "fixed", (spec,))


SHORT_NAMES = {"width": "w", "stages": "s", "depth": "d", "kernel": "k"}  # in run names: w64-s3-d2-k5


class SearchSpace:
    """A validated space for training `model` from `base`: every point of it is a working `TrainConfig`."""

    def __init__(self, spec: Mapping[str, Any], base: TrainConfig):
        self.base = base
        self.model_options = set(model_kwargs(base.model)) - {"num_classes", "in_chans"}
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(NOT_SEARCHABLE)
        known = train_fields | self.model_options | (set(DERIVED) if "widths" in self.model_options else set())
        for name in spec:
            if name not in known:
                raise ConfigError(f"unknown search-space key {name!r} for model {base.model!r}; searchable: "
                                  f"{', '.join(sorted(known))}")
        self.dimensions = [dimension(name, value) for name, value in spec.items()]
        self.spec = dict(spec)
        for point in self._corners():  # the extremes of every dimension must make a valid config and model
            try:
                self.apply(point)
            except ConfigError as e:
                raise ConfigError(f"search space: {e}") from None

    @property
    def searched(self) -> list[Dimension]:
        return [d for d in self.dimensions if d.kind != "fixed"]

    def fixed(self) -> dict[str, Any]:
        return {d.name: d.values[0] for d in self.dimensions if d.kind == "fixed"}

    def _corners(self) -> list[dict[str, Any]]:
        points = [{d.name: d.values[0] for d in self.dimensions}, {d.name: d.values[-1] for d in self.dimensions}]
        for d in self.dimensions:  # and each choice once, on top of the first corner
            points += [{**points[0], d.name: v} for v in d.values if d.kind == "choice"]
        return points

    def apply(self, point: Mapping[str, Any]) -> TrainConfig:
        """The `TrainConfig` for one sampled point (a trial's config); values are type-checked."""
        train_changes: dict[str, Any] = {}
        model_kw = dict(self.base.model_kw)
        hints, options = typing.get_type_hints(TrainConfig), model_hints(self.base.model)
        point = {k: v.item() if hasattr(v, "item") else v for k, v in point.items()}  # numpy scalars from Tune
        for name, value in point.items():
            if name in self.model_options:  # typed as the builder declares (an int width read back as 8.0)
                model_kw[name] = coerce(f"space.{name}", value, options[name]) if name in options else value
            elif name not in DERIVED:
                train_changes[name] = coerce(f"space.{name}", value, hints[name])
        if "width" in point or "stages" in point:
            stages = int(point.get("stages", len(model_kw.get("widths", (0, 0, 0)))))
            width = int(point.get("width", model_kw.get("widths", (64,))[0]))
            model_kw["widths"] = tuple(width * 2**i for i in range(stages))
        cfg = dataclasses.replace(self.base, **train_changes, model_kw=model_kw)
        create_model(cfg.model, **model_kw)  # raises ConfigError naming a bad option or value
        return cfg

    def run_name(self, point: Mapping[str, Any]) -> str:
        """A readable name for a trial's run from its searched values: the architecture as `w16-s2-d1-k3-bn-relu`
        (choices by value, booleans by name), then the numbers, `lr=0.0032 batch_size=64`."""
        words, numbers = [], []
        for d in self.searched:
            value = point.get(d.name)
            value = value.item() if hasattr(value, "item") else value  # numpy scalars from Tune
            if d.name in SHORT_NAMES:
                words.append(f"{SHORT_NAMES[d.name]}{value}")
            elif isinstance(value, bool):
                words.append(d.name if value else f"no_{d.name}")
            elif isinstance(value, str):
                words.append(value)
            else:
                numbers.append(f"{d.name}={value:.2g}" if isinstance(value, float) else f"{d.name}={value}")
        return " ".join(["-".join(words)] * bool(words) + numbers)

    def define_by_run(self, trial, prefix: str = "") -> dict[str, Any]:
        """Optuna's define-by-run form (`OptunaSearch(space=...)`): suggests every searched dimension and
        returns the fixed ones as constants, each named `prefix + name`."""
        for d in self.searched:
            name = prefix + d.name
            if d.kind == "choice":
                trial.suggest_categorical(name, list(d.values))
            elif d.kind == "int":
                trial.suggest_int(name, d.values[0], d.values[1], log=d.log)
            else:
                trial.suggest_float(name, d.values[0], d.values[1], log=d.log)
        return {prefix + k: v for k, v in self.fixed().items()}

    def tune_space(self, grid: bool = False) -> dict[str, Any]:
        """Tune's param_space for its random (or grid) search."""
        from ray import tune

        out: dict[str, Any] = {}
        for d in self.dimensions:
            if d.kind == "fixed":
                out[d.name] = d.values[0]
            elif d.kind == "choice":
                out[d.name] = tune.grid_search(list(d.values)) if grid else tune.choice(list(d.values))
            elif grid:
                raise ConfigError(f"space.{d.name}: a grid search takes lists of values, not the range {d.values}")
            elif d.kind == "int":
                out[d.name] = (tune.lograndint if d.log else tune.randint)(d.values[0], d.values[1] + 1)
            else:
                out[d.name] = (tune.loguniform if d.log else tune.uniform)(*d.values)
        return out

    def max_epochs(self) -> int:
        d = next((d for d in self.dimensions if d.name == "epochs"), None)
        return int(max(d.values)) if d is not None else self.base.epochs


def optuna_distributions(dimensions: list[Dimension]) -> dict[str, Any]:
    """The searched dimensions as Optuna distributions (e.g. to rebuild a study from finished trials)."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for d in dimensions:
        if d.kind == "choice":
            out[d.name] = od.CategoricalDistribution(list(d.values))
        elif d.kind == "int":
            out[d.name] = od.IntDistribution(d.values[0], d.values[1], log=d.log)
        elif d.kind == "float":
            out[d.name] = od.FloatDistribution(d.values[0], d.values[1], log=d.log)
    return out
