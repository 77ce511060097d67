"""Ray at the edges of a job (library/cluster.py): how the driver takes SIGTERM, and what every worker a job
starts is like. The worker checks share one driver, so one local Ray start."""
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO


def test_sigterm_stops_a_job_that_was_started_with_sigint_ignored():
    """A script that starts a job in the background (`job &`) leaves SIGINT ignored in it; SIGTERM (`kill`,
    `ray job stop`) must still stop it as Ctrl-C does, not be re-sent as a signal the job ignores."""
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from library.cluster import stop_on_sigterm\n"
            "stop_on_sigterm()\nprint('ready', flush=True)\n"
            "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('stopped as by Ctrl-C', flush=True)\n") % str(REPO)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.communicate(timeout=30)[0].strip() == "stopped as by Ctrl-C"


WORKER_CHECKS = textwrap.dedent("""
    import gc, os, signal, subprocess, sys, time, weakref, psutil, ray
    from library.cluster import ray_init, remote_task, use_assigned_cpus
    from library.runtime import git_sha
    JOIN = '''if True:
        import gc, os, ray
        from library.cluster import ray_init
        ray_init()
        worker_env = lambda: (ray.get_runtime_context().get_runtime_env_string() != '{}',
                              'glibc.malloc.mmap_max=0' in os.environ['GLIBC_TUNABLES'], not gc.isenabled(),
                              os.environ['CV_GIT_SHA'])
        print('joined: runtime env, allocator setting, collector paused, git sha',
              ray.get(ray.remote(worker_env).remote()))'''
    inherited = lambda: {name: os.environ.get(name) for name in ('GLIBC_TUNABLES', 'CV_GIT_SHA')}
    before = inherited()
    ray_init('local', num_cpus=2)  # $CV_RAY_DASHBOARD=0: without the dashboard
    time.sleep(3)
    started = [p.cmdline() for p in psutil.Process().children(recursive=True)]
    idle = [c for c in started if c[:1] == ['ray::IDLE']]
    dashboard = [c for c in started if any(a.endswith('dashboard/dashboard.py') for a in c)]
    print('dashboard frontend', [('--disable-frontend' not in c) for c in dashboard])
    print('idle workers', len(idle))
    print('task in a worker', ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid())
    print('worker as nice as the driver', ray.get(ray.remote(lambda: os.nice(0)).remote()) == os.nice(0))

    def worker_env():
        context = ray.get_runtime_context()
        return (context.get_runtime_env_string() != '{}', 'glibc.malloc.mmap_max=0' in os.environ['GLIBC_TUNABLES'],
                not gc.isenabled(), os.environ['CV_GIT_SHA'] == git_sha())
    print('local start: runtime env, allocator setting, collector paused, git sha',
          ray.get(ray.remote(worker_env).remote()))
    collector = lambda: (gc.isenabled(), gc.get_freeze_count() > 100_000)  # torch alone: ~300k objects
    print('a task of the project: collector on, its imports frozen',
          ray.get([remote_task(collector).remote() for _ in range(3)]))
    print('driver environment unchanged', inherited() == before)
    joined = subprocess.run([sys.executable, '-c', JOIN], capture_output=True, text=True, timeout=120,
                            env=os.environ | {'RAY_ADDRESS': ray.get_runtime_context().gcs_address})
    print(joined.stdout.strip().splitlines()[-1] if joined.returncode == 0 else joined.stderr[-2000:])

    @ray.remote
    class Worker:
        def stop_while_collecting_garbage(self):
            use_assigned_cpus()
            def told_to_stop(ref):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)  # Ray's handler runs here, inside the callback
            self.ref = weakref.ref(type("Garbage", (), {})(), told_to_stop)
            time.sleep(10)
            return "carried on"

    try:
        print('told to stop while collecting garbage:', ray.get(Worker.remote().stop_while_collecting_garbage.remote()))
    except ray.exceptions.ActorDiedError:
        print('told to stop while collecting garbage: stopped')
    time.sleep(1)  # the worker's last lines reach the driver
""")


@pytest.fixture(scope="module")
def worker_checks() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WORKER_CHECKS], cwd=REPO, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "RAY_ADDRESS": "local", "CV_RAY_DASHBOARD": "0"})


@pytest.mark.ray
def test_a_local_ray_starts_no_workers_that_its_jobs_could_never_use(worker_checks):
    """Ray prestarts a worker per CPU; a job asks for the workers it needs, and the others would idle on, taking
    CPU from the trials. A job's local Ray has none; its tasks still run."""
    out = worker_checks.stdout
    assert "idle workers 0\n" in out and "task in a worker True\n" in out, out + worker_checks.stderr[-2000:]


@pytest.mark.ray
def test_a_local_rays_workers_run_at_the_drivers_priority(worker_checks):
    """Ray starts workers 15 steps nicer than itself; on a job's own machine the driver and Ray's processes would
    then pre-empt every trial and task. A local Ray's workers run as nice as the driver."""
    assert "worker as nice as the driver True\n" in worker_checks.stdout, worker_checks.stdout


@pytest.mark.ray
def test_a_local_ray_can_start_without_its_dashboard(worker_checks, monkeypatch):
    """$CV_RAY_DASHBOARD=0 leaves out the dashboard's modules and page (Ray keeps a minimal API server); unset,
    Ray's own default stands."""
    from library.cluster import DASHBOARD_ENV, _dashboard_option

    assert "dashboard frontend [False]\n" in worker_checks.stdout, worker_checks.stdout
    monkeypatch.delenv(DASHBOARD_ENV, raising=False)
    assert _dashboard_option() == {}
    monkeypatch.setenv(DASHBOARD_ENV, "0")
    assert _dashboard_option() == {"include_dashboard": False}


@pytest.mark.ray
def test_workers_start_with_the_allocator_setting_and_the_code_version_inherited_locally_or_by_runtime_env(
        worker_checks):
    """A local Ray's workers inherit them from the driver's environment, set for the start only (no runtime env:
    it would make each worker start as two interpreters); a driver joining a running Ray hands them over in its
    runtime env."""
    out = worker_checks.stdout
    assert "local start: runtime env, allocator setting, collector paused, git sha (False, True, True, True)\n" \
        in out, out + worker_checks.stderr[-2000:]
    assert "driver environment unchanged True\n" in out, out
    assert "joined: runtime env, allocator setting, collector paused, git sha (True, True, True, " in out, out


@pytest.mark.ray
def test_a_worker_loads_its_first_task_without_collecting_then_collects_with_those_imports_frozen(worker_checks):
    """Every worker starts with the collector paused (Ray's set-up hook: inherited on a local start, in the
    runtime env when joining); a task or trial of the project turns it back on, its imports out of its reach."""
    out = worker_checks.stdout
    assert "a task of the project: collector on, its imports frozen [(True, True), (True, True), (True, True)]\n" \
        in out, out + worker_checks.stderr[-2000:]


@pytest.mark.ray
def test_a_worker_told_to_stop_while_collecting_garbage_stops_without_a_traceback(worker_checks):
    """Ray stops a worker it no longer needs with SIGTERM. Landing in a weakref callback, the exit Ray's handler
    raises cannot propagate: Python would print a traceback on the driver's console and the worker carry on."""
    out, err = worker_checks.stdout, worker_checks.stderr
    assert "told to stop while collecting garbage: stopped" in out, out + err[-2000:]
    assert "Exception ignored" not in out + err, err[-2000:]


# A job as small as a job gets: a local Ray, an open MLflow run, and a Ray task it waits on ('running' once it
# has started); `delay` > 0 sends the job SIGTERM that many seconds into `ray_init` instead.
STOPPED_JOB = textwrap.dedent("""
    import os, signal, sys, threading, time
    from dataclasses import dataclass
    import ray
    from library import tracking
    from library.cli import run_job
    from library.cluster import ray_init
    from library.config import Config

    @dataclass(frozen=True)
    class Job(Config):
        delay: float = 0.0

    def main(cfg):
        tracking.connect()
        with tracking.start_run('stopped', run_name='stopped'):
            if cfg.delay:
                threading.Timer(cfg.delay, os.kill, (os.getpid(), signal.SIGTERM)).start()
            ray_init('local', num_cpus=1)
            ref = ray.remote(lambda: time.sleep(120)).remote()
            print('running', flush=True)
            ray.get(ref)

    run_job(main, Job)
""")


def stopped_job(tmp_path, *argv: str) -> subprocess.Popen:
    """STOPPED_JOB in a session of its own, as a shell runs a command: the job's process group is its own."""
    env = {**os.environ, "RAY_ADDRESS": "local", "CV_RAY_DASHBOARD": "0",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", STOPPED_JOB, *argv], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def run_status(tmp_path) -> str:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client.search_runs([client.get_experiment_by_name("stopped").experiment_id])[0].info.status


@pytest.mark.ray
def test_a_job_stopped_by_sigterm_to_its_process_group_says_so_in_one_line_and_marks_its_run_killed(tmp_path):
    """`timeout` or `kill -- -PGID` signal the job's whole process group (`kill` and `ray job stop`, the driver
    alone). The job stops as Ctrl-C stops it: one line, not a traceback through Ray's excepthook
    (which reports the exception to the GCS, and held the driver for Ray's 60-s reconnect timeout when the GCS
    was stopping too), exit status 130, and its open run KILLED rather than FAILED. (A sweep stopped so:
    test_tune_job.py, test_an_interrupted_sweep_resumes_into_the_same_runs.)"""
    proc = stopped_job(tmp_path)
    try:
        started = any(line.strip() == "running" for line in iter(proc.stdout.readline, ""))  # after the banner
        if started:
            os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=40)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert started and proc.returncode == 130, err[-3000:]
    assert "interrupted (Ctrl-C or SIGTERM)" in err and "Traceback" not in err, err[-3000:]
    assert run_status(tmp_path) == "KILLED"


@pytest.mark.ray
def test_sigterm_while_ray_starts_stops_a_job_as_ctrl_c_does(tmp_path):
    """`ray.init` answers SIGTERM with its own handler (`sys.exit(15)`) until it has connected: a job stopped in
    those seconds ended without a word, status 15, its run marked FAILED."""
    proc = stopped_job(tmp_path, "--delay=0.5")
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "running" not in out, out + err[-3000:]
    assert "interrupted (Ctrl-C or SIGTERM)" in err and "Traceback" not in err, err[-3000:]
    assert run_status(tmp_path) == "KILLED"
