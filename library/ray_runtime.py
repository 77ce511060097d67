"""Ray at the edges of a job: connecting the driver, and sizing a worker's torch to what Ray reserved for it."""
from __future__ import annotations

import os

import torch

from . import tracking


def ray_init(address: str = "") -> None:
    """Connect to `address`, $RAY_ADDRESS (set by `ray job submit`), or start a local Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None,
                 runtime_env={"env_vars": {tracking.GIT_SHA_ENV: tracking.git_sha()}})


def use_assigned_cpus() -> int:
    """Inside a Ray task or trial: as many torch threads as CPUs Ray reserved for it (Ray's default for a
    worker is 1 thread whatever it reserved). Returns the thread count."""
    import ray

    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(threads)
    return threads
