"""What Ray Tune costs: the same four trainings run by a plain loop and by the real sweep path.

Plain: `train()` four times in this process. Tune: `library.search.sweep.run_sweep` (a local Ray started for it,
one trial at a time with both CPUs, a checkpoint and a report every epoch, MLflow parent and child runs)
over a grid of the same four configurations. Wall time of each, data loading excluded from both, Ray's
start-up included in Tune's. Goal: Tune / plain ≤ 1.05.

The breakdown of Tune's side: Ray's start; the sweep outside its trials (the trial process's start, Tune's and
MLflow's bookkeeping); what the trials spend outside their epochs (set-up, and a report with a checkpoint per
epoch; in a fresh process the set-up includes the first optimiser's import of torch._dynamo, ~1 s, which the
plain loop paid once before its timing); and the epochs themselves, compared with the plain loop's epochs (the
in-trial slowdown). From the two it derives the seconds Tune adds once a sweep and the sweep length from which
Tune / plain is within the goal. Each round also times, in new interpreters, the start-up a sweep pays whatever
this project does (Ray's start; the interpreter Ray runs before a trial's worker, its `setup_worker.py`, because
Tune gives its trial actors a runtime env of their own; a trial process's imports: Ray Tune, torch and the
trainable; torch._dynamo on the first optimiser step), so the output
says how much of the fixed cost is left to Tune's and this project's own bookkeeping. It also gives Tune / plain
less Ray's start: what a job that joins a running cluster (`ray job submit`) pays, but for its connection to that
cluster, which is not timed here.

The goal's layout is like for like: one trial at a time with both CPUs, as the plain loop trains one configuration
at a time on both. `--cpus_per_trial=1 --max_concurrent=2` runs Tune's side as `jobs/tune_cnn.py` lays out its trials
on a 2-CPU machine instead (two at once, one thread each): what a user's sweep takes against the loop they would
write. Its trials overlap, so their epochs no longer add up to wall time: that run gives the ratios, not the
breakdown.

    python benchmarks/tune_overhead.py [--images=8192] [--epochs=3] [--rounds=2] [--cpus_per_trial=2 --max_concurrent=1]
"""
from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import device_name, preload_torch_dynamo, save  # noqa: E402
from library import tracking  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import Config as BaseConfig  # noqa: E402
from library.data import load_cifar10  # noqa: E402
from library.cluster import ray_init  # noqa: E402
from library.runtime import pick_device  # noqa: E402
from library.search.space import SearchSpace  # noqa: E402
from library.train.loop import train  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402
from library.search.sweep import SweepOptions, run_sweep  # noqa: E402

LRS = [1e-3, 2e-3, 3e-3, 5e-3]  # the four configurations: one model, four learning rates
CPUS = 2  # the local Ray's CPUs and the plain loop's threads
# the result file of each layout (trials at once, CPUs each); any other gets a name of its own
LAYOUT_FILES = {(1, 2.0): "tune_overhead", (2, 1.0): "tune_overhead-job-layout"}
REPO = Path(__file__).resolve().parents[1]
# The start-up no sweep skips, each piece timed in a new interpreter as a sweep pays it. A snippet that prints a
# number is timed by itself (its own imports excluded); otherwise the interpreter's whole run counts.
STARTUP = {
    "ray_start": "import time; from library.cluster import ray_init; t = time.perf_counter(); "
                 f"ray_init('local', num_cpus={CPUS}, include_dashboard=False); print(time.perf_counter() - t)",
    # Tune's trial actors carry a runtime env (`ray.tune.execution.class_cache`: PL_DISABLE_FORK), so Ray starts a
    # trial's worker as setup_worker.py first, which imports these, applies the env and execs the worker
    "tune_runtime_env": "from ray._private.ray_logging import setup_logger; from ray.core.generated.common_pb2 "
                        "import Language; from ray._private.runtime_env.context import RuntimeEnvContext",
    "trial_imports": "import ray.tune, library.search.trainable",  # unpickling the trainable in the trial process
    "dynamo": "import time, torch; t = time.perf_counter(); import torch._dynamo; print(time.perf_counter() - t)",
}


@dataclass(frozen=True)
class Config(BaseConfig):
    data_root: str = ""  # default: $CV_DATA_ROOT
    images: int = 8192  # training images per epoch
    epochs: int = 3  # epochs per configuration
    rounds: int = 2  # plain/Tune pairs, interleaved (plain first, then Tune first)
    cpus_per_trial: float = 2.0  # Tune's layout: like for like by default (see the docstring)
    max_concurrent: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(cpus_per_trial=0 < self.cpus_per_trial <= CPUS, max_concurrent=self.max_concurrent >= 1)

    @property
    def serial(self) -> bool:
        """Trials one after another: their epochs add up to wall time, so the breakdown holds."""
        return self.max_concurrent == 1


def plain(space: SearchSpace, data) -> dict[str, float]:
    """Total wall time, and the part of it spent in epochs (training and evaluation)."""
    start = time.perf_counter()
    histories = [train(space.apply({"lr": lr}), data).history for lr in LRS]
    return {"total": time.perf_counter() - start, "epochs": sum(m["epoch_s"] for h in histories for m in h)}


def with_tune(space: SearchSpace, data, round_: int, cfg: Config) -> dict[str, float]:
    """Total wall time, and where it went: Ray's start, the sweep outside its trials, the trials besides their
    epochs, and the epochs (the trials' and their epochs' seconds summed: with trials at once, more than wall time,
    and nothing is outside them)."""
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        opts = SweepOptions(name=f"overhead{round_}", storage_path=f"{tmp}/ray", search="grid", scheduler="fifo",
                            num_samples=1, max_concurrent=cfg.max_concurrent, cpus_per_trial=cfg.cpus_per_trial)
        start = time.perf_counter()
        tracking.connect()
        ray_init("local", num_cpus=CPUS, include_dashboard=False)  # as a job starts it (the workers' environment)
        ray_started = time.perf_counter()
        outcome = run_sweep(opts, space, data, experiment="overhead")
        end = time.perf_counter()
        ray.shutdown()
        assert outcome.finished and outcome.results.num_errors == 0
        in_trials = sum(r.metrics["time_total_s"] for r in outcome.results)
        epochs = sum(r.metrics_dataframe["epoch_s"].sum() for r in outcome.results)
    seconds = {"total": end - start, "ray_init": ray_started - start, "sweep": end - ray_started,
               "in_trials": in_trials, "trials_besides_epochs": in_trials - epochs, "epochs": epochs}
    return seconds | ({"outside_trials": end - ray_started - in_trials} if cfg.serial else {})


def startup() -> dict[str, float]:
    """Seconds of each piece of STARTUP, and their sum."""
    seconds = {}
    for name, code in STARTUP.items():
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ | {"RAY_ADDRESS": "local"},
                             capture_output=True, text=True, check=True).stdout.split()
        seconds[name] = float(out[-1]) if out else time.perf_counter() - start
    return seconds | {"total": sum(seconds.values())}


def main(cfg: Config) -> dict:
    torch.set_num_threads(CPUS)
    preload_torch_dynamo()
    data = load_cifar10(cfg.data_root or None, val_size=2000).limit(train=cfg.images)
    base = TrainConfig(model="improved_cnn", model_kw={"widths": (32, 64), "depth": 1}, epochs=cfg.epochs)
    space = SearchSpace({"lr": LRS}, base)
    times: dict[str, list] = {"plain": [], "tune": [], "startup": []}
    for r in range(cfg.rounds):  # ABBA: odd rounds run Tune first, so a machine that speeds up or slows down
        # over the run (this VM's neighbours: ±5% within minutes) favours neither side
        for side in (("plain", "tune") if r % 2 == 0 else ("tune", "plain")):
            times[side].append(plain(space, data) if side == "plain" else with_tune(space, data, r, cfg))
        p, t = times["plain"][-1], times["tune"][-1]
        line = (f"round {r}: plain {p['total']:.1f} s (epochs {p['epochs']:.1f}); tune {t['total']:.1f} s (Ray's start"
                f" {t['ray_init']:.1f}); Tune / plain {t['total'] / p['total']:.3f}")
        if cfg.serial:
            times["startup"].append(startup())
            u = times["startup"][-1]
            line += (f"; Tune = Ray's start + outside the trials {t['outside_trials']:.1f} + trials besides their"
                     f" epochs {t['trials_besides_epochs']:.1f} + epochs {t['epochs']:.1f}; start-up in new processes"
                     f" {u['total']:.1f} s (Ray's start {u['ray_start']:.1f}, Tune's runtime env {u['tune_runtime_env']:.1f},"
                     f" a trial process {u['trial_imports']:.1f}, torch._dynamo {u['dynamo']:.1f})")
        print(line, flush=True)

    plain_total = statistics.median(p["total"] for p in times["plain"])
    ratio = statistics.median(t["total"] for t in times["tune"]) / plain_total
    joined = statistics.median(t["total"] - t["ray_init"] for t in times["tune"]) / plain_total
    # each round's own ratio: their spread is how far this machine's noise alone moves the figure
    round_ratios = [round(t["total"] / p["total"], 3) for p, t in zip(times["plain"], times["tune"])]
    layout = (f"{cfg.max_concurrent} trial{'s' * (cfg.max_concurrent > 1)} at a time, {cfg.cpus_per_trial:g}"
              f" CPU{'s' * (cfg.cpus_per_trial != 1)} each")
    result = {"benchmark": "tune_overhead", "device": device_name(pick_device()), "config": vars(cfg),
              "tune_layout": layout, "seconds": times, "overhead_ratio": round(ratio, 3), "round_ratios": round_ratios,
              "ratio_less_ray_start": round(joined, 3), "goal": "<= 1.05 (like for like: 1 trial at a time, 2 CPUs)"}
    name = LAYOUT_FILES.get((cfg.max_concurrent, cfg.cpus_per_trial),
                            f"tune_overhead-{cfg.max_concurrent}x{cfg.cpus_per_trial:g}cpu")
    if cfg.serial:
        result |= breakdown(times)
    print(f"Tune ({layout}) / plain = {ratio:.3f} (goal <= 1.05 like for like; single rounds {min(round_ratios):.3f}-"
          f"{max(round_ratios):.3f}); on {result['device']}; saved {save(name, result)}")
    print(f"Less Ray's start (a job joining a running cluster, its connection not timed): Tune / plain = {joined:.3f}")
    return result


def breakdown(times: dict[str, list]) -> dict:
    """Where a serial sweep's seconds go beside the plain loop's, printed and returned for the result."""
    def median(side: str, key: str) -> float:
        return statistics.median(t[key] for t in times[side])

    plain_total = median("plain", "total")
    in_trials_ratio = median("tune", "in_trials") / plain_total
    epochs_ratio = median("tune", "epochs") / median("plain", "epochs")
    # Tune's cost splits into seconds a sweep pays once (Ray's start, the trial process, set-up) and a share of
    # every epoch: Tune / plain = epochs_ratio + fixed / plain, so the goal holds from a sweep length on
    fixed = (median("tune", "total") - median("tune", "epochs")) - (plain_total - median("plain", "epochs"))
    within_goal_from = fixed / (1.05 - epochs_ratio) if epochs_ratio < 1.05 else math.inf
    floor = median("startup", "total")  # the part of `fixed` no change to this project's code removes
    print(f"Time inside the trials / plain = {in_trials_ratio:.3f}; epochs in the trials / the plain loop's epochs ="
          f" {epochs_ratio:.3f}")
    print(f"Tune adds {fixed:.1f} s a sweep and {100 * (epochs_ratio - 1):+.1f}% to every epoch: within 1.05 of the"
          f" plain loop for sweeps of " + (f"{within_goal_from / 60:.1f} minutes of plain training or more"
                                          if math.isfinite(within_goal_from) else "no length"))
    print(f"Of the {fixed:.1f} s, {floor:.1f} s is start-up a sweep pays whatever this project does (Ray's start, Tune's"
          f" runtime env, a trial process's imports, torch._dynamo; timed in new processes), {100 * floor / plain_total:.1f}%"
          f" of the plain loop at this size; "
          + (f"Tune's and the project's bookkeeping take the other {fixed - floor:.1f} s" if fixed >= floor
             else "timed apart, it exceeds the fixed cost itself: the bookkeeping is within this machine's noise"))
    return {"inside_trials_ratio": round(in_trials_ratio, 3), "epochs_ratio": round(epochs_ratio, 3),
            "fixed_s": round(fixed, 1), "startup_s": round(floor, 1),
            "within_goal_from_s": round(within_goal_from, 0) if math.isfinite(within_goal_from) else None}


if __name__ == "__main__":
    run_job(main, Config)
