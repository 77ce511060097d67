"""Tune trials mirrored into MLflow: one child run per trial under the sweep's parent run, keyed by trial id.

Runs on the driver as a Tune callback, so trials never talk to the tracking server (no per-trial MLflow
start-up, no sqlite writers racing from worker processes). Keyed by trial id and found again by a tag search,
so a resumed sweep continues its runs instead of creating new ones (the duplicate-run failure of Ray issues
#19978, #36257, #45456), and epochs already logged are not logged twice.
"""
from __future__ import annotations

import time

import mlflow
from mlflow.entities import Metric
from ray.tune import Callback

from .. import tracking
from .space import SearchSpace

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_robust_acc", "lr", "images_per_s", "epoch_s",
           "test_loss", "test_acc")
STEP_PREFIX = "step."  # per-iteration metrics (TrainConfig.log_steps): step.train_acc, step.grad_first, ...


class MLflowTrialRuns(Callback):
    def __init__(self, experiment: str, parent_run_id: str, space: SearchSpace, tracking_uri: str):
        self.experiment, self.parent_run_id, self.space = experiment, parent_run_id, space
        self.tracking_uri = tracking_uri
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_epoch: dict[str, int] = {}  # run id -> last epoch logged

    def _client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.tracking_uri)

    def run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        mlflow.set_tracking_uri(self.tracking_uri)
        run_id, created = tracking.find_or_create_run(
            self.experiment, {"trial_id": trial.trial_id, "sweep_parent": self.parent_run_id},
            run_name=self.space.run_name(trial.config) or str(trial), parent_run_id=self.parent_run_id)
        if created:
            tracking.log_config(trial.config, run_id=run_id, prefix=tracking.SPACE_PARAM_PREFIX)
            tracking.log_config(self.space.apply(trial.config), run_id=run_id)
        history = self._client().get_metric_history(run_id, "val_acc")
        self._last_epoch[run_id] = max((m.step for m in history), default=0)
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        epoch = int(result.get("epoch", 0))
        if epoch <= self._last_epoch[run_id]:  # re-run after a restore from an older checkpoint: logged already
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, epoch) for k in METRICS if k in result]
        self._client().log_batch(run_id, metrics=metrics)
        tracking.log_rows(run_id, result.get("step_rows") or [], "step", prefix=STEP_PREFIX)
        self._last_epoch[run_id] = epoch

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._client().set_terminated(self.run_id(trial), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._client().set_terminated(self.run_id(trial), "FAILED")
