"""Ray at the edges of a job: connecting the driver (local or a cluster), a task's resources and threads, how
the driver and the workers take SIGTERM. Ray is imported only when used."""
from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

import torch

from .runtime import GIT_SHA_ENV, collect_after_imports, git_sha, keep_freed_memory, malloc_env


PRESTART_ENV = "RAY_prestart_worker_first_driver"
NICENESS_ENV = "RAY_worker_niceness"  # Ray starts workers 15 nicer than the raylet unless this says otherwise
WORKER_START = "library.worker_start.pause_collector"  # Ray runs it in each worker before it takes work
DASHBOARD_ENV = "CV_RAY_DASHBOARD"  # "0": a local Ray starts without its dashboard (the tests, a small laptop)


def ray_init(address: str = "", **options: Any) -> None:
    """Connect to `address`, $RAY_ADDRESS (set by `ray job submit`), or start a local Ray (`options`: more of
    `ray.init`'s arguments, e.g. num_cpus for a local one)."""
    import ray

    # Ray 2.60 warns on every start that token authentication is on; the README says how the token is used
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    # every worker of this job starts with the allocator setting the driver uses (trials, tasks, actors)
    worker_env = {GIT_SHA_ENV: git_sha(), **malloc_env()}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if _starts_a_local_ray(address):
        # A new local Ray's processes inherit this one's environment, so its workers need no runtime env: with
        # one, each worker starts as a second interpreter first (Ray's setup_worker.py), ~0.5 s more per worker.
        # The set-up hook goes the same way, in the variable Ray's runtime env would put it in. Prestart is off:
        # the new raylet would start a worker per CPU, and those a job never asks for would idle on, taking ~1%
        # of a core each from the trials. Workers run at the job's own priority, not Ray's 15 steps lower: beside
        # them on this machine run the driver and Ray's own processes, and every wake-up of those would pre-empt a
        # trial's thread while its other thread waits for it (a user's own setting of either stands).
        with _environment(worker_env | _setup_hook_env() | {PRESTART_ENV: os.environ.get(PRESTART_ENV, "0"),
                                                            NICENESS_ENV: os.environ.get(NICENESS_ENV, "0")}), \
                _children_in_a_group_of_their_own(), _sigterm_as_ctrl_c():
            ray.init(address="local", **(_dashboard_option() | options))
    else:  # a cluster's workers keep the niceness its nodes were started with (Ray's: 15, beside its daemons only)
        with _sigterm_as_ctrl_c():
            ray.init(address=address, runtime_env={"env_vars": worker_env, "worker_process_setup_hook": WORKER_START},
                     **options)
    stop_on_sigterm()  # again: Ray's core worker installs its own SIGTERM handler, which aborts the driver


def _starts_a_local_ray(address: str | None) -> bool:
    """Whether `ray.init(address)` would start a new local Ray rather than join a running one (with no address,
    Ray joins a cluster `ray start` left on this machine). Ray's own rule; unknown: joins."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return address == "local"
    return canonicalize_bootstrap_address(address) is None


def _dashboard_option() -> dict[str, bool]:
    """Ray's default (its dashboard, where installed) unless $CV_RAY_DASHBOARD=0. The dashboard's modules make a
    local start ~1.3 s longer on 2 cores (to `ray.init`'s return, medians of 6 starts each: 5.8 s against 4.5 s)."""
    return {"include_dashboard": False} if os.environ.get(DASHBOARD_ENV, "1") == "0" else {}


def _setup_hook_env() -> dict[str, str]:
    """The variable by which Ray's runtime env gives workers a set-up hook named by module path; none where
    this Ray has no such variable (its workers then start without the hook, only slower)."""
    try:
        from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    except ImportError:
        return {}
    return {WORKER_PROCESS_SETUP_HOOK_ENV_VAR: WORKER_START}


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """`variables` set in this process's environment inside the block only."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_starting_local_ray = False  # set while `ray.init` forks a local Ray's processes (`_children_in_a_group_of_their_own`)


def _into_a_group_of_its_own() -> None:
    """In a child just forked: its own process group, if the driver is starting a local Ray."""
    if _starting_local_ray:
        with contextlib.suppress(OSError):  # already a group leader: nothing to do
            os.setpgid(0, 0)


os.register_at_fork(after_in_child=_into_a_group_of_its_own)


@contextlib.contextmanager
def _children_in_a_group_of_their_own() -> Iterator[None]:
    """The processes of a local Ray started inside the block, each in a process group of its own (the raylet's
    workers in the raylet's). `timeout` and `kill -- -PGID` send SIGTERM to the driver's whole process group:
    with Ray's processes in it, the GCS starts to stop at the same moment as the driver, waits for the calls the
    driver still holds open while the driver waits for it, and after Ray's 60-s reconnect timeout the driver dies
    in Ray's fatal exit, its trials killed mid-epoch. Outside that group, only the driver hears the signal and stops
    the job as Ctrl-C does (Ray's processes ignore SIGINT anyway). Ray still starts them to die with the driver
    (PR_SET_PDEATHSIG), so a driver killed outright takes them along (its agents after up to a minute, as before:
    they report the raylet's death to the GCS first). Ray forks them with a preexec_fn: the fork hook runs in each."""
    global _starting_local_ray
    _starting_local_ray = True
    try:
        yield
    finally:
        _starting_local_ray = False


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """Around `ray.init`, which answers SIGTERM with a handler of its own (`sys.exit(15)`) from its first line until
    it has connected (a local start: ~5 s): a job stopped then would end without a word, status 15. Raised as
    Ctrl-C instead, as `stop_on_sigterm` has it at any other time."""
    try:
        yield
    except SystemExit as e:
        if e.code != signal.SIGTERM:
            raise
        raise KeyboardInterrupt from None


def stop_on_sigterm() -> None:
    """SIGTERM (`ray job stop`, a scheduler, `kill`) stops a job as Ctrl-C does: re-sent as SIGINT, it reaches
    Tune's own handler while trials run (state saved, runs marked KILLED, exit 130), else KeyboardInterrupt."""
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a script (`&`)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # else the re-sent SIGINT would be ignored
        signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))


def cluster_has_gpu() -> bool:
    """Whether the connected Ray cluster has any GPU (so tasks and trials may ask for one)."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def use_assigned_cpus() -> int:
    """Inside a Ray task or trial: torch on as many threads as CPUs Ray reserved (Ray's default is 1 whatever it
    reserved), `keep_freed_memory` (for workers of a cluster `ray_init` did not start) and `exit_on_lost_sigterm`;
    the first call in a worker turns its collector back on (`worker_start`). Returns the thread count."""
    import ray

    if not gc.isenabled():  # paused by worker_start: only until the worker's first task, whose code is loaded
        collect_after_imports()
    keep_freed_memory()
    exit_on_lost_sigterm()
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(threads)
    return threads


def exit_on_lost_sigterm() -> None:
    """In a Ray worker: a SIGTERM Python would drop is sent again. Ray stops a worker it no longer needs (a stopped
    trial, Tune's clean-up) with SIGTERM, which its handler raises as SystemExit; raised inside a weakref callback
    of the garbage collector, that cannot propagate: Python prints a traceback (forwarded to the driver's console)
    and the worker carries on."""
    previous = sys.unraisablehook
    if getattr(previous, "resends_sigterm", False):
        return

    def hook(unraisable: Any) -> None:
        if hasattr(unraisable.exc_value, "ray_terminate_msg"):  # Ray's SystemExit (its handler, exit_actor)
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()  # once the callback is over
        else:
            previous(unraisable)

    hook.resends_sigterm = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def remote_task(fn: Callable[..., Any], num_cpus: float = 1.0, num_gpus: float = 0.0):
    """`fn` as a Ray remote function reserving `num_cpus` CPUs and, where the cluster has GPUs, `num_gpus`; inside
    the task torch runs on as many threads as CPUs were reserved. Call `ray_init()` first; `.remote(...)` it."""
    import ray

    @functools.wraps(fn)
    def sized(*args, **kwargs):
        use_assigned_cpus()
        return fn(*args, **kwargs)

    return ray.remote(sized).options(num_cpus=num_cpus, num_gpus=num_gpus if cluster_has_gpu() else 0.0)
