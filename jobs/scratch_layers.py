"""B1 and B3 as a recorded experiment: the layers written from scratch (`library/models/scratch.py`) against
PyTorch's own, on values and gradients over random shapes (B1), and their forward+backward time (B3).

    python jobs/scratch_layers.py                 # 200 random shapes per layer; time on six layer shapes
    python jobs/scratch_layers.py --smoke-test

The MLflow run holds the largest differences found (`b1_max_abs_error`, over outputs and every gradient), the
cases checked, the time ratio per shape and its median (`b3_time_ratio_median`) and a bar chart of it.
`benchmarks/scratch_conv.py` is the full benchmark (peak memory, more rounds); tests/test_scratch_layers.py
checks the same properties in the suite.
"""
from __future__ import annotations

import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from library import tracking  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config  # noqa: E402
from library.models import conv2d  # noqa: E402
from library.models.scratch_pool import max_pool2d  # noqa: E402

# B3's shapes (name, in, out, side, kernel, stride, padding): as benchmarks/scratch_conv.py's, at a smaller batch
SHAPES = [("mnist 1→16 28² k3", 1, 16, 28, 3, 1, 1), ("mnist 16→32 14² k3", 16, 32, 14, 3, 1, 1),
          ("mnist 32→64 7² k3", 32, 64, 7, 3, 1, 1), ("cifar 64→64 32² k3", 64, 64, 32, 3, 1, 1),
          ("cifar 32→32 32² k5", 32, 32, 32, 5, 1, 2), ("cifar 64→128 32² k3 s2", 64, 128, 32, 3, 2, 1)]


@dataclass(frozen=True)
class JobConfig(Config):
    cases: int = 200  # random shapes per layer (B1)
    batch: int = 32  # images per timed forward+backward (B3)
    rounds: int = 5  # timed repeats per implementation and shape, interleaved
    seed: int = 0  # B1's random shapes
    experiment: str = "scratch_layers"  # MLflow experiment
    smoke_test: bool = False


SMOKE = {"cases": 20, "batch": 4, "rounds": 1, "experiment": "scratch_layers_smoke"}


def _grads(fn, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The output and the gradients of a random upstream gradient (from torch's global generator) w.r.t. each
    input."""
    out = fn(*tensors)
    return [out.detach(), *torch.autograd.grad(out, tensors, torch.randn_like(out))]


def b1_errors(cases: int, g: torch.Generator) -> dict[str, float]:
    """The largest |scratch − built-in| over outputs and gradients, per layer, over random shapes (float64)."""
    worst = {"conv2d": 0.0, "max_pool2d": 0.0}
    randint = lambda low, high: int(torch.randint(low, high + 1, (), generator=g))  # noqa: E731
    for _ in range(cases):
        n, c, o, k, s = randint(1, 3), randint(1, 4), randint(1, 5), randint(1, 5), randint(1, 3)
        p = randint(0, k // 2)
        side = randint(k, 12)
        x = torch.randn(n, c, side, side, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(o, c, k, k, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(o, generator=g, dtype=torch.float64, requires_grad=True)
        seed = randint(0, 2**30)  # the same upstream gradient for both
        torch.manual_seed(seed)
        ours = _grads(lambda *t: conv2d(*t, stride=s, padding=p), x, w, b)
        torch.manual_seed(seed)
        theirs = _grads(lambda *t: F.conv2d(*t, stride=s, padding=p), x, w, b)
        worst["conv2d"] = max(worst["conv2d"], *[(a - t).abs().max().item() for a, t in zip(ours, theirs)])
        pk = randint(1, min(3, side))
        torch.manual_seed(seed)
        ours = _grads(lambda t: max_pool2d(t, pk, s, min(p, pk // 2)), x)
        torch.manual_seed(seed)
        theirs = _grads(lambda t: F.max_pool2d(t, pk, s, min(p, pk // 2)), x)
        worst["max_pool2d"] = max(worst["max_pool2d"], *[(a - t).abs().max().item() for a, t in zip(ours, theirs)])
    return worst


def b3_times(batch: int, rounds: int) -> pd.DataFrame:
    """Median forward+backward seconds of each implementation per shape, interleaved, after a warm-up."""
    rows = []
    for name, c_in, c_out, side, k, s, p in SHAPES:
        x = torch.randn(batch, c_in, side, side, requires_grad=True)
        w, b = torch.randn(c_out, c_in, k, k, requires_grad=True), torch.randn(c_out, requires_grad=True)
        times: dict[str, list[float]] = {"scratch": [], "builtin": []}
        for _ in range(rounds + 1):
            for impl, fn in (("scratch", conv2d), ("builtin", F.conv2d)):
                start = time.perf_counter()
                fn(x, w, b, stride=s, padding=p).sum().backward()
                times[impl].append(time.perf_counter() - start)
        scratch, builtin = (statistics.median(times[i][1:]) for i in ("scratch", "builtin"))
        rows.append({"shape": name, "scratch_s": scratch, "builtin_s": builtin, "time_ratio": scratch / builtin})
    return pd.DataFrame(rows)


def ratio_figure(table: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(7, 3.8))
    ax = fig.add_subplot()
    ax.barh(table["shape"], table["time_ratio"])
    ax.axvline(1, color="k", linewidth=0.8)
    ax.set_xlabel("scratch / F.conv2d, forward + backward time")
    ax.set_title(f"B3: median ratio {table['time_ratio'].median():.2f}", fontsize=10)
    fig.tight_layout()
    return fig


def main(cfg: JobConfig) -> dict:
    uri = tracking.connect()
    g = torch.Generator().manual_seed(cfg.seed)
    with tracking.start_run(cfg.experiment, run_name="scratch_layers", config=cfg) as run:
        errors = b1_errors(cfg.cases, g)
        table = b3_times(cfg.batch, cfg.rounds)
        summary = {"b1_max_abs_error": max(errors.values()), **{f"b1_max_abs_error.{k}": v for k, v in errors.items()},
                   "b1_cases": 2 * cfg.cases, "b3_time_ratio_median": float(table["time_ratio"].median())}
        mlflow.log_metrics(summary)
        mlflow.log_text(table.to_csv(index=False), "b3_times.csv")
        mlflow.log_figure(ratio_figure(table), "b3_time_ratio.png")
        print(f"B1: largest difference from PyTorch's layers over {2 * cfg.cases} random cases: "
              f"{summary['b1_max_abs_error']:.2e}\nB3:\n{table.round(4).to_string(index=False)}")
    print(f"MLflow run {run.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    return {"run_id": run.info.run_id, **summary}


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
