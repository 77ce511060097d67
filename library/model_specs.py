"""Trained models named on the command line: `registered:<name>[:<version>]` (MLflow's model registry),
`run:<run id>` (a model a job logged into that run) or `init:<registry name>` (seeded random weights, for smoke
tests). Loaded on the driver, in eval mode; Ray tasks receive the modules, never MLflow connections."""
from __future__ import annotations

import torch
from torch import nn

from . import tracking
from .config import ConfigError
from .models import create_model


def load_model_spec(spec: str, num_classes: int, in_chans: int) -> nn.Module:
    kind, _, rest = spec.partition(":")
    if kind == "registered":
        name, _, version = rest.partition(":")
        return tracking.load_registered_model(name, int(version) if version else None)
    if kind == "run":
        return tracking.load_model(rest).eval()
    if kind == "init":
        torch.manual_seed(0)
        return create_model(rest, num_classes=num_classes, in_chans=in_chans).eval()
    raise ConfigError(f"model {spec!r}: use registered:<name>[:<version>], run:<run id> or init:<registry name>")
