"""Tune trials mirrored into MLflow: one child run per trial under the sweep's parent run, keyed by trial id.

Runs on the driver as a Tune callback, so trials never talk to the tracking server (no per-trial MLflow
start-up, no sqlite writers racing from worker processes). Keyed by trial id and found again by a tag search,
so a resumed sweep continues its runs instead of creating new ones (the duplicate-run failure of Ray issues
#19978, #36257, #45456), and epochs already logged are not logged twice.

Tune pickles its callbacks into the experiment state, and a restored Tuner runs those, taking no new ones. So
the callback keeps only what names the sweep (experiment, sweep id, space) and finds the parent and child runs
again, in the store MLflow points at today, after a restore: no stale run ids or tracking URI.

A child run is created the moment its trial starts, but Tune saves its state only every few seconds: a driver
killed in between leaves child runs of trials that the restored Tuner has never heard of (the searcher suggests
others instead). At its first step the callback compares the children with Tune's trials and tags each stranger
`orphaned` (RUNNING ones end KILLED; a note says why), so every other child is one Tune trial and the
leaderboard, the trial count and the finished check (`outcome.children`) leave orphans out. A grid or random
search numbers its trials the same way again, so a lost trial's id may come back: its run is then adopted (the
tag removed) and continued, its epochs already logged kept.
"""
from __future__ import annotations

import time
from typing import Any

import mlflow
from mlflow.entities import Metric
from ray.tune import Callback

from .. import tracking
from .outcome import ORPHAN_TAG, children
from .pending import PendingWrites
from .space import SearchSpace

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_robust_acc", "val_acc_at_time", "train_s", "lr",
           "images_per_s", "epoch_s", "test_loss", "test_acc")
STEP_PREFIX = "step."  # per-iteration metrics (TrainConfig.log_steps): step.train_acc, step.grad_first, ...


class MLflowTrialRuns(Callback):
    """Call `tracking.connect()` first: runs go to MLflow's current store. Every write goes through
    `PendingWrites` (library/search/pending.py), so a tracking-server outage delays writes instead of stopping
    the trials; `state_dir` (the sweep's Tune state folder) keeps what waits across a lost driver."""

    def __init__(self, experiment: str, sweep_id: str, space: SearchSpace, state_dir: str | None = None):
        self.experiment, self.sweep_id, self.space, self.state_dir = experiment, sweep_id, space, state_dir
        self._forget()

    def _forget(self) -> None:
        self._parent: str | None = None  # the sweep's parent run, found by its sweep_id tag
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_epoch: dict[str, int] = {}  # run id -> last epoch logged
        self._reconciled = False  # orphaned children closed (once per driver, at the first step)
        self._pending = PendingWrites(self._apply, self.state_dir)

    def __getstate__(self) -> dict:
        return {"experiment": self.experiment, "sweep_id": self.sweep_id, "space": self.space,
                "state_dir": self.state_dir}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"state_dir": None} | state)
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

    def run_id(self, trial_id: str, config: dict) -> str:
        if trial_id in self._runs:
            return self._runs[trial_id]
        parent = self.parent_run_id()
        run_id, created = tracking.find_or_create_run(
            self.experiment, {"trial_id": trial_id, "sweep_parent": parent},
            run_name=f"{self.space.run_name(config)} [{trial_id}]", parent_run_id=parent)
        if created:
            tracking.log_config(config, run_id=run_id, prefix=tracking.SPACE_PARAM_PREFIX)
            tracking.log_config(self.space.apply(config), run_id=run_id)
        elif self._client().get_run(run_id).data.tags.get(ORPHAN_TAG) == "true":
            # its trial id came back (grid and random search number trials the same way again): the same trial,
            # run again, so the run is adopted
            for tag in (ORPHAN_TAG, "mlflow.note.content"):
                self._client().delete_tag(run_id, tag)
        history = self._client().get_metric_history(run_id, "val_acc")
        self._last_epoch[run_id] = max((m.step for m in history), default=0)
        self._runs[trial_id] = run_id
        return run_id

    def close_orphans(self, known: set[str]) -> list[str]:
        """Tag the children whose trial Tune does not have as orphaned (ending RUNNING ones KILLED); their ids."""
        client, closed = self._client(), []
        for run in children(self.parent_run_id()):
            if run.data.tags.get("trial_id") in known:
                continue
            client.set_tag(run.info.run_id, ORPHAN_TAG, "true")
            client.set_tag(run.info.run_id, "mlflow.note.content",
                           "Orphaned: its trial started moments before the sweep's driver was killed, and Tune's saved "
                           "state does not have it; the resumed sweep ran other trials in its place.")
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
        if closed:
            print(f"{len(closed)} trial run(s) orphaned by a killed driver closed and tagged {ORPHAN_TAG}", flush=True)
        return closed

    # ---- the writes, as records (see PendingWrites) -------------------------------------------------------

    def _apply(self, record: dict[str, Any]) -> None:
        if record["op"] == "orphans":
            self.close_orphans(set(record["known"]))
            return
        run_id = self.run_id(record["trial"], record["config"])
        if record["op"] == "result":
            self._log_result(run_id, record)
        elif record["op"] == "end":
            self._client().set_terminated(run_id, record["status"])

    def _log_result(self, run_id: str, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        if epoch <= self._last_epoch[run_id]:  # re-run after a restore from an older checkpoint: logged already
            return
        metrics = [Metric(k, v, record["time"], epoch) for k, v in record["metrics"].items()]
        self._client().log_batch(run_id, metrics=metrics)
        tracking.log_rows(run_id, record["step_rows"], "step", prefix=STEP_PREFIX)
        self._last_epoch[run_id] = epoch

    def _submit(self, op: str, trial, **fields) -> None:
        self._pending.submit({"op": op, "trial": trial.trial_id, "config": dict(trial.config), **fields})

    # ---- Tune's hooks -------------------------------------------------------------------------------------

    def _reconcile_once(self, trials) -> bool:
        """Queue the orphan check against Tune's `trials` the first time this driver sees them; whether it did."""
        if self._reconciled:
            return False
        self._pending.submit({"op": "orphans", "known": sorted(t.trial_id for t in trials)})
        self._reconciled = True
        return True

    def on_step_begin(self, iteration, trials, **info):
        # Tune's trials, restored ones included, are all known from the first step
        if not self._reconcile_once(trials) and self._pending.queue:
            self._pending.flush()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit("start", trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: float(result[k]) for k in METRICS if k in result}
        self._submit("result", trial, epoch=int(result.get("epoch", 0)), metrics=metrics,
                     time=int(time.time() * 1000), step_rows=result.get("step_rows") or [])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._submit("end", trial, status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._submit("end", trial, status="FAILED")

    def on_experiment_end(self, trials, **info):
        self._reconcile_once(trials)  # a restored sweep whose trials had all ended takes no step
        self._pending.drain()  # everything recorded before the sweep concludes (or a clear error)
