"""Robust accuracy against ε for every model × attack (D5–D7, D11, D12), as Ray tasks over (model × attack ×
image shard × ε-chunk), with robust flags: each ε attacks only the images still standing at the smaller ones.

    python jobs/eps_sweep.py                                   # MNIST models A and B (registered), test set
    python jobs/eps_sweep.py --attacks=[pgd,momentum_margin] --eps_255=[2,4,8,16,32] --test_size=2000
    python jobs/eps_sweep.py --models=[run:<run id>] --dataset=cifar10 --pgd_table=true
    python jobs/eps_sweep.py --targeted=true --source_class=1 --target_class=8 --test_size=0    # D6: every 1 → 8
    python jobs/eps_sweep.py --search=bisect --eps_255=[1,2,3,4,6,8,12,16,24,32,48,64]   # fine grids, log2 work
    python jobs/eps_sweep.py --smoke-test

Models: `registered:<name>[:<version>]` (MLflow's model registry, e.g. what train_mnist_models.py registers),
`run:<run id>` (a model a job logged), or `init:<registry name>` (seeded random weights: smoke tests). Each task
gets the model and its shard from the object store and never talks to MLflow; the driver shows a progress bar
as tasks finish and logs one run: the tidy table (sweep.csv / an MLflow table: model, attack, ε, robust
accuracy or targeted success with a 95% Wilson interval, images attacked, backward passes, seconds), a plot per
model, D7's numbers at ε = 8/255 and 16/255, and with --pgd_table D11's table over (iterations, ε).
With --search=bisect each image's breaking ε is bisected on the grid instead (one task per shard, about
log2(grid + 1) attacks per image; see `bisection_sweep` for what it assumes).
"""
from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from library import model_store, tracking  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import ConfigError  # noqa: E402
from library.data.options import DataOptions, load_data  # noqa: E402
from library.cluster import ray_init, remote_task  # noqa: E402
from library.adversarial.registry import AttackSpec  # noqa: E402
from library.adversarial.robustness import bisection_sweep, pgd_table, sweep  # noqa: E402
from library.stats import wilson_interval  # noqa: E402


@dataclass(frozen=True)
class JobConfig(DataOptions):
    dataset: str = "mnist"
    models: tuple[str, ...] = ("registered:mnist_a", "registered:mnist_b")  # registered:<name>[:<version>],
    # run:<run id> or init:<registry name> (see the docstring)
    attacks: tuple[str, ...] = ("fgsm", "pgd", "momentum_margin")  # see library/adversarial/registry.py ATTACKS
    targeted: bool = False  # attack toward label + 1 (mod classes), or toward target_class, instead of away
    source_class: int = -1  # >= 0: only the test images of this class (D6: every "1" ...)
    target_class: int = -1  # >= 0, targeted: every image toward this class (D6: ... classified as "8")
    steps: int = 10  # iterations of the iterative attacks
    eps_255: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)  # ε in units of 1/255, swept in increasing order
    test_size: int = 1000  # test images (a seeded sample); 0 = all
    shards: int = 4  # image shards per (model, attack)
    eps_per_task: int = 2  # ε values per task; the next chunk continues from this one's robust flags
    search: Literal["ascending", "bisect"] = "ascending"  # ascending: every ε on the images still standing;
    # bisect: each image's breaking point by bisection over the grid (the whole grid in one task per shard)
    pgd_table: bool = False  # D11: also PGD top-1/top-5 over (pgd_iterations × ε) per model
    pgd_iterations: tuple[int, ...] = (1, 5, 10, 20)  # D11's PGD iteration counts, with pgd_table
    cpus_per_task: float = 1.0  # Ray CPUs each task reserves; its torch threads follow them
    gpus_per_task: float = 0.25  # only when the cluster has GPUs
    ray_address: str = ""  # default: $RAY_ADDRESS, else a running cluster on this machine, else a new local Ray
    experiment: str = "eps_sweep"  # MLflow experiment
    smoke_test: bool = False
    val_size: int = field(default=0)  # the sweep uses the test set only

    def __post_init__(self):
        super().__post_init__()
        for name in self.attacks:
            AttackSpec(name)  # an unknown attack name stops here
        if not self.eps_255 or min(self.eps_255) <= 0:
            raise ConfigError("eps_255 needs positive values (ε in units of 1/255)")
        if self.shards < 1 or self.eps_per_task < 1:
            raise ConfigError("shards and eps_per_task must be at least 1")
        if self.target_class >= 0 and not (self.targeted and 0 <= self.source_class != self.target_class):
            raise ConfigError("target_class needs targeted=true and a different source_class (e.g. D6: "
                              "--targeted=true --source_class=1 --target_class=8)")

    def target_shift(self, classes: int) -> int:
        """Every target is (label + shift) mod classes: one class to another when both are given."""
        return (self.target_class - self.source_class) % classes if self.target_class >= 0 else 1


SMOKE = {"models": ["init:mnist_a", "init:mnist_b"], "attacks": ["fgsm", "pgd"], "eps_255": [4, 16, 64],
         "test_size": 48, "shards": 2, "steps": 3, "pgd_table": True, "pgd_iterations": [1, 3],
         "experiment": "eps_sweep_smoke"}


def sweep_task(model, spec: AttackSpec, x, y, eps: list[float], standing, classes: int, search: str):
    run = bisection_sweep if search == "bisect" else sweep
    return run(model, spec, x.float().div(255), y, eps, standing, classes)


def tidy(rows: list[dict], targeted: bool) -> pd.DataFrame:
    """Shards summed per (model, attack, ε); robust accuracy (or targeted success) with its interval."""
    table = pd.DataFrame(rows).groupby(["model", "attack", "eps"], sort=False, as_index=False).sum(numeric_only=True)
    table = table.sort_values(["model", "attack", "eps"], kind="stable").reset_index(drop=True)
    table["eps_255"] = (table["eps"] * 255).round(3)
    measure = "targeted_success" if targeted else "robust_acc"
    hits = table["n"] - table["standing"] if targeted else table["standing"]
    table[measure] = hits / table["n"]
    intervals = [wilson_interval(int(h), int(n)) for h, n in zip(hits, table["n"])]
    table[f"{measure}_low"], table[f"{measure}_high"] = zip(*intervals)
    return table


def curve_figure(table: pd.DataFrame, model: str, measure: str) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for attack, group in table[table["model"] == model].groupby("attack", sort=False):
        line, = ax.plot(group["eps_255"], group[measure], marker="o", label=attack)
        ax.fill_between(group["eps_255"], group[f"{measure}_low"], group[f"{measure}_high"], color=line.get_color(),
                        alpha=0.2, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ε (× 1/255)")
    ax.set_ylabel(measure.replace("_", " "))
    ax.set_title(f"{model}: {measure.replace('_', ' ')} vs ε (band: 95% Wilson interval)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def run_sweeps(models: dict, specs: list[AttackSpec], x, y, cfg: JobConfig, classes: int) -> list[dict]:
    """Chains of tasks, one chain per (model, attack, shard), one task per ε-chunk; a progress bar over all."""
    import ray
    from tqdm.auto import tqdm

    task = remote_task(sweep_task, cfg.cpus_per_task, cfg.gpus_per_task)
    eps = sorted(e / 255 for e in cfg.eps_255)
    per_task = len(eps) if cfg.search == "bisect" else cfg.eps_per_task
    chunks = [eps[i:i + per_task] for i in range(0, len(eps), per_task)]
    shards = [(ray.put(xs), ray.put(ys)) for xs, ys in zip(x.tensor_split(cfg.shards), y.tensor_split(cfg.shards))]
    refs = {name: ray.put(model) for name, model in models.items()}
    pending = {}
    for name in models:
        for spec in specs:
            for xs, ys in shards:
                ref = task.remote(refs[name], spec, xs, ys, chunks[0], None, classes, cfg.search)
                pending[ref] = (name, spec, xs, ys, 1)
    rows = []
    with tqdm(total=len(pending) * len(chunks), desc="ε-sweep tasks", unit="task") as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            name, spec, xs, ys, next_chunk = pending.pop(ready[0])
            chunk_rows, standing = ray.get(ready[0])
            rows += [r | {"model": name, "attack": spec.label} for r in chunk_rows]
            bar.update(1)
            if next_chunk < len(chunks):
                ref = task.remote(refs[name], spec, xs, ys, chunks[next_chunk], standing, classes, cfg.search)
                pending[ref] = (name, spec, xs, ys, next_chunk + 1)
    return rows


def main(cfg: JobConfig) -> dict:
    uri = tracking.connect()
    data = load_data(cfg)
    x, y = data.test.images, data.test.labels
    if cfg.source_class >= 0:
        x, y = x[y == cfg.source_class], y[y == cfg.source_class]
        if not len(y):
            raise ConfigError(f"no test image of class {cfg.source_class} among the {len(data.test.labels)} sampled; "
                              "raise test_size (0 = all)")
    models = {spec: model_store.load_model_spec(spec, data.num_classes, data.image_shape[0]) for spec in cfg.models}
    specs = [AttackSpec(name, steps=cfg.steps, targeted=cfg.targeted, target_shift=cfg.target_shift(data.num_classes))
             for name in cfg.attacks]
    ray_init(cfg.ray_address)
    with tracking.start_run(cfg.experiment, run_name="eps_sweep", config=cfg) as run:
        table = tidy(run_sweeps(models, specs, x, y, cfg, data.num_classes), cfg.targeted)
        measure = "targeted_success" if cfg.targeted else "robust_acc"
        mlflow.log_table(table, "sweep.json")
        mlflow.log_text(table.to_csv(index=False), "sweep.csv")
        for i, name in enumerate(models):
            mlflow.log_figure(curve_figure(table, name, measure), f"curves/{i}_{name.replace(':', '_')}.png")
        d7 = table[table["eps_255"].isin([8, 16])][["model", "attack", "eps_255", measure]]
        if not d7.empty:
            mlflow.log_text(d7.to_csv(index=False), "d7_eps8_eps16.csv")
            print("\nD7, at ε = 8/255 and 16/255:\n" + d7.to_string(index=False))
        if cfg.pgd_table:
            rows = [r | {"model": name} for name, model in models.items()
                    for r in pgd_table(model, x.float().div(255), y, [e / 255 for e in cfg.eps_255], list(cfg.pgd_iterations))]
            pgd = pd.DataFrame(rows)
            mlflow.log_text(pgd.to_csv(index=False), "pgd_table.csv")
            print("\nD11, PGD top-1/top-5:\n" + pgd.round(4).to_string(index=False))
        print("\n" + table[["model", "attack", "eps_255", measure, f"{measure}_low", f"{measure}_high", "attacked",
                            "backward_passes"]].round(4).to_string(index=False))
    print(f"MLflow run {run.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    return {"run_id": run.info.run_id, "rows": len(table)}


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
