"""What the driver prints while a sweep runs: one line per trial that ends, and a heartbeat line at most every
`every_s` seconds while trials run (so a slow CPU trial never looks hung), instead of Tune's tables.

    trial 2/3 done: w16-s2-d1-k5-bn-relu-residual lr=0.0068 ... [91f0d725]  val_acc 0.219 after 2 epochs, 6 s
      (best so far 0.219)
    0:01:00  1 running, 1 pending, 1 done; best val_acc 0.219; 78d0cdf9 epoch 1/2 val_acc 0.172
"""
from __future__ import annotations

import logging
import math
import os
import time

from ray.tune import Callback


def _no_restore_hint(record: logging.LogRecord) -> bool:
    """Drop Tune's "resume with Tuner.restore(...)" after a Ctrl-C: here the same command resumes (outcome.py)."""
    return not record.getMessage().startswith("Experiment has been interrupted")


def quiet_tune() -> None:
    """Tune's console, at its source, for a driver that prints `Progress` instead: Tune's logs at WARNING without
    its restore hint, and Tune's legacy output engine, the one that is silent at verbose=0 (the new engine still
    prints its start-up table). Call before `Tuner.fit()`."""
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if _no_restore_hint not in logging.getLogger("ray.tune.tune").filters:
        logging.getLogger("ray.tune.tune").addFilter(_no_restore_hint)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # a snapshot per epoch is by design here (checkpoints every epoch, num_to_keep=2): not a bottleneck to warn of
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _clock(seconds: float) -> str:
    """12 s, 3:05, 1:02:03."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}" if minutes else f"{secs} s"


class Progress(Callback):
    """Lines for the console, from the driver; `metric` is the sweep's ranking metric."""

    def __init__(self, metric: str, total: int, run_name, every_s: float = 30.0):
        self.metric, self.total, self.run_name, self.every_s = metric, total, run_name, every_s
        self._reset()

    def _reset(self) -> None:
        self._start = time.monotonic()
        self._last_beat = self._start
        self._latest: dict[str, dict] = {}  # trial id -> its last result
        self._ended: set[str] = set()
        self._best = -math.inf

    # Tune pickles callbacks into its state: a restored sweep starts its console afresh
    def __getstate__(self) -> dict:
        return {"metric": self.metric, "total": self.total, "run_name": self.run_name, "every_s": self.every_s}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._latest[trial.trial_id] = result

    def _end(self, trial, how: str) -> None:
        if trial.trial_id in self._ended:
            return
        self._ended.add(trial.trial_id)
        result = self._latest.get(trial.trial_id, {})
        value = result.get(self.metric)
        if value is not None and how == "done":
            self._best = max(self._best, value)
        score = f"{self.metric} {value:.3f}" if value is not None else f"no {self.metric}"
        epochs = int(result.get("epoch", 0))
        print(f"trial {len(self._ended)}/{self.total} {how}: {self.run_name(trial.config)} [{trial.trial_id}]  "
              f"{score} after {epochs} epoch{'s' * (epochs != 1)}, {_clock(result.get('time_total_s', 0))}"
              f"  (best so far {self._best:.3f})", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last_beat < self.every_s:
            return
        self._last_beat = now
        states = [t.status for t in trials]
        running = [t for t in trials if t.status == "RUNNING"]
        parts = [f"{states.count('RUNNING')} running", f"{states.count('PENDING')} pending",
                 f"{len(self._ended)} done"]
        best = f"; best {self.metric} {self._best:.3f}" if self._best > -math.inf else ""
        live = [f"{t.trial_id} epoch {int(self._latest[t.trial_id].get('epoch', 0))}"
                f" {self.metric} {self._latest[t.trial_id].get(self.metric, math.nan):.3f}"
                for t in running if t.trial_id in self._latest]
        print(f"{_clock(now - self._start)}  {', '.join(parts)}{best}" + (f"; {', '.join(live)}" if live else ""),
              flush=True)
