"""Input-pipeline study (A4): seed 001's Table-1 network trained for 2,000 iterations at batch 100 with four
input pipelines, each over several seeds, as a Ray Tune grid.

    python jobs/pipeline_study.py                       # 4 pipelines × 3 seeds
    python jobs/pipeline_study.py --smoke-test          # tiny data, a few iterations
    python jobs/pipeline_study.py --seeds=[0] --variants=[raw,standardized]

The pipelines: raw pixels (the 0..255 values), per-channel standardisation (CIFAR-10's training mean and std),
+ random horizontal flip (p = 0.5), + zero-pad 4 and a random 32×32 crop; flips and crops at training time only.
MLflow: training accuracy per iteration of all four on one plot (mean and min–max over seeds, smoothed), the
test-accuracy tables, each trial's model. Interrupted? The same command resumes it.
"""
from __future__ import annotations

import dataclasses
import gc
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402

from library.search import study_report  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import project  # noqa: E402
from library.search.study import StudyJobConfig, run_study_job, smoke_settings  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402


@dataclass(frozen=True)
class JobConfig(StudyJobConfig):
    """Seed 001's procedure: 2,000 iterations of batch 100 (its "demo code" optimiser is unknown: Adam at a
    constant 1e-3 stands in for it)."""

    name: str = "pipeline_study"
    model: str = "table1_cnn"
    steps: int = 2000
    batch_size: int = 100
    optimizer: Literal["adamw", "adam", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Literal["cosine", "onecycle", "constant"] = "constant"
    warmup_epochs: float = 0.0
    log_steps: bool = True
    smooth: int = 50  # iterations in the moving average of the training-accuracy plot


DESCRIPTION = ("A4: seed 001's Table-1 network, 2,000 iterations at batch 100, four input pipelines: raw pixels "
               "(0..255), per-channel standardisation, + random horizontal flip, + zero-pad 4 and random 32x32 crop "
               "(training only). One deviation from the seed: the crop's padding is zero in pixel space (black), "
               "applied before the model standardises, where the seed pads zeros after standardisation (the mean "
               "colour).")
RAW_STATS = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255,) * 3}  # the model's Normalize then passes 0..255 through


def variants(cfg: JobConfig) -> dict[str, TrainConfig]:
    base = dataclasses.replace(project(cfg, TrainConfig), crop="none", flip=False)
    return {
        "raw": dataclasses.replace(base, model_kw={**base.model_kw, **RAW_STATS}),
        "standardized": base,
        "flip": dataclasses.replace(base, flip=True),
        "flip_crop": dataclasses.replace(base, flip=True, crop="pad", crop_pad=4),
    }


def report(cfg: JobConfig):
    def log(parent: str, table, space, data) -> None:
        curves = study_report.metric_curves(parent, "step.train_acc", table)
        fig = study_report.mean_spread_figure(curves, "training accuracy (batch)", "iteration", smooth=cfg.smooth,
                                              title="A4: training accuracy per input pipeline", order=list(space.variants))
        mlflow.MlflowClient().log_figure(parent, fig, "train_acc_per_iteration.png")
    return log


def main(cfg: JobConfig) -> dict:
    return run_study_job(cfg, variants(cfg), DESCRIPTION, report(cfg))


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=smoke_settings("pipeline_study", steps=12, batch_size=32, smooth=4))
