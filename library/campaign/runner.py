"""Running a campaign: its units as concurrent drivers joined to one Ray cluster, in dependency order, resumable.

Why drivers and not Ray Jobs: each unit is the very command a user would type (`python jobs/bn_study.py ...`),
run as a subprocess of the campaign with `RAY_ADDRESS` pointing at the campaign's cluster, so its trials and
tasks share that cluster's CPUs and GPUs with the other units (Ray's scheduler bounds what runs at once), its
console goes to a log file, and it ends with the campaign: a subprocess dies with its parent (Linux's parent-death
signal), so a killed campaign leaves no driver writing behind it. The campaign itself is one Ray job on a
cluster (`ray job submit ... -- python jobs/campaign.py`) and a plain command locally, where it starts Ray once
for all its units instead of once per job.

Every MLflow run a unit makes is tagged with the campaign's run id and the unit's name ($CV_RUN_TAGS), so the
campaign finds its units' results in MLflow alone. Run again, it skips units whose run finished, re-runs the
sweeps and studies that were interrupted (they resume from their Tune state, in the same MLflow run), marks the
interrupted run of any other unit superseded (KILLED, tagged) before running it again, and never re-runs a
unit whose test-set evaluation was recorded. A unit done with another command than the one it would run now
(its arguments changed, or a model it takes was trained again) is superseded and run again."""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import mlflow

from .. import tracking
from .units import UNITS, Unit

CAMPAIGN_TAG, UNIT_TAG = "campaign.run_id", "campaign.unit"  # on every run a unit makes
PROFILE_TAG = "campaign.profile"  # on the campaign's own run: it is found again by (name, profile)
DONE_TAG, SUPERSEDED_TAG = "campaign.done", "campaign.superseded"
COMMAND_TAG = "campaign.command"  # the unit's command line as run (jobs/<job> and its arguments)
JOBS = Path(__file__).resolve().parents[2] / "jobs"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def unit_runs(campaign_run_id: str) -> dict[str, list[mlflow.entities.Run]]:
    """Each unit's top-level runs in this campaign, oldest first (not its trials', not superseded ones)."""
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, filter_string=f"tags.`{CAMPAIGN_TAG}` = '{campaign_run_id}'",
                               order_by=["attributes.start_time ASC"], max_results=5000)
    out: dict[str, list[mlflow.entities.Run]] = {}
    for run in found:
        if "mlflow.parentRunId" not in run.data.tags and run.data.tags.get(SUPERSEDED_TAG) != "true":
            out.setdefault(run.data.tags[UNIT_TAG], []).append(run)
    return out


def mark_done(runs: list[mlflow.entities.Run]) -> None:
    """The campaign saw the unit's job end well: its runs say so (what a re-run of the campaign skips)."""
    client = mlflow.MlflowClient()
    for run in runs:
        client.set_tag(run.info.run_id, DONE_TAG, "true")
        if run.info.status == "RUNNING":  # a run the job left open (it exited 0)
            client.set_terminated(run.info.run_id, "FINISHED")


def is_done(unit: Unit, runs: list[mlflow.entities.Run]) -> bool:
    """The campaign saw the job end well; or the job was stopped right after recording its test result (its
    last write), so its run is closed as finished rather than evaluated on the test set again."""
    if any(DONE_TAG in r.data.tags for r in runs):
        return True
    complete = [r for r in runs if unit.done_metric and unit.done_metric in r.data.metrics]
    if complete:
        mark_done(complete)
    return bool(complete)


def settle(order: list[str], runs: dict[str, list[mlflow.entities.Run]],
           command_line: Callable[[Unit, Mapping[str, str]], str],
           units: Mapping[str, Unit] = UNITS) -> tuple[set[str], list[str]]:
    """The units done earlier with the very command the campaign would run now, and those done with another (its
    arguments changed, or a model it takes was trained again): these are superseded in `runs`, to run again.
    Runs from before commands were recorded count as the same command."""
    done, changed = set(), []
    for name in order:  # dependency order: whatever a unit needs is settled before it
        unit, mine = units[name], runs.get(name, [])
        if not is_done(unit, mine):
            continue
        if all(n in done for n in unit.needs):
            now = command_line(unit, {n: runs[n][-1].info.run_id for n in unit.needs})
            if all(r.data.tags.get(COMMAND_TAG, now) == now for r in mine):
                done.add(name)
                continue
        changed.append(name)
        if not unit.resumes:  # a sweep or study goes on in its own runs (found by its state's path): they stay,
            supersede(runs.pop(name))  # and those its job does not take up are retired when it ends (retire_stale)
    return done, changed


def retire_stale(unit: Unit, runs: list[mlflow.entities.Run], now: str) -> None:
    """After `unit` ran with the command `now`: its runs that the job did not take up (a sweep whose path the new
    arguments changed) are superseded, so the campaign holds the unit done with the very command it runs."""
    supersede([r for r in runs if r.data.tags.get(COMMAND_TAG, now) != now])


def supersede(runs: list[mlflow.entities.Run]) -> None:
    """The interrupted runs of a unit that cannot resume: closed as KILLED and left out of the campaign."""
    client = mlflow.MlflowClient()
    for run in runs:
        client.set_tag(run.info.run_id, SUPERSEDED_TAG, "true")
        client.set_tag(run.info.run_id, "mlflow.note.content",
                       "Interrupted with its campaign; the campaign ran this experiment again in another run.")
        if run.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(run.info.run_id, "KILLED")


@dataclass
class Running:
    unit: Unit
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.time)


@dataclass
class Launcher:
    """Starts units as drivers of the campaign's cluster and tells which have ended."""

    campaign_run_id: str
    campaign: str
    profile: str
    photos: str
    ray_address: str
    log_dir: Path
    running: dict[str, Running] = field(default_factory=dict)

    def command(self, unit: Unit, made: Mapping[str, str]) -> list[str]:
        return [sys.executable, str(JOBS / unit.job), *unit.argv(self.profile, self.campaign, made, self.photos)]

    def command_line(self, unit: Unit, made: Mapping[str, str]) -> str:
        """The command as recorded on the unit's runs: the same on any machine and interpreter."""
        return " ".join([f"jobs/{unit.job}", *unit.argv(self.profile, self.campaign, made, self.photos)])

    def start(self, unit: Unit, made: Mapping[str, str]) -> None:
        tags = {CAMPAIGN_TAG: self.campaign_run_id, UNIT_TAG: unit.name, COMMAND_TAG: self.command_line(unit, made),
                SUPERSEDED_TAG: "false"}  # a run the job takes up again (a sweep's) is this campaign's again
        env = os.environ | {tracking.RUN_TAGS_ENV: json.dumps(tags), "RAY_ADDRESS": self.ray_address,
                            tracking.TRACKING_ENV: mlflow.get_tracking_uri(), "PYTHONUNBUFFERED": "1"}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{unit.name}.log"
        with open(log, "a") as out:
            out.write(f"$ {' '.join(self.command(unit, made))}\n")
            out.flush()
            process = subprocess.Popen(self.command(unit, made), env=env, stdout=out, stderr=subprocess.STDOUT,
                                       preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.running[unit.name] = Running(unit, process, log)

    def ended(self) -> list[tuple[Running, int]]:
        done = [(r, r.process.poll()) for r in self.running.values() if r.process.poll() is not None]
        for r, _ in done:
            del self.running[r.unit.name]
        return done

    def interrupt(self, grace_s: float = 90) -> None:
        """Ctrl-C for every running unit (each saves its state as it does alone), then wait for them."""
        for r in self.running.values():
            r.process.send_signal(signal.SIGINT)
        deadline = time.time() + grace_s
        for r in self.running.values():
            try:
                r.process.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                r.process.kill()


def last_error(log: Path) -> str:
    """The line a failed job ended on (its `error:` line, or a traceback's last line)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:300]
