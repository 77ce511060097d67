r"""Train one registry model with one config and record it in MLflow (experiments A1, A2, A9, E3).

    python jobs/train_cnn.py                                   # A1: the Mish CNN
    python jobs/train_cnn.py --model=mish_cnn_bn               # A2: with BatchNorm
    python jobs/train_cnn.py --model=resnet_cifar --optimizer=adam --lr=1e-3 --weight_decay=5e-4 \
        --crop=resized --epochs=30                             # A9: the CIFAR ResNet, seed 002's recipe
    python jobs/train_cnn.py --smoke-test                      # seconds on a CPU
    python jobs/train_cnn.py --help                            # every option: its default and what it does

The MLflow run holds the config, per-epoch metrics, the final test accuracy (the test set is touched once, at
the end), the training curves, the first-layer filter grid, the per-epoch table and the trained weights.
"""
from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402

from library import tracking  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.data.options import DataOptions, load_data  # noqa: E402
from library.train.fit import fit_and_test, log_fit  # noqa: E402
from library.models import create_model  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402


@dataclass(frozen=True)
class JobConfig(TrainConfig, DataOptions):
    experiment: str = "train_cnn"  # MLflow experiment
    run_name: str = ""  # default: the model name
    output_dir: str = "outputs"  # a local copy of each trained model goes to <output_dir>/<run id>/
    smoke_test: bool = False  # a few hundred images, 2 epochs: seconds on a CPU


SMOKE = {"epochs": 2, "train_size": 512, "val_size": 256, "test_size": 256, "batch_size": 64, "warmup_epochs": 0.5}


def _print_epoch(metrics: dict, epochs: int) -> None:
    print(f"epoch {metrics['epoch']:>3}/{epochs}  train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.4f}"
          f"  val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.4f}"
          f"  {metrics['images_per_s']:.0f} img/s  {metrics['epoch_s']:.1f} s", flush=True)


def main(cfg: JobConfig) -> dict:
    create_model(cfg.model, **cfg.model_kw)  # a wrong model name or option fails here, before data or tracking
    uri = tracking.connect()
    data = load_data(cfg)
    print(f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images"
          f"{'' if data.verified else ' (staged copy, checksums differ from the official archive)'}")

    with tracking.start_run(cfg.experiment, run_name=cfg.run_name or cfg.model, config=cfg) as run:
        mlflow.log_params({"data.train_images": len(data.train), "data.val_images": len(data.val),
                           "data.test_images": len(data.test), "data.verified": data.verified})

        def on_epoch(metrics: dict, state) -> None:
            tracking.log_epoch(metrics)
            _print_epoch(metrics, state.total_epochs)

        fit = fit_and_test(cfg, data, on_epoch=on_epoch)
        local = Path(cfg.output_dir).resolve() / run.info.run_id
        log_fit(fit, run.info.run_id, f"{cfg.model} on {data.name}", epochs=False, local_dir=local)

    summary = {"run_id": run.info.run_id, "model": cfg.model, "epochs": len(fit.history),
               "val_acc": fit.history[-1]["val_acc"], "test_acc": fit.test["acc"],
               "images_per_s": sum(h["images_per_s"] for h in fit.history) / len(fit.history)}
    print(f"\n{cfg.model}: test accuracy {fit.test['acc']:.4f} after {len(fit.history)} epochs "
          f"(val {summary['val_acc']:.4f}, {summary['images_per_s']:.0f} img/s)")
    print(f"MLflow run {run.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    print(f"model weights also in {local}")
    print(f"browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    return summary


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
