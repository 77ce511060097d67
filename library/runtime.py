"""Which device to run on, seeding, and the process settings that CPU training needs."""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
from typing import Iterator

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


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt() parameters (malloc.h)
MALLOC_TUNING_ENV = "CV_GLIBC_MALLOC_TUNING"
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default every allocation above glibc's mmap threshold (a CNN's activations, tens of MB each) is a fresh
    mmap, unmapped again on free, so each training step page-faults it all back in zero-filled: measured here,
    ~5 million minor faults and a third of the CPU time in the kernel per epoch of 8k CIFAR images, and 550-760
    instead of 900 images/s. The fix CPU-training guides give is a preloaded jemalloc/tcmalloc; this is the same
    effect with no preload. Once per process, Linux/glibc only; CV_GLIBC_MALLOC_TUNING=0 turns it off.
    Returns whether it is in effect."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if os.environ.get(MALLOC_TUNING_ENV, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    _malloc_tuned = bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    return _malloc_tuned


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode inside the block, its own mode (training or not) restored after, even on error."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)
