"""One training run as a unit of work: fit, test once, hand back the weights, in this process or as a Ray
task; and the record of a finished fit in an MLflow run.

Ray tasks never talk to MLflow: they return a `Fit` (history, test metrics, CPU weights) and the driver
logs it. One writer per store keeps a SQLite store safe and a remote server's load on one client.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
import torch
from torch import nn

from .. import model_store, tracking
from ..data import ImageData, ImageSet
from ..models import create_model, first_conv
from ..plots import filter_grid_figure, training_curves_figure
from ..cluster import cluster_has_gpu, remote_task
from .evaluation import evaluate, robust_accuracy
from .loop import EpochCallback, train
from .recipe import TrainConfig, model_options


@dataclass
class Fit:
    """A trained model's record: what was built (registry name + options), how training went, its test score."""

    model: str
    model_kw: dict[str, Any]
    history: list[dict[str, float]]
    test: dict[str, float]  # loss, acc (and robust_acc with a robust radius): the one evaluation on the test set
    state_dict: dict[str, torch.Tensor]  # on the CPU
    init: str = ""
    step_rows: list[dict[str, float]] = field(default_factory=list)  # per-iteration rows (TrainConfig.log_steps)

    def build(self) -> nn.Module:
        model = create_model(self.model, **self.model_kw)
        model.load_state_dict(self.state_dict)
        return model


def fit_and_test(cfg: TrainConfig, data: ImageData, on_epoch: EpochCallback | None = None) -> Fit:
    result = train(cfg, data, on_epoch=on_epoch)
    test = evaluate(result.model, data.test, cfg.eval_batch_size, cfg.amp, cfg.tta)  # EMA weights, if kept
    if cfg.robust_eps:
        test["robust_acc"] = robust_accuracy(result.model, data.test, cfg)
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    return Fit(cfg.model, model_options(cfg, data), result.history, test, state,
               getattr(result.model, "init_scheme", ""), result.step_rows)


def _fit_task(cfg: TrainConfig, data: ImageData, label: str) -> Fit:
    def progress(metrics: dict, state) -> None:  # Ray forwards a task's stdout to the driver's console
        val = "" if math.isnan(metrics["val_acc"]) else f"  val acc {metrics['val_acc']:.4f}"
        print(f"{label}: epoch {metrics['epoch']}/{state.total_epochs}  train loss {metrics['train_loss']:.4f}"
              f"  acc {metrics['train_acc']:.4f}{val}  {metrics['images_per_s']:.0f} img/s", flush=True)

    return fit_and_test(cfg, data, on_epoch=progress)


def fit_remote(cfg: TrainConfig, data: ImageData, label: str, num_cpus: float, num_gpus: float):
    """`fit_and_test` as a Ray task with these resources (GPUs where the cluster has them); returns its ObjectRef
    (a `Fit` once done)."""
    return remote_task(_fit_task, num_cpus, num_gpus).remote(cfg, data, label)


def log_fit(fit: Fit, run_id: str, title: str, prefix: str = "", epochs: bool = True,
            local_dir: Path | None = None) -> nn.Module:
    """Into run `run_id`: the test metrics, the per-epoch metrics (unless the run logged them live), the
    per-iteration ones as `step.<name>` (if recorded), the training curves, the first-layer filters (models
    with a conv), the history table and the weights.
    With `prefix` ("final"), per-epoch metrics are `final.<name>` and artifacts `final_<name>`, so a sweep's
    parent run holds its final fit beside its own records; `test_acc`/`test_loss` keep their names (a run has
    one test result), logged last, all at once. Returns the rebuilt model."""
    client = mlflow.MlflowClient()
    metric = f"{prefix}.{{}}" if prefix else "{}"
    artifact = f"{prefix}_{{}}" if prefix else "{}"
    if epochs:
        tracking.log_rows(run_id, fit.history, "epoch", prefix=f"{prefix}." if prefix else "")
    tracking.log_rows(run_id, fit.step_rows, "step", prefix=f"{prefix}.step." if prefix else "step.")
    model = fit.build()
    client.log_param(run_id, metric.format("model.parameters"), sum(p.numel() for p in model.parameters()))
    if fit.init:
        client.log_param(run_id, metric.format("model.init"), fit.init)
    client.log_figure(run_id, training_curves_figure(fit.history, title), artifact.format("training_curves.png"))
    try:
        client.log_figure(run_id, filter_grid_figure(first_conv(model).weight), artifact.format("first_layer_filters.png"))
    except ValueError:
        pass  # a fully connected model has no filters to show
    # log_dict overwrites where log_table would append rows to a table that a retried conclusion logged before
    client.log_dict(run_id, fit.history, artifact.format("history.json"))
    model_store.log_model(model, fit.model, fit.model_kw, local_dir=local_dir, run_id=run_id)
    # the test metrics last and in one batch: a run with test_acc has everything above (a conclusion killed
    # before this point is redone by its re-run, which looks for test_acc), and the test set is recorded once
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"test_{k}", float(v), now, 0) for k, v in fit.test.items()])
    return model


def merge_train_val(data: ImageData) -> ImageData:
    """The final-fit data: training and validation splits together, no validation, the same test set."""
    train_set = ImageSet(torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels]))
    empty = ImageSet(data.val.images[:0], data.val.labels[:0])
    return dataclasses.replace(data, train=train_set, val=empty)


def final_fit(cfg: TrainConfig, data: ImageData, cpus: float = 1.0) -> Fit:
    """Retrain `cfg` on train+validation and evaluate it once on the test set, as one Ray task: a whole GPU
    when the cluster has one, else all the CPUs of the largest node (one run, nothing else to share them with)."""
    import ray

    if cluster_has_gpu():
        gpus = 1.0
    else:
        node_cpus = max(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
        gpus, cpus = 0.0, max(cpus, node_cpus)
    return ray.get(fit_remote(cfg, merge_train_val(data), "final fit", num_cpus=cpus, num_gpus=gpus))
