"""Faults injected the way they happen, on real local Ray with subprocess drivers:

- the driver of a smoke sweep SIGKILLed at each phase of its life, then the same command run again, until it
  finishes: exactly one child run per Tune trial (runs of trials Tune's saved state never had are tagged
  orphaned), nothing RUNNING, the final model and its figures in the parent, test_acc logged once;
- a real MLflow tracking server on loopback stopped mid-sweep and started again: the trials go on, the console
  says so in one line, and every epoch of every trial reaches MLflow."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import mlflow
import psutil
import pytest

from conftest import REPO, free_port, job_env, start_mlflow_server, stop_server, tune_cmd

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARGS = ("--num_samples=4", "--max_concurrent=2", "--scheduler=fifo", "--space.epochs=[4]", "--final_epochs=4")


class Driver:
    """A job subprocess whose output is collected as it comes (so a phase can be seen in it)."""

    def __init__(self, store: Path, data_root: Path, name: str = "faults", args=ARGS, cmd: list[str] | None = None,
                 **env_vars: str):
        env = job_env(store, data_root) | {"PYTHONUNBUFFERED": "1"} | env_vars  # lines as printed, through the pipe
        self.proc = subprocess.Popen(cmd or tune_cmd(store, name, *args), cwd=store, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self.reader = threading.Thread(target=lambda: self.output.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def text(self) -> str:
        return "".join(self.output)

    def kill_when(self, phase: Callable[["Driver"], bool], timeout: float = 300) -> bool:
        """SIGKILL the driver as soon as `phase` holds, and wait for its local Ray (Ray ties it to the driver's
        life) to be gone, so that no trial of it writes on; False if the driver exited first."""
        deadline = time.time() + timeout
        while self.proc.poll() is None:
            assert time.time() < deadline, f"phase never reached:\n{self.text[-3000:]}"
            if phase(self):
                ray_processes = ray_writers(self.proc.pid)
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self.reader.join(timeout=30)
                wait_until_gone(ray_processes)
                return True
            time.sleep(0.05)
        self.reader.join(timeout=30)
        return False


def ray_writers(pid: int) -> list[psutil.Process]:
    """The processes of a driver's local Ray that could still write (GCS, raylet, workers): not Ray's two agents,
    which outlive their raylet by up to a minute (they notice it is gone by a health check) and write nothing of
    a job's."""
    def agent(p: psutil.Process) -> bool:
        try:
            return p.cmdline()[:1] in (["ray::DashboardAgent"], ["ray::RuntimeEnvAgent"])
        except psutil.NoSuchProcess:
            return True
    return [p for p in psutil.Process(pid).children(recursive=True) if not agent(p)]


def wait_until_gone(processes: list[psutil.Process], timeout: float = 60) -> None:
    """Until each of `processes` has exited (a zombie counts: its parent is gone, and no one may reap it)."""
    def alive(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    deadline = time.time() + timeout
    while any(alive(p) for p in processes):
        assert time.time() < deadline, [p.cmdline()[:2] for p in processes if alive(p)]
        time.sleep(0.1)


def runs(store: Path, experiment: str = "faults") -> tuple[list, list]:
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    found = mlflow.MlflowClient().search_runs([exp.experiment_id], max_results=1000)
    return ([r for r in found if "mlflow.parentRunId" not in r.data.tags],
            [r for r in found if "mlflow.parentRunId" in r.data.tags])


def trials_starting(store: Path) -> Callable[[Driver], bool]:
    return lambda d: len(runs(store)[1]) > 0


def mid_trial(store: Path, experiment: str = "faults") -> Callable[[Driver], bool]:
    start_ms = time.time() * 1000

    def phase(d: Driver) -> bool:  # a trial has reported (and checkpointed) an epoch in this run, and goes on
        client = mlflow.MlflowClient()
        return any(c.info.status == "RUNNING" and any(m.timestamp > start_ms for m in
                                                      client.get_metric_history(c.info.run_id, "val_acc"))
                   for c in runs(store, experiment)[1])
    return phase


def between_trials(store: Path) -> Callable[[Driver], bool]:
    def phase(d: Driver) -> bool:
        return " done: " in d.text  # a trial of this run has just finished, others have not
    return phase


def during_final_fit(store: Path) -> Callable[[Driver], bool]:
    return lambda d: "final fit: epoch 1/" in d.text


def after_test_metric(store: Path) -> Callable[[Driver], bool]:
    def phase(d: Driver) -> bool:
        parents = runs(store)[0]
        return bool(parents) and "test_acc" in parents[0].data.metrics
    return phase


def leave_an_orphan(store: Path, experiment: str = "faults") -> None:
    """What a driver killed between creating a trial's run and Tune's next state snapshot leaves (timing that a
    kill hits only by luck): a RUNNING child run of a trial id Tune's saved state does not have."""
    [parent], _ = runs(store, experiment)
    client = mlflow.MlflowClient()
    client.create_run(parent.info.experiment_id, run_name="w8 lr=0.001 [deadbeef]",
                      tags={"trial_id": "deadbeef", "sweep_parent": parent.info.run_id,
                            "mlflow.parentRunId": parent.info.run_id})


@pytest.mark.timeout(1500)
def test_a_sweep_killed_at_every_phase_finishes_with_nothing_lost(tmp_path, cifar_root):
    killed = []
    for phase in (trials_starting, mid_trial, between_trials, during_final_fit, after_test_metric):
        driver = Driver(tmp_path, cifar_root)
        if driver.kill_when(phase(tmp_path)):
            killed.append(phase.__name__)
        else:
            assert driver.proc.returncode == 0, driver.text[-3000:]
        if phase is trials_starting:
            leave_an_orphan(tmp_path)
    assert len(killed) >= 4, killed  # a phase may pass between two polls; most must have been hit

    last = subprocess.run(tune_cmd(tmp_path, "faults", *ARGS), cwd=tmp_path, env=job_env(tmp_path, cifar_root),
                          capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    parents, children = runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    trials = [c for c in children if c.data.tags.get("orphaned") != "true"]
    orphans = [c for c in children if c.data.tags.get("orphaned") == "true"]
    assert len(trials) == 4 and len({c.data.tags["trial_id"] for c in trials}) == 4  # one run per Tune trial
    assert all(c.info.status in ("FINISHED", "FAILED") for c in trials)
    assert "deadbeef" in {c.data.tags["trial_id"] for c in orphans}
    assert all(c.info.status != "RUNNING" and "Orphaned" in c.data.tags["mlflow.note.content"] for c in orphans)
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(parent.info.run_id, "test_acc")) == 1
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model", "final_training_curves.png", "final_history.json", "leaderboard.csv",
            "best_config.json"} <= artifacts
    print(f"killed at {killed}; {len(trials)} trial runs, {len(orphans)} orphaned")  # -s: the fault table's counts
    leaderboard = client.download_artifacts(parent.info.run_id, "leaderboard.csv", str(tmp_path))
    assert len(Path(leaderboard).read_text().strip().splitlines()) == 1 + 4  # orphans are not trials

    again = subprocess.run(tune_cmd(tmp_path, "faults", *ARGS), cwd=tmp_path, env=job_env(tmp_path, cifar_root),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "complete already" in again.stdout
    untouched = [(c.info.run_id, c.info.status, c.info.end_time) for c in children]
    assert [(c.info.run_id, c.info.status, c.info.end_time) for c in runs(tmp_path)[1]] == untouched


@pytest.mark.timeout(900)
def test_a_tracking_server_outage_mid_sweep_delays_writes_and_loses_none(tmp_path, cifar_root):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    args = ("--num_samples=3", "--max_concurrent=1", "--scheduler=fifo", "--space.epochs=[6]", "--retrain=false")
    driver = Driver(tmp_path, cifar_root, "outage", args, MLFLOW_TRACKING_URI=uri)
    try:
        mlflow.set_tracking_uri(uri)

        def some_epoch_logged(d: Driver) -> bool:
            exp = mlflow.get_experiment_by_name("outage")
            return exp is not None and any("val_acc" in r.data.metrics for r in
                                           mlflow.MlflowClient().search_runs([exp.experiment_id]))
        deadline = time.time() + 300
        while not some_epoch_logged(driver):
            assert driver.proc.poll() is None and time.time() < deadline, driver.text[-3000:]
            time.sleep(0.2)
        stop_server(server)
        deadline = time.time() + 120
        while "MLflow does not answer" not in driver.text:  # a trial's next epoch finds the server gone
            assert driver.proc.poll() is None and time.time() < deadline, driver.text[-3000:]
            time.sleep(0.2)
        time.sleep(5)  # the trials go on meanwhile, their writes waiting
        assert driver.proc.poll() is None, driver.text[-3000:]
        server = start_mlflow_server(tmp_path, port)
        driver.proc.wait(timeout=600)
        driver.reader.join(timeout=30)
        assert driver.proc.returncode == 0, driver.text[-3000:]
        assert driver.text.count("MLflow does not answer") == 1 and "MLflow answers again" in driver.text
        exp = mlflow.get_experiment_by_name("outage")
        found = mlflow.MlflowClient().search_runs([exp.experiment_id])
        children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
        for child in children:  # every epoch, once
            steps = [m.step for m in mlflow.MlflowClient().get_metric_history(child.info.run_id, "val_acc")]
            assert sorted(steps) == [1, 2, 3, 4, 5, 6], steps
        assert not list((tmp_path / "ray").glob("outage-*/mlflow_pending.json"))  # nothing left waiting
    finally:
        if driver.proc.poll() is None:
            driver.proc.kill()
        stop_server(server)


@pytest.mark.timeout(900)
def test_a_study_killed_mid_trial_finishes_with_one_run_per_trial(tmp_path, cifar_root):
    cmd = [sys.executable, str(REPO / "jobs" / "bn_study.py"), "--smoke-test", "--name=study_faults",
           f"--storage_path={tmp_path / 'ray'}", "--ray_address=local", "--epochs=6"]  # trials long enough to catch

    def mid_study(d: Driver) -> bool:  # a trial has reported an epoch, and the study has trials to run
        children = runs(tmp_path, "study_faults")[1]
        return any("val_acc" in c.data.metrics for c in children) and \
            sum(c.info.status == "FINISHED" for c in children) < 4
    driver = Driver(tmp_path, cifar_root, cmd=cmd)
    assert driver.kill_when(mid_study), driver.text[-3000:]
    leave_an_orphan(tmp_path, "study_faults")
    again = subprocess.run(cmd, cwd=tmp_path, env=job_env(tmp_path, cifar_root), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    [parent], children = runs(tmp_path, "study_faults")
    trials = [c for c in children if c.data.tags.get("orphaned") != "true"]
    assert parent.info.status == "FINISHED" and len(trials) == 4  # 2 variants × 2 seeds
    # a grid numbers its trials the same way again: a lost trial's run is adopted when its id comes back, so only
    # the stranger stays orphaned
    assert {c.data.tags["trial_id"] for c in children if c.data.tags.get("orphaned") == "true"} == {"deadbeef"}
    assert all(c.info.status == "FINISHED" for c in trials) and not [c for c in children if c.info.status == "RUNNING"]
    results = mlflow.MlflowClient().download_artifacts(parent.info.run_id, "results.csv", str(tmp_path))
    assert len(Path(results).read_text().strip().splitlines()) == 1 + 4
