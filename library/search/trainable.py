"""The trainable: one Tune trial, the only Tune-aware training code.

`train()` calls back after each epoch, and the callback reports the metrics together with a checkpoint of the
full training state; a restarted or resumed trial continues from `tune.get_checkpoint()`. A trial's process
imports this module to unpickle the function, so it imports only what training needs (no MLflow, no timm:
they would cost every fresh trial process ~2.5 s before its first step).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..data import ImageData
from ..cluster import use_assigned_cpus
from ..train.evaluation import evaluate
from ..train.loop import train
from .checkpoints import CHECKPOINT_FILE, restore_state
from .space import SearchSpace


def trainable(config: dict[str, Any], data: ImageData, space: SearchSpace, test: bool = False,
              time_budget_s: float = 0.0) -> None:
    """One trial: the sampled `config` applied to the space's base TrainConfig, trained with a report and a
    checkpoint per epoch. With `test` (studies, which select nothing on validation), the last report carries the
    test-set metrics; per-iteration rows (TrainConfig.log_steps) travel in each report as `step_rows`. With
    `time_budget_s`, each report carries val_acc_at_time and the trial ends once its training time reaches it."""
    from ray import tune

    use_assigned_cpus()
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # a "Checkpoint successfully created" line per epoch
    cfg = space.apply(config)

    def on_epoch(metrics: dict, state) -> bool:
        report = dict(metrics)
        out_of_time = bool(time_budget_s) and metrics["train_s"] >= time_budget_s
        if time_budget_s:
            report["val_acc_at_time"] = metrics["val_acc"]
        if test and state.epoch == state.total_epochs:
            with state.averaged() as model:
                scores = evaluate(model, data.test, cfg.eval_batch_size, cfg.amp, cfg.tta)
            report |= {"test_loss": scores["loss"], "test_acc": scores["acc"]}
        if state.epoch_rows:
            report["step_rows"] = state.epoch_rows
        with tempfile.TemporaryDirectory() as directory:
            torch.save(state.state_dict(), Path(directory) / CHECKPOINT_FILE)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))
        return out_of_time

    train(cfg, data, on_epoch=on_epoch, resume=restore_state(tune.get_checkpoint()))
