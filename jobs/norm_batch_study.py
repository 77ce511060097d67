"""When BatchNorm fails (A10b): the Mish CNN with BatchNorm, GroupNorm, LayerNorm or no normalisation, trained
at batch sizes from 2 to 256, as a Ray Tune grid over (norm × batch size) × seeds.

    python jobs/norm_batch_study.py                      # 4 norms × 5 batch sizes × 3 seeds
    python jobs/norm_batch_study.py --smoke-test
    python jobs/norm_batch_study.py --batch_sizes=[2,16,128] --seeds=[0] --train_size=10000 --epochs=2

Each run sees the same number of epochs; the learning rate follows the square-root rule for Adam-type
optimisers, lr · √(batch / reference_batch). MLflow: test accuracy against batch size per normalisation (mean
and min–max over seeds) and the norm × batch-size table (accuracy_by_batch.csv).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from library.cli import run_job  # noqa: E402
from library.config import ConfigError, project  # noqa: E402
from library.search.study import StudyJobConfig, run_study_job, smoke_settings  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402

NORMS = ("bn", "gn", "ln", "none")


@dataclass(frozen=True)
class JobConfig(StudyJobConfig):
    name: str = "norm_batch_study"
    model: str = "mish_cnn"
    epochs: int = 5
    norms: tuple[str, ...] = NORMS  # bn, gn (32 groups), ln (one group over C×H×W), none
    batch_sizes: tuple[int, ...] = (2, 8, 32, 128, 256)  # each trained with lr · √(batch / reference_batch)
    reference_batch: int = 128  # the batch size `lr` is meant for
    lr: float = 2e-3

    def __post_init__(self):
        super().__post_init__()
        if not self.norms or set(self.norms) - set(NORMS):
            raise ConfigError(f"norms={self.norms}: choose from {', '.join(NORMS)}")
        if not self.batch_sizes or min(self.batch_sizes) < 2:
            raise ConfigError(f"batch_sizes={self.batch_sizes}: BatchNorm needs at least 2 images per batch")


DESCRIPTION = ("A10b: the Mish CNN with BatchNorm, GroupNorm, LayerNorm or nothing after each conv, trained at "
               "batch sizes from 2 up for the same epochs (lr scaled by sqrt(batch/reference)). BatchNorm normalises "
               "with the batch's own statistics in training and running averages at test time: with tiny batches "
               "those statistics are noisy and the running averages do not match what training saw, so BN's test "
               "accuracy drops at small batches, where GroupNorm and LayerNorm, computed per image, do not change.")


def variant_name(norm: str, batch: int) -> str:
    return f"{norm}_b{batch}"


def variants(cfg: JobConfig) -> dict[str, TrainConfig]:
    base = project(cfg, TrainConfig)
    return {variant_name(norm, batch): dataclasses.replace(
                base, batch_size=batch, lr=cfg.lr * math.sqrt(batch / cfg.reference_batch),
                model_kw={**base.model_kw, "norm": norm})
            for norm in cfg.norms for batch in cfg.batch_sizes}


def by_batch(table: pd.DataFrame, space) -> pd.DataFrame:
    """The trials with their norm and batch size as columns."""
    out = table.copy()
    out["norm"] = [space.variants[v].model_kw["norm"] for v in out["variant"]]
    out["batch_size"] = [space.variants[v].batch_size for v in out["variant"]]
    return out


def accuracy_figure(trials: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for norm, group in trials.groupby("norm", sort=False):
        stats = group.groupby("batch_size")["test_acc"].agg(["mean", "min", "max"])
        line, = ax.plot(stats.index, stats["mean"], marker="o", label=norm)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("test accuracy")
    ax.set_title("A10b: test accuracy vs batch size per normalisation\nline: mean over seeds, band: min–max", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def report(parent: str, table, space, data) -> None:
    trials = by_batch(table, space)
    pivot = trials.pivot_table(index="norm", columns="batch_size", values="test_acc", aggfunc="mean", sort=False)
    client = mlflow.MlflowClient()
    client.log_figure(parent, accuracy_figure(trials), "accuracy_vs_batch_size.png")
    client.log_text(parent, pivot.to_csv(), "accuracy_by_batch.csv")
    client.log_dict(parent, json.loads(pivot.to_json(orient="index")), "accuracy_by_batch.json")
    print("\nmean test accuracy, norm × batch size:\n" + pivot.round(4).to_string())


def main(cfg: JobConfig) -> dict:
    return run_study_job(cfg, variants(cfg), DESCRIPTION, report)


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=smoke_settings("norm_batch_study", seeds=[0], batch_sizes=[2, 32], norms=["bn", "gn"]))
