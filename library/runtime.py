"""Which device to run on, and seeding."""
from __future__ import annotations

import random

import numpy as np
import torch

from .config import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """'auto': the GPU when there is one, else the CPU; or an explicit torch device string ('cpu', 'cuda:1')."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device={name!r} is not a torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asked for, but torch sees no CUDA GPU here; use device=auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); data order and augmentation use their own torch.Generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
