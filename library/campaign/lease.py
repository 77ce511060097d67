"""One driver per campaign at a time.

A second `campaign.py` on the same campaign (run twice by mistake, a `ray job submit` repeated while the first
still runs) would take the first one's open runs for interrupted ones: it would supersede them and run the same
experiments again beside them. The driver therefore holds a lease on the campaign's MLflow run: a tag naming it
and a heartbeat it refreshes. Another driver refuses to start while the holder lives: on the same machine, while
its process does (so the re-run of a killed driver starts at once); from another machine, while its heartbeat is
fresh. MLflow tags have no compare-and-set, so a driver reads its claim back after a pause: of two that claim at
once, the one overwritten gives way.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import mlflow

from ..config import ConfigError

DRIVER_TAG = "campaign.driver"  # host:pid:process start of the driver that holds the campaign
HEARTBEAT_TAG = "campaign.heartbeat"  # when that driver last said it runs (seconds since the epoch)
HEARTBEAT_S = 20.0
STALE_S = 6 * HEARTBEAT_S  # a holder on another machine silent this long is gone
SETTLE_S = 1.0  # between a claim and reading it back


class CampaignBusyError(ConfigError):
    """Another driver runs this campaign now (a ConfigError: the job ends on one line saying what to do)."""


def _started(pid: int) -> str | None:
    """The process's start (clock ticks since boot, Linux), "" where /proc cannot tell, None: no such process
    (or one that has exited and waits for its parent to collect it)."""
    try:
        state, *fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return None if state in "ZX" else fields[18]
    except FileNotFoundError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""


def this_driver() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid())}"


def _alive(holder: str, heartbeat: float) -> bool:
    host, pid, started = holder.rsplit(":", 2)
    if host == socket.gethostname():
        now = _started(int(pid))
        return now is not None and (now == started or not now or not started)  # not a reused pid
    return time.time() - heartbeat < STALE_S


@dataclass
class Lease:
    run_id: str
    driver: str
    renewed: float = 0.0

    def renew(self) -> None:
        """The heartbeat, at most every HEARTBEAT_S (call it from the driver's loop)."""
        if time.time() - self.renewed >= HEARTBEAT_S:
            self.renewed = time.time()
            mlflow.MlflowClient().set_tag(self.run_id, HEARTBEAT_TAG, f"{self.renewed:.0f}")

    def release(self) -> None:
        if _holder(self.run_id)[0] == self.driver:
            mlflow.MlflowClient().delete_tag(self.run_id, DRIVER_TAG)


def _holder(run_id: str) -> tuple[str, float]:
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    return tags.get(DRIVER_TAG, ""), float(tags.get(HEARTBEAT_TAG) or 0)


def _busy(run_id: str, holder: str, heartbeat: float) -> CampaignBusyError:
    seen = f", last heard from {time.time() - heartbeat:.0f} s ago" if heartbeat else ""
    return CampaignBusyError(
        f"another driver runs this campaign (MLflow run {run_id}): {holder}{seen}. Wait for it to end, or stop it "
        "(Ctrl-C; its jobs save their state) and run this command again; to run a campaign beside it, give this "
        "one another --name")


def acquire(run_id: str) -> Lease:
    """The campaign's lease for this driver, or CampaignBusyError naming the driver that holds it."""
    me = this_driver()
    holder, heartbeat = _holder(run_id)
    if holder and holder != me and _alive(holder, heartbeat):
        raise _busy(run_id, holder, heartbeat)
    client = mlflow.MlflowClient()
    client.set_tag(run_id, DRIVER_TAG, me)
    client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
    time.sleep(SETTLE_S)
    holder, heartbeat = _holder(run_id)
    if holder != me:
        raise _busy(run_id, holder, heartbeat)
    return Lease(run_id, me, time.time())
