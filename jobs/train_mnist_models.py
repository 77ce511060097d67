"""Train "model A" and "model B", the two MNIST classifiers the attack studies compare (D5–D7), as parallel
Ray tasks, and register each in the MLflow model registry under its model name.

    python jobs/train_mnist_models.py                          # mnist_a (a CNN) and mnist_b (an MLP), 5 epochs
    python jobs/train_mnist_models.py --epochs=10 --seed=3     # retrain: a new version of each registered model
    python jobs/train_mnist_models.py --smoke-test             # seconds on a CPU
    ray job submit --working-dir . -- python jobs/train_mnist_models.py

Each model gets its own MLflow run (config, per-epoch metrics, curves, test accuracy, weights) and a new
version of the registered model of the same name; the attack jobs load them with
`model_store.load_registered_model("mnist_a")`. Model i trains with seed `seed + i`: independent weights and
data order even for two copies of one architecture.
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

from library import model_store, tracking  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import ConfigError, project  # noqa: E402
from library.data.options import DataOptions, load_data  # noqa: E402
from library.train.fit import Fit, fit_remote, log_fit  # noqa: E402
from library.models import create_model  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402
from library.cluster import ray_init  # noqa: E402


@dataclass(frozen=True)
class JobConfig(TrainConfig, DataOptions):
    models: tuple[str, ...] = ("mnist_a", "mnist_b")  # registry names; each is registered under its own name
    dataset: Literal["cifar10", "mnist"] = "mnist"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    crop: Literal["none", "pad", "resized"] = "none"  # digits: no crops
    flip: bool = False  # nor flips: a mirrored 2 is no 2
    cpus_per_model: float = 1.0  # Ray CPUs each model's training task reserves; its torch threads follow them
    gpus_per_model: float = 0.5  # only when the cluster has GPUs: two small MNIST models share one
    register: bool = True  # a new registered-model version per trained model
    experiment: str = "mnist_models"  # MLflow experiment
    output_dir: str = "outputs"  # a local copy of each trained model goes to <output_dir>/<run id>/
    ray_address: str = ""  # default: $RAY_ADDRESS, else a running cluster on this machine, else a new local Ray
    smoke_test: bool = False


SMOKE = {"epochs": 2, "train_size": 512, "val_size": 256, "test_size": 256, "batch_size": 64, "warmup_epochs": 0.5}


def _check(cfg: JobConfig) -> None:
    if not cfg.models:
        raise ConfigError("models is empty: name at least one registry model, e.g. --models=[mnist_a]")
    for name in cfg.models:
        create_model(name)  # an unknown model name fails here, before data, tracking or Ray
    if cfg.cpus_per_model <= 0 or cfg.gpus_per_model < 0:
        raise ConfigError("cpus_per_model must be positive and gpus_per_model non-negative")


def _record(cfg: JobConfig, train_cfg: TrainConfig, fit: Fit, data) -> dict:
    """One MLflow run for one trained model, then its registered version."""
    with tracking.start_run(cfg.experiment, run_name=train_cfg.model, config=train_cfg,
                            tags={"dataset": data.name}) as run:
        mlflow.log_params({"data.train_images": len(data.train), "data.val_images": len(data.val),
                           "data.test_images": len(data.test), "data.verified": data.verified})
        local = Path(cfg.output_dir).resolve() / run.info.run_id
        log_fit(fit, run.info.run_id, f"{train_cfg.model} on {data.name}", local_dir=local)
    version = model_store.register_model(run.info.run_id, train_cfg.model) if cfg.register else None
    return {"model": train_cfg.model, "run_id": run.info.run_id, "version": version, "seed": train_cfg.seed,
            "val_acc": fit.history[-1]["val_acc"], "test_acc": fit.test["acc"]}


def main(cfg: JobConfig) -> list[dict]:
    import ray

    _check(cfg)
    uri = tracking.connect()
    data = load_data(cfg)
    print(f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images")
    ray_init(cfg.ray_address)
    data_ref = ray.put(data)  # one copy in the object store for every task
    base = project(cfg, TrainConfig)
    pending = {}
    for i, name in enumerate(cfg.models):
        train_cfg = dataclasses.replace(base, model=name, seed=cfg.seed + i)
        pending[fit_remote(train_cfg, data_ref, name, num_cpus=cfg.cpus_per_model, num_gpus=cfg.gpus_per_model)] = train_cfg
    summaries = []
    while pending:  # log each model as soon as it is done
        [done], _ = ray.wait(list(pending), num_returns=1)
        summaries.append(_record(cfg, pending.pop(done), ray.get(done), data))
        s = summaries[-1]
        print(f"{s['model']}: val accuracy {s['val_acc']:.4f}, test accuracy {s['test_acc']:.4f}; MLflow run "
              f"{s['run_id']}" + (f", registered as {s['model']!r} version {s['version']}" if s["version"] else ""))
    print(f"experiment '{cfg.experiment}' at {uri}\nbrowse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1")
    return summaries


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
