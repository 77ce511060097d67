"""Where code runs: the device, seeding, the process settings CPU work needs, the code version, reading tensor
files without running code. Ray's side of it (a driver, a task's resources) is in cluster.py."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import platform
import pickle
import random
import re
import resource
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

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


_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc mallopt() parameters (malloc.h)
# the same three as glibc tunables, for a process's environment: (name, value), applied in this order
_MALLOC_TUNABLES = (("glibc.malloc.mmap_max", 0), ("glibc.malloc.trim_threshold", 2**30),
                    ("glibc.malloc.arena_max", 1))
MALLOC_TUNING_ENV = "CV_GLIBC_MALLOC_TUNING"
_malloc_tuned = False


def _malloc_tuning_applies() -> bool:
    return os.environ.get(MALLOC_TUNING_ENV, "1") != "0" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default every allocation above glibc's mmap threshold (a CNN's activations, tens of MB each) is a fresh
    mmap, unmapped again on free, so each training step page-faults it all back in zero-filled: measured here,
    ~5 million minor faults and a third of the CPU time in the kernel per epoch of 8k CIFAR images, and 550-760
    instead of 900 images/s. The fix CPU-training guides give is a preloaded jemalloc/tcmalloc; this is the same
    effect with no preload. A thread other than the main one gets an arena of its own, which hands freed memory
    back whatever the settings (madvise), so there is one arena: Tune runs a function trainable in a thread, and
    training there took 1.8 million faults and 1.2x the time per epoch with a second arena, none with one. The
    arena limit holds only for arenas not yet made, hence `malloc_env` for the processes this one starts. Once
    per process, Linux/glibc only; CV_GLIBC_MALLOC_TUNING=0 turns it off. Returns whether it is in effect."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not _malloc_tuning_applies():
        return False
    libc = ctypes.CDLL("libc.so.6")
    _malloc_tuned = bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
                         and libc.mallopt(_M_ARENA_MAX, 1))
    return _malloc_tuned


def malloc_env() -> dict[str, str]:
    """`keep_freed_memory()` as glibc tunables, for the environment of processes this one starts (Ray's workers):
    there it is in effect from their first allocation, in every thread. A user's own GLIBC_TUNABLES come first
    and a setting they made is not overridden. Empty where it is turned off or the libc is not glibc."""
    if not _malloc_tuning_applies():
        return {}
    own = os.environ.get("GLIBC_TUNABLES", "")
    theirs = {item.split("=")[0] for item in own.split(":") if item}
    ours = [f"{name}={value}" for name, value in _MALLOC_TUNABLES if name not in theirs]
    return {"GLIBC_TUNABLES": ":".join(filter(None, (own, *ours)))}


def collect_after_imports() -> None:
    """Turn Python's garbage collector (back) on with what exists now out of its reach. A job's imports (torch,
    MLflow, Ray, torchvision, matplotlib) build over a million objects that live as long as the process; with the
    collector on, they set off ~1,200 collections while they load (~1.1 of 5.8 CPU-s measured here) and are
    scanned again by every full collection after, the last one at exit (~0.8 s). A job pauses the collector
    before its imports (`gc.disable()` in its header, run as a script) and `run_job` calls this once they are
    done: `gc.freeze()` moves them to the permanent generation, which no collection visits. The cyclic garbage the
    imports leave (~10k objects, ~2 MB with torch, MLflow, Ray and matplotlib) is frozen with them: collecting it
    first would cost a full collection, ~0.4 s."""
    gc.freeze()
    gc.enable()


THREADS_ENV = "CV_THREADS"  # "auto" (the default: CoreShare decides) or a fixed torch thread count


class CoreShare:
    """torch's thread count kept to the cores other processes leave this one, measured after a second, then every
    `every_s` seconds: the busy time of this process's CPUs (/proc/stat) less its own CPU time (coarse at 100
    ticks a second, but enough to tell a busy core). OpenMP's threads wait for each other at the end of every
    parallel region, so with one of them sharing a core with another busy process each region waits for that
    thread's next time slice: A1 trained at 27 images/s on 2 threads beside a busy process and at 42-62 on 1.
    Never above the count it started with (what Ray reserved, or all cores); Linux only. $CV_THREADS=N fixes the
    count instead."""

    def __init__(self, every_s: float = 5.0):
        fixed = os.environ.get(THREADS_ENV, "auto")
        if fixed != "auto":  # the user's fixed count: set once, never adjusted
            if not fixed.isdigit() or int(fixed) < 1:
                raise ConfigError(f"{THREADS_ENV}={fixed!r}: give a thread count (1, 2, ...) or auto")
            torch.set_num_threads(int(fixed))
        self.most = self.threads = torch.get_num_threads()
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.every_s, self.wait_s = every_s, min(1.0, every_s)  # the first look after a second
        self.last = self._sample() if fixed == "auto" else None

    def _sample(self) -> tuple[float, float, float] | None:
        """(now, busy seconds of this process's CPUs, this process's CPU seconds), None where unreadable."""
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            name, *ticks = line.split()
            if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in self.cpus:
                counts = [int(t) for t in ticks[:8]]
                busy += sum(counts) - counts[3] - counts[4]  # all but idle and iowait
        me = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), me.ru_utime + me.ru_stime

    def resume(self) -> None:
        """Measure afresh from now: what other processes did while this one paused (e.g. between benchmark
        rounds, when another contender's worker processes ran) is not held against it."""
        if self.last is not None:
            self.last = self._sample()

    def adjust(self) -> int:
        """Call it often (it measures at most once a second); returns the thread count now in use."""
        if self.last is None or self.most == 1 or time.monotonic() - self.last[0] < self.wait_s:
            return self.threads
        now, self.wait_s = self._sample(), self.every_s
        seconds, cores = now[0] - self.last[0], len(self.cpus)
        busy = (now[1] - self.last[1]) / seconds
        others = max(0.0, busy - (now[2] - self.last[2]) / seconds)
        self.last = now
        if busy >= 0.9 * cores and others < cores:
            # every core busy: the scheduler shares them among all runnable threads, so others got less than they
            # want. With d cores wanted beside our t threads each thread gets cores / (t + d), and others were
            # seen using d · cores / (t + d): a process spinning on a core shows as 2/3 of one beside 2 threads
            others = others * self.threads / (cores - others)
        # a thread less for each core others want at least three-quarters of: Ray's and Tune's own processes
        # (a few tenths of a core) cost no thread, a process spinning on a core does
        threads = max(1, min(self.most, cores - math.floor(others + 0.25)))
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
        return threads


def faster_memory_format(step: Callable[[torch.memory_format], Any], rounds: int = 3) -> torch.memory_format:
    """Of the contiguous and channels_last formats, the one `step(format)` runs faster in: interleaved, the best
    of `rounds - 1` timings each after a warm-up. On the CPU the answer depends on the network (oneDNN's kernels
    for NHWC are faster for some layer mixes and slower for others), so it is measured, not assumed."""
    seconds: dict[torch.memory_format, list[float]] = {torch.contiguous_format: [], torch.channels_last: []}
    for _ in range(rounds):
        for fmt in seconds:
            start = time.perf_counter()
            step(fmt)
            seconds[fmt].append(time.perf_counter() - start)
    return min(seconds, key=lambda fmt: min(seconds[fmt][1:]))


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode inside the block, its own mode (training or not) restored after, even on error."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


GIT_SHA_ENV = "CV_GIT_SHA"  # set by launchers where the code travels without its .git (ray job submit)


def git_sha() -> str:
    """The code version: $CV_GIT_SHA when set, else this checkout's HEAD, else "unknown"."""
    if os.environ.get(GIT_SHA_ENV):
        return os.environ[GIT_SHA_ENV]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class UnreadableFileError(ValueError):
    """A file the project needs (weights, a checkpoint, cached features) is missing or refused: cut short, another
    format, or holding code (a tampered file on shared storage). Nothing in it was run."""


def load_tensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers, never code. Raises UnreadableFileError saying
    why a file is refused: the code it would run (a tampered file; never loaded here, whatever the source), or
    that it is cut short or not a torch file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's text advises weights_only=False: not for files we read back
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it refers to {found.group(1)}" if found else "a pickle torch's restricted loader cannot read"
        raise UnreadableFileError(f"{path} holds more than tensors ({what}); refused, nothing in it was run") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise UnreadableFileError(f"{path} is not a readable torch file (cut short, or another format): "
                         f"{(str(e).splitlines() or [type(e).__name__])[0][:200]}") from e

