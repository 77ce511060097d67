"""MLflow writes that outlive an outage of the tracking server, for the driver-side Tune callbacks.

Each write is a small JSON-able record, tried at once. While the server does not answer, records wait in order,
are kept on disk beside Tune's state, and are retried at most every `retry_s`; the console gets one line when the
outage starts and one when it ends, never a frozen screen. After `give_up_s` without an answer the sweep stops
with `TrackingUnavailableError` (its Tune state is saved), and the next run of the same command replays the
records on disk before anything else, so no epoch is lost either way.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import requests
from mlflow.exceptions import MlflowException

from ..tracking import TrackingUnavailableError

PENDING_FILE = "mlflow_pending.json"
# MLflow's own HTTP retries (7, backing off up to minutes) would hold the driver, and Tune, on one write: a few
# quick ones here, the rest in `retry_s`; a user's own settings of these variables win
QUICK_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def is_outage(error: BaseException) -> bool:
    """The tracking server did not answer (refused, timed out, 5xx), as opposed to refusing a write (4xx): MLflow
    reports the first kind as "API request to <url> failed ...", the second with an error code of its own."""
    if isinstance(error, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    return isinstance(error, MlflowException) and str(error).startswith("API request to")


class PendingWrites:
    """`apply(record)` performs one write; records go through `submit` and are replayed in order."""

    def __init__(self, apply: Callable[[dict[str, Any]], None], folder: str | None, retry_s: float = 30.0,
                 give_up_s: float = 900.0):
        self.apply, self.retry_s, self.give_up_s = apply, retry_s, give_up_s
        for name, value in QUICK_FAILURE.items():
            os.environ.setdefault(name, value)
        self.path = Path(folder) / PENDING_FILE if folder and "://" not in folder else None  # local storage only
        self.queue: deque[dict[str, Any]] = deque(self._load())
        self.down_since: float | None = None  # when the current outage began
        self.last_try = 0.0

    def _load(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return []
        try:
            return list(json.loads(self.path.read_text()))
        except (OSError, ValueError) as e:
            print(f"ignoring {self.path}, unreadable ({e}): MLflow may miss some epochs of the last run", flush=True)
            return []

    def _save(self) -> None:
        if self.path is None:
            return
        if not self.queue:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(list(self.queue)))
        os.replace(tmp, self.path)  # atomic: a driver killed mid-write leaves the previous file

    def submit(self, record: dict[str, Any]) -> None:
        self.queue.append(record)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Write what waits, in order, unless the server is down and was tried under `retry_s` ago (`force`: try
        anyway). True when nothing waits any more."""
        now = time.monotonic()
        if self.down_since is not None and not force and now - self.last_try < self.retry_s:
            self._save()
            return False
        self.last_try = now
        written = 0
        while self.queue:
            try:
                self.apply(self.queue[0])
            except Exception as e:  # an outage waits; anything else is a bug to see at once
                if not is_outage(e):
                    raise
                self._outage(e, now)
                return False
            self.queue.popleft()
            written += 1
        if self.down_since is not None:
            print(f"MLflow answers again: {written} delayed write(s) recorded", flush=True)
            self.down_since = None
        self._save()
        return True

    def _outage(self, error: Exception, now: float) -> None:
        self._save()
        if self.down_since is None:
            self.down_since = now
            cause = (str(error).splitlines() or [type(error).__name__])[0][:160]
            print(f"MLflow does not answer ({cause}); trials go on and {len(self.queue)} write(s) wait, retried "
                  f"every {self.retry_s:.0f} s for up to {self.give_up_s / 60:.0f} minutes", flush=True)
        elif now - self.down_since > self.give_up_s:
            where = f" (kept in {self.path})" if self.path else ""
            raise TrackingUnavailableError(
                f"MLflow has not answered for {self.give_up_s / 60:.0f} minutes; {len(self.queue)} write(s) wait"
                f"{where}. The sweep's state is saved: run the same command again once the server is back.")

    def drain(self) -> None:
        """At the end of the trials: keep retrying until everything is written or `give_up_s` has passed."""
        while not self.flush(force=True):
            time.sleep(min(self.retry_s, 10.0))
