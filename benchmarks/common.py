"""Shared by the benchmarks: timing with warm-up and interleaved repeats, device naming, result files.

This CPU's second core is sometimes contended, so every benchmark interleaves its contenders over several
rounds and reports medians and the ratio of medians, never a single absolute time.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def preload_torch_dynamo() -> None:
    """Import torch._dynamo before anything is timed: torch's optimisers import it on their first use (~1.5 s),
    a one-off that belongs to neither contender's timing (reading CIFAR-10 imported it, through torchvision, until
    the data code stopped importing torchvision)."""
    import torch._dynamo  # noqa: F401


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def timed(fn: Callable[[], int], device: torch.device) -> float:
    """Run `fn` (which returns how many images it processed) once; images per second."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    n = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def interleave(contenders: dict[str, Callable[[], int]], device: torch.device, rounds: int) -> dict[str, dict]:
    """One untimed warm-up call each, then `rounds` rounds of one timed call each; median and all samples."""
    for fn in contenders.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(timed(fn, device))
    return summarize(samples)


def summarize(samples: dict[str, list[float]]) -> dict[str, dict]:
    """Per contender: the median images/s and every sample."""
    return {name: {"images_per_s": statistics.median(s), "samples": [round(v, 1) for v in s]}
            for name, s in samples.items()}


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    slug = result["device"].split(",")[0].replace(" ", "_").lower()
    path = RESULTS / f"{name}-{slug}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


@contextlib.contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """`n` other processes spinning on the CPU for the block's duration: a machine shared with another job."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@contextlib.contextmanager
def threads(count: str) -> Iterator[None]:
    """Torch's thread count for the block: "auto" (the loader's governor, `runtime.CoreShare`) or a fixed number,
    as a user sets it ($CV_THREADS)."""
    from library.runtime import THREADS_ENV

    before = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = str(count)
    try:
        yield
    finally:
        if before is None:
            del os.environ[THREADS_ENV]
        else:
            os.environ[THREADS_ENV] = before
