"""Models by name: `@register_model` on a builder function, `create_model(name, **kw)`, `list_models()`.

The timm pattern: a builder's keyword arguments are the model's configuration, so a wrong keyword is caught
here, with the valid ones listed, before any training starts.
"""
from __future__ import annotations

import fnmatch
import inspect
import typing
from typing import Callable

from torch import nn

from ..config import ConfigError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _BUILDERS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def model_kwargs(name: str) -> dict[str, object]:
    """The builder's keyword arguments and their defaults."""
    return {p.name: p.default for p in inspect.signature(_builder(name)).parameters.values()}


def model_hints(name: str) -> dict[str, object]:
    """The builder's keyword arguments' annotated types (to convert values that arrive as text or floats)."""
    return typing.get_type_hints(_builder(name))


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _BUILDERS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name`; an unknown name or keyword raises ConfigError naming it."""
    builder = _builder(name)
    accepted = inspect.signature(builder).parameters
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(f"model {name!r} has no option {key!r}; its options: {', '.join(accepted)}")
    try:
        return builder(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model {name!r} with {kwargs}: {e}") from e
