"""A two-node Ray cluster on one machine, for real: a head and a second `ray start` node, each with its own temp
dir, loopback only. A sweep submitted against it spreads its trials over both nodes, and survives the second
node's raylet being killed mid-trial: Tune retries the lost trial from its checkpoint on the head, and MLflow
ends with one finished child run per trial."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import mlflow
import psutil
import pytest

from conftest import REPO, free_port, job_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RAY = str(Path(sys.executable).parent / "ray")


def _start_node(env: dict, *args: str) -> tuple[subprocess.Popen, str]:
    """`ray start --block` with its own temp dir (short: Ray's socket paths must fit in 107 bytes)."""
    temp_dir = tempfile.mkdtemp(prefix="rayn", dir="/tmp")
    # every port a node opens chosen free here: Ray's fixed defaults can still be held by a Ray another test
    # just stopped. Workers' ports left to the OS (0, as Ray's own multi-node test cluster does): from the
    # default range both raylets would hand out the same ports, first 10002, to workers on one machine
    ports = [f"--{name}-port={free_port()}" for name in ("node-manager", "object-manager", "runtime-env-agent",
                                                          "dashboard-agent-grpc")]
    ports += ["--min-worker-port=0", "--max-worker-port=0"]
    log = open(Path(temp_dir) / "start.log", "w")
    proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             f"--temp-dir={temp_dir}", "--disable-usage-stats", *ports, *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, temp_dir


def _alive_nodes(dashboard: str) -> int:
    """Nodes the head's state API lists as alive (asked in this process: a new interpreter per poll took ~2 s);
    0 while the head's dashboard does not answer yet."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    try:
        return sum(node.state == "ALIVE" for node in list_nodes(address=dashboard, raise_on_missing_output=False))
    except (RayStateApiException, OSError):  # OSError: requests' connection errors
        return 0


@pytest.fixture
def two_nodes():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    port, dashboard = free_port(), free_port()
    head, head_tmp = _start_node(env, "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
                                 f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
                                 f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}")
    address, dashboard_url = f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 180
    while _alive_nodes(dashboard_url) < 1:
        assert head.poll() is None and time.time() < deadline, (Path(head_tmp) / "start.log").read_text()[-3000:]
        time.sleep(0.25)
    worker, worker_tmp = _start_node(env, f"--address={address}", f"--dashboard-agent-listen-port={free_port()}",
                                     f"--metrics-export-port={free_port()}")
    while _alive_nodes(dashboard_url) < 2:
        assert worker.poll() is None and time.time() < deadline, (Path(worker_tmp) / "start.log").read_text()[-3000:]
        time.sleep(0.25)
    yield address, env, head, worker
    for proc in (worker, head):  # `ray start --block` stops its node's processes when terminated
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    for temp_dir in (worker_tmp, head_tmp):
        shutil.rmtree(temp_dir, ignore_errors=True)


def _raylet_of(node: subprocess.Popen) -> psutil.Process:
    return next(p for p in psutil.Process(node.pid).children(recursive=True) if p.name() == "raylet")


EPOCHS = 10  # per trial


def _trial_results(storage: Path) -> list[list[dict]]:
    """Each trial's reports so far, as Tune records them in its result.json (with the reporting process's pid)."""
    trials = []
    for results in storage.glob("*/trainable_*/result.json"):
        records = []
        for line in results.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line Tune is writing right now
                break
        trials.append(records)
    return trials


def _workers_of(raylet: psutil.Process) -> set[int]:
    try:
        return {p.pid for p in raylet.children(recursive=True)}
    except psutil.Error:  # the killed node's raylet
        return set()


def _checkpointed_trial_on(raylet: psutil.Process, storage: Path) -> bool:
    """A trial process of this raylet is mid-trial: it has reported (and checkpointed) an epoch, and at least two
    are left. A finished trial does not count: with actors reused, its process lives on, idle or not yet reporting
    for its next trial, and losing it would lose no checkpoint."""
    pids = _workers_of(raylet)
    return any(records and records[-1]["pid"] in pids and records[-1]["training_iteration"] <= EPOCHS - 2
               for records in _trial_results(storage))


def _restored_from_checkpoint(storage: Path) -> list[str]:
    """Trials that went on from a checkpoint: Tune's own record, where a restored trial's results count their
    iterations since the restore apart from the trial's total (Ray's "Restored on" is a worker log line that a
    driver exiting may never receive)."""
    return [records[0]["trial_id"] for records in _trial_results(storage)
            if any(r["iterations_since_restore"] < r["training_iteration"] for r in records)]


def _finish_watching(job: subprocess.Popen, timeout_s: float, watch: Callable[[], None]) -> str:
    """The job's output once it has ended, `watch` called every half second while it runs: what it reads (a
    node's processes) may be gone once the job is."""
    deadline = time.time() + timeout_s
    while True:
        try:
            return job.communicate(timeout=0.5)[0]
        except subprocess.TimeoutExpired:
            assert time.time() < deadline, "the job did not finish after losing a node"
            watch()


@pytest.mark.timeout(900)
def test_a_sweep_spreads_over_two_nodes_and_survives_losing_one(two_nodes, tmp_path, cifar_root):
    address, env, head, worker = two_nodes
    args = ["--smoke-test", "--name=twonodes", f"--storage_path={tmp_path / 'ray'}", f"--ray_address={address}",
            "--num_samples=4", "--max_concurrent=2", "--scheduler=fifo", f"--space.epochs=[{EPOCHS}]", "--retrain=false"]
    job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "tune_cnn.py"), *args], cwd=tmp_path,
                           env=job_env(tmp_path, cifar_root) | {"RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    raylet = _raylet_of(worker)
    deadline = time.time() + 300
    while not _checkpointed_trial_on(raylet, tmp_path / "ray"):  # mid-trial, an epoch checkpointed
        assert job.poll() is None and time.time() < deadline, "no trial ever checkpointed on the second node"
        time.sleep(0.05)
    head_raylet = _raylet_of(head)
    on_worker, on_head = _workers_of(raylet), _workers_of(head_raylet)
    raylet.kill()
    out = _finish_watching(job, 600, lambda: on_head.update(_workers_of(head_raylet)))
    assert job.returncode == 0, out[-4000:]

    assert _restored_from_checkpoint(tmp_path / "ray"), out[-4000:]  # the lost trial went on from its checkpoint
    reported = {r["pid"] for records in _trial_results(tmp_path / "ray") for r in records}
    assert reported & on_worker and reported & on_head, (reported, on_worker, on_head)  # trials ran on both nodes
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("twonodes")
    found = mlflow.MlflowClient().search_runs([exp.experiment_id])
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and len({c.data.tags["trial_id"] for c in children}) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:  # the retried trial continued from its checkpoint: every epoch logged once
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(child.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, 11)), steps


def _running_task_on(raylet: psutil.Process, name: str) -> bool:
    """A worker of this raylet is executing `name` (Ray titles a busy worker process `ray::<task name>`)."""
    for proc in raylet.children(recursive=True):
        try:
            if proc.cmdline()[:1] == [f"ray::{name}"]:
                return True
        except psutil.Error:
            continue
    return False


def _ran_task(node: subprocess.Popen, name: str) -> bool:
    """A worker of this node started `name`: Ray writes `:task_name:<name>` to the worker's log in the node's temp
    dir as each task starts (a record that outlives the task, however short it ran)."""
    temp_dir = next(arg.split("=", 1)[1] for arg in node.args if arg.startswith("--temp-dir="))
    return any(f":task_name:{name}\n" in log.read_text(errors="replace")
               for log in Path(temp_dir).glob("session_2*/logs/worker-*.out"))


@pytest.mark.timeout(600)
def test_an_eps_sweep_spreads_over_two_nodes_and_survives_losing_one(two_nodes, tmp_path, mnist_root):
    address, env, head, worker = two_nodes
    args = ["--smoke-test", f"--ray_address={address}", "--test_size=400", "--shards=4", "--steps=40",
            "--eps_255=[4,16,64]", "--eps_per_task=1", "--pgd_table=false"]
    job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "eps_sweep.py"), *args], cwd=tmp_path,
                           env=job_env(tmp_path, mnist_root) | {"RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    raylet = _raylet_of(worker)
    deadline = time.time() + 300
    while not _running_task_on(raylet, "sweep_task"):  # a task mid-attack on the second node
        assert job.poll() is None and time.time() < deadline, "no ε-sweep task ever ran on the second node"
        time.sleep(0.05)
    raylet.kill()
    out = job.communicate(timeout=400)[0]
    assert job.returncode == 0, out[-4000:]
    # tasks ran on both nodes; the table below shows that the one lost with the second node was run again
    assert _ran_task(head, "sweep_task")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("eps_sweep_smoke")
    (run,) = mlflow.MlflowClient().search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    import pandas as pd

    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="sweep.csv"))
    assert len(table) == 2 * 2 * 3  # models × attacks × ε: nothing lost with the node
    assert (table["n"] == 50).all(), table  # the fixture's whole test set, every shard of every ε counted once
