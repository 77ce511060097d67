"""The headline usage, for real: a local Ray head (`ray start --head`, loopback), the smoke sweep submitted with
`ray job submit --working-dir .`, SUCCEEDED, the head stopped."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from conftest import REPO, free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RAY = str(Path(sys.executable).parent / "ray")


def _serves_jobs(address: str) -> bool:
    """Whether the head's dashboard answers the job API (what `ray job list` asks, without a new interpreter)."""
    try:
        with urllib.request.urlopen(f"{address}/api/jobs/", timeout=5) as response:
            return response.status == 200
    except OSError:  # not listening yet, or its job module not loaded yet (an HTTP error)
        return False


@pytest.fixture
def ray_head(tmp_path):
    """A head node in the foreground (`--block`), so stopping it stops only it: `ray stop` would also kill any
    other Ray on the machine. Its own temp dir keeps it out of /tmp/ray/ray_current_cluster, which every later
    `ray.init()` on the machine would otherwise try to join after the head is gone. Token auth is off, as befits a
    loopback-only test head."""
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
         f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}", "--num-cpus=2",
         f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while not _serves_jobs(address):
        assert head.poll() is None, head.stdout.read()[-3000:]
        assert time.time() < deadline, "the Ray head did not come up in 2 minutes"
        time.sleep(0.25)
    yield address, env
    head.terminate()
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_smoke_sweep_runs_as_a_submitted_ray_job(ray_head, tmp_path, cifar_root, monkeypatch):
    address, env = ray_head
    job_env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "CV_DATA_ROOT": str(cifar_root),
               "CV_STORAGE_PATH": str(tmp_path / "ray_results")}
    out = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env-json",
         json.dumps({"env_vars": job_env}), "--", "python", "jobs/tune_cnn.py", "--smoke-test", "--name=submitted"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    job_id = re.search(r"raysubmit_\w+", out.stdout).group(0)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED
    assert "test accuracy" in out.stdout
    mlflow.set_tracking_uri(job_env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["submitted"])
    assert len(runs) == 4  # the parent and 3 trials
    assert len(list((tmp_path / "ray_results").glob("submitted-*"))) == 1  # Tune's storage from $CV_STORAGE_PATH
