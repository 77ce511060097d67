"""Tune trials mirrored into MLflow: one child run per trial under the sweep's parent run, keyed by trial id.

Runs on the driver as a Tune callback, so trials never talk to the tracking server (no per-trial MLflow
start-up, no sqlite writers racing from worker processes). Keyed by trial id and found again by a tag search,
so a resumed sweep continues its runs instead of creating new ones (the duplicate-run failure of Ray issues
#19978, #36257, #45456), and epochs already logged are not logged twice.

Tune pickles its callbacks into the experiment state, and a restored Tuner runs those, taking no new ones. So
the callback keeps only what names the sweep (experiment, sweep id, space) and finds the parent and child runs
again, in the store MLflow points at today, after a restore: no stale run ids or tracking URI.
"""
from __future__ import annotations

import time

import mlflow
from mlflow.entities import Metric
from ray.tune import Callback

from .. import tracking
from .space import SearchSpace

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_robust_acc", "val_acc_at_time", "train_s", "lr",
           "images_per_s", "epoch_s", "test_loss", "test_acc")
STEP_PREFIX = "step."  # per-iteration metrics (TrainConfig.log_steps): step.train_acc, step.grad_first, ...


class MLflowTrialRuns(Callback):
    """Call `tracking.connect()` first: runs go to MLflow's current store."""

    def __init__(self, experiment: str, sweep_id: str, space: SearchSpace):
        self.experiment, self.sweep_id, self.space = experiment, sweep_id, space
        self._forget()

    def _forget(self) -> None:
        self._parent: str | None = None  # the sweep's parent run, found by its sweep_id tag
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_epoch: dict[str, int] = {}  # run id -> last epoch logged

    def __getstate__(self) -> dict:
        return {"experiment": self.experiment, "sweep_id": self.sweep_id, "space": self.space}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._forget()

    def _client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient()

    def parent_run_id(self) -> str:
        if self._parent is None:
            self._parent = tracking.find_run(self.experiment, {"sweep_id": self.sweep_id})
            if self._parent is None:
                raise RuntimeError(f"no parent run tagged sweep_id={self.sweep_id} in {mlflow.get_tracking_uri()}; "
                                   "run_sweep creates it before the trials start")
        return self._parent

    def run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        parent = self.parent_run_id()
        run_id, created = tracking.find_or_create_run(
            self.experiment, {"trial_id": trial.trial_id, "sweep_parent": parent},
            run_name=f"{self.space.run_name(trial.config)} [{trial.trial_id}]", parent_run_id=parent)
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
