"""How a sweep or a study ends: finished, or interrupted with trials to run, and concluded exactly once.

Tune's in-memory trial states do not survive the driver, so whether every owed trial has ended is read from the
child runs' statuses in MLflow. Everything after the trials (reports, a final fit, the comparison) runs once per
sweep: a parent run tagged `complete` is never concluded again by a re-run of its command.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import mlflow

from ..tracking import TrackingUnavailableError
from .pending import is_outage

COMPLETE_TAG = "complete"  # "true" on a parent run once everything after its trials is recorded
ORPHAN_TAG = "orphaned"  # "true" on a child run whose trial Tune's saved state does not have (see trial_runs)


@dataclass
class SweepOutcome:
    parent_run_id: str
    results: Any  # ray.tune.ResultGrid; None when the sweep was complete before this run (nothing ran)
    resumed: bool
    finished: bool  # False: stopped (Ctrl-C / SIGINT) with trials to run; the same command resumes it


def children(parent_run_id: str, orphans: bool = False) -> list:
    """The child runs of a parent run (a sweep's trials), without the orphaned ones unless `orphans`."""
    parent = mlflow.get_run(parent_run_id)
    runs = mlflow.MlflowClient().search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000)
    return [r for r in runs if orphans or r.data.tags.get(ORPHAN_TAG) != "true"]


def is_complete(parent_run_id: str) -> bool:
    return mlflow.MlflowClient().get_run(parent_run_id).data.tags.get(COMPLETE_TAG) == "true"


def all_trials_done(parent_run_id: str, expected: int) -> bool:
    """Every trial the search owes has ended, by the child runs' statuses. `MLflowTrialRuns` closes a run only
    when Tune completes, early-stops or fails its trial, never when a Ctrl-C cleanup stops it, and the statuses
    outlive the driver, unlike Tune's in-memory trial states (which an interrupted trial leaves TERMINATED)."""
    runs = children(parent_run_id)
    return len(runs) >= expected and all(c.info.status in ("FINISHED", "FAILED") for c in runs)


def mark_interrupted(parent_run_id: str) -> None:
    """The parent and its still-RUNNING children as KILLED: nothing runs behind them until the same command
    resumes the sweep, which reopens each run it continues (`tracking.find_or_create_run`)."""
    client = mlflow.MlflowClient()
    for child in children(parent_run_id):
        if child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, "KILLED")
    client.set_terminated(parent_run_id, "KILLED")


def conclude_once(outcome: SweepOutcome, kind: str, state_path: str, conclude: Callable[[], Any]) -> bool:
    """The end of a sweep or study (`kind`), once across re-runs of its command. With trials unfinished: say
    where the state is and how to resume, and exit with status 130. Concluded by an earlier run: nothing to do.
    Else `conclude()` records its results into the parent run, which is then tagged complete. Either way the
    parent run ends FINISHED. Returns whether this call concluded it."""
    if not outcome.finished:
        mark_interrupted(outcome.parent_run_id)
        print(f"\nthe {kind} was interrupted with trials unfinished; its state is saved in {state_path}."
              "\nRun the same command again to resume it (same MLflow runs, no duplicates).")
        raise SystemExit(130)
    client = mlflow.MlflowClient()
    parent = outcome.parent_run_id
    concluded_before = is_complete(parent)
    if not concluded_before:
        try:
            conclude()
        except Exception as e:
            if is_outage(e):  # the trials are recorded; what follows them is redone by the next run
                raise TrackingUnavailableError(
                    f"MLflow stopped answering while the {kind} concluded ({str(e)[:200]}). Its trials are recorded; "
                    "run the same command again once the server answers, and the conclusion is redone.") from e
            raise
        client.set_tag(parent, COMPLETE_TAG, "true")
    client.set_terminated(parent, "FINISHED")
    return not concluded_before
