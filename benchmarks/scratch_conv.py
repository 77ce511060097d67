"""B3: the scratch convolution (unfold + matmul, `library.models.scratch`) against PyTorch's `F.conv2d`, on the
same shapes: forward+backward time and memory.

Per shape, each implementation runs forward, then backward for the input, weight and bias gradients;
implementations are interleaved over rounds and the medians compared. Memory, three ways:
  - saved: bytes the op keeps between forward and backward (saved-tensor hooks; exact, any device);
  - peak: the most memory in use above the starting point during one forward+backward, gradients included:
    on CUDA `max_memory_allocated`; on the CPU (Linux) the resident-set high-water mark, reset before each
    measurement through /proc/self/clear_refs, with glibc told to map every large tensor freshly.
Goal: scratch time / built-in time <= 3.

    python benchmarks/scratch_conv.py [--batch=128] [--rounds=5] [--device=auto]
"""
from __future__ import annotations

import ctypes
import gc
import multiprocessing as mp
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import device_name, save  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config as BaseConfig  # noqa: E402
from library.models import conv2d  # noqa: E402
from library.runtime import keep_freed_memory, pick_device  # noqa: E402

# (name, in channels, out channels, image side, kernel, stride, padding): scratch_cnn's three convs on MNIST,
# a CIFAR-sized 3×3 layer, a 5×5 layer and a strided one
SHAPES = [
    ("mnist conv1 1→16 28² k3", 1, 16, 28, 3, 1, 1),
    ("mnist conv2 16→32 14² k3", 16, 32, 14, 3, 1, 1),
    ("mnist conv3 32→64 7² k3", 32, 64, 7, 3, 1, 1),
    ("cifar 64→64 32² k3", 64, 64, 32, 3, 1, 1),
    ("cifar 32→32 32² k5", 32, 32, 32, 5, 1, 2),
    ("cifar 64→128 32² k3 s2", 64, 128, 32, 3, 2, 1),
]
IMPLS = {"scratch": conv2d, "builtin": F.conv2d}
_M_MMAP_THRESHOLD = -3  # a glibc mallopt parameter


@dataclass(frozen=True)
class Config(BaseConfig):
    batch: int = 128  # images per forward+backward
    rounds: int = 5  # timed repeats per implementation and shape, interleaved, after one warm-up each
    device: str = "auto"


def _tensors(shape: tuple, batch: int, device: torch.device):
    _, c_in, c_out, side, k, _, _ = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c_in, side, side, generator=g).to(device).requires_grad_()
    w = (torch.randn(c_out, c_in, k, k, generator=g) * 0.1).to(device).requires_grad_()
    b = torch.zeros(c_out).to(device).requires_grad_()
    return x, w, b


def _step(impl: str, shape: tuple, x, w, b) -> None:
    out = IMPLS[impl](x, w, b, shape[5], shape[6])
    out.backward(torch.ones_like(out))


def _seconds(impl: str, shape: tuple, tensors, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    _step(impl, shape, *tensors)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _saved_bytes(impl: str, shape: tuple, x, w, b) -> int:
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = IMPLS[impl](x, w, b, shape[5], shape[6])
    out.backward(torch.ones_like(out))
    return total


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _use_fresh_pages_for_large_allocations() -> None:
    """A fixed 128 KiB mmap threshold: every tensor of note is a fresh mapping, unmapped on free, so the
    resident-set high-water mark sees it (glibc's default threshold adapts upwards and recycles heap memory)."""
    ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def _peak_bytes(impl: str, shape: tuple, tensors, device: torch.device) -> int:
    """Bytes above the starting point at the peak of one forward+backward (gradients included)."""
    for t in tensors:
        t.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _step(impl, shape, *tensors)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set (VmHWM) to the current one
    base = _status_kib("VmRSS")
    _step(impl, shape, *tensors)
    return (_status_kib("VmHWM") - base) * 1024


def _memory(shape: tuple, batch: int, device_type: str) -> dict[str, float]:
    device = torch.device(device_type)
    if device.type == "cpu":
        _use_fresh_pages_for_large_allocations()
    tensors = _tensors(shape, batch, device)
    row = {}
    for impl in IMPLS:
        _step(impl, shape, *tensors)  # warm-up: lazily allocated state is not the op's memory
        row[f"{impl}_saved_mb"] = round(_saved_bytes(impl, shape, *tensors) / 2**20, 2)
        row[f"{impl}_peak_mb"] = round(_peak_bytes(impl, shape, tensors, device) / 2**20, 2)
    return row


def main(cfg: Config) -> dict:
    device = pick_device(cfg.device)
    keep_freed_memory()  # time both as training runs them (see library.runtime)
    rows = []
    for shape in SHAPES:
        tensors = _tensors(shape, cfg.batch, device)
        for impl in IMPLS:  # warm-up
            _step(impl, shape, *tensors)
        samples: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for _ in range(cfg.rounds):
            for impl in IMPLS:
                samples[impl].append(_seconds(impl, shape, tensors, device))
        row = {"shape": shape[0]}
        for impl in IMPLS:
            row[f"{impl}_ms"] = round(1000 * statistics.median(samples[impl]), 3)
        row["time_ratio"] = round(row["scratch_ms"] / row["builtin_ms"], 2)
        rows.append(row)
    for shape, row in zip(SHAPES, rows):
        if device.type == "cpu":  # a fresh process: this one's heap, grown by the timing, would hide new pages
            with mp.get_context("spawn").Pool(1) as pool:
                row.update(pool.apply(_memory, (shape, cfg.batch, "cpu")))
        else:
            row.update(_memory(shape, cfg.batch, device.type))
        row["peak_ratio"] = round(row["scratch_peak_mb"] / max(row["builtin_peak_mb"], 1e-3), 2)
        print(f"{row['shape']:<26} scratch {row['scratch_ms']:>8.2f} ms  built-in {row['builtin_ms']:>8.2f} ms  "
              f"ratio {row['time_ratio']:>5.2f}   peak {row['scratch_peak_mb']:>7.1f} vs {row['builtin_peak_mb']:>7.1f} MB"
              f"   saved {row['scratch_saved_mb']:.1f} vs {row['builtin_saved_mb']:.1f} MB", flush=True)
    total = {impl: sum(r[f"{impl}_ms"] for r in rows) for impl in IMPLS}
    result = {"benchmark": "scratch_conv", "device": device_name(device), "config": vars(cfg), "shapes": rows,
              "time_ratio_median": statistics.median(r["time_ratio"] for r in rows),
              "time_ratio_total": round(total["scratch"] / total["builtin"], 2), "goal": "time ratio <= 3"}
    print(f"scratch / built-in time: median over shapes {result['time_ratio_median']:.2f}, summed over shapes "
          f"{result['time_ratio_total']:.2f} (goal <= 3); on {result['device']}; saved {save('scratch_conv', result)}")
    return result


if __name__ == "__main__":
    run_job(main, Config)
