"""A small vision transformer trained from scratch, beside the CNNs (F1), as a Ray Tune grid.

    python jobs/vit_study.py                            # vit, mish_cnn (A1), mish_cnn_bn (A2) × 3 seeds
    python jobs/vit_study.py --smoke-test
    python jobs/vit_study.py --epochs=30 --seeds=[0] --variants=[vit,cnn_bn]

Every model gets the same data, augmentation, optimiser and epochs. MLflow: the accuracy-and-time table
(accuracy_time.csv: test accuracy, training time, images/s, parameters, per variant over seeds), the training
loss per epoch of all of them on one plot, each trial's model.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402

from library.search import study_report  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import project  # noqa: E402
from library.models import create_model  # noqa: E402
from library.search.study import StudyJobConfig, run_study_job, smoke_settings  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402


@dataclass(frozen=True)
class JobConfig(StudyJobConfig):
    name: str = "vit_study"
    model: str = "vit_cifar"  # the variants set it
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 5e-2


DESCRIPTION = ("F1: a ViT (4x4 patches, learned positional embedding, 4 transformer blocks; timm's VisionTransformer) "
               "trained from scratch on CIFAR-10 beside the Mish CNN without and with BatchNorm, with the same data, "
               "augmentation, optimiser and epochs: accuracy and training time (accuracy_time.csv). The ViT lacks "
               "the convolution's locality and weight sharing and must learn them from the data, so the comparison "
               "depends on the budget: compare runs of the same epochs and training-set size.")


MODELS = {"vit": "vit_cifar", "cnn": "mish_cnn", "cnn_bn": "mish_cnn_bn"}


def variants(cfg: JobConfig) -> dict[str, TrainConfig]:
    base = project(cfg, TrainConfig)
    return {name: dataclasses.replace(base, model=model) for name, model in MODELS.items()}


def accuracy_time_table(table, space):
    """Per variant: test accuracy and training time over seeds, training speed, parameters."""
    summary = study_report.summary(table, ("test_acc", "train_s", "images_per_s"), order=list(space.variants))
    summary["params"] = [sum(p.numel() for p in create_model(space.variants[v].model, **space.variants[v].model_kw).parameters())
                         for v in summary.index]
    return summary[["n", "test_acc_mean", "test_acc_std", "train_s_mean", "images_per_s_mean", "params"]]


def report(parent: str, table, space, data) -> None:
    out = accuracy_time_table(table, space)
    client = mlflow.MlflowClient()
    client.log_text(parent, out.to_csv(), "accuracy_time.csv")
    client.log_dict(parent, json.loads(out.reset_index().to_json(orient="records")), "accuracy_time.json")
    client.log_text(parent, study_report.markdown_table(out), "accuracy_time.md")


def main(cfg: JobConfig) -> dict:
    return run_study_job(cfg, variants(cfg), DESCRIPTION, report)


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=smoke_settings("vit_study"))
