"""Ray at the edges of a job: connecting the driver (local or a cluster), a task's resources and threads, how
the driver and the workers take SIGTERM. Ray is imported only when used."""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable

import torch

from .runtime import GIT_SHA_ENV, git_sha, keep_freed_memory, malloc_env


PRESTART_ENV = "RAY_prestart_worker_first_driver"


def ray_init(address: str = "", **options: Any) -> None:
    """Connect to `address`, $RAY_ADDRESS (set by `ray job submit`), or start a local Ray (`options`: more of
    `ray.init`'s arguments, e.g. num_cpus for a local one)."""
    import ray

    # Ray 2.60 warns on every start that token authentication is on; the README says how the token is used
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if not ray.is_initialized():
        # A local start prestarts a worker per CPU for a job without a runtime env. This job's workers carry one
        # (below), so those would never run anything while taking ~1% of a core each from the trials; only the
        # raylet a local start spawns reads this (a user's own setting stands).
        os.environ.setdefault(PRESTART_ENV, "0")
        # every worker of this job starts with the allocator setting the driver uses (trials, tasks, actors)
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None,
                 runtime_env={"env_vars": {GIT_SHA_ENV: git_sha(), **malloc_env()}}, **options)
        stop_on_sigterm()  # again: Ray's core worker installs its own SIGTERM handler, which aborts the driver


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
    reserved), `keep_freed_memory` (for workers of a cluster `ray_init` did not start) and `exit_on_lost_sigterm`.
    Returns the thread count."""
    import ray

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
