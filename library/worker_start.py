"""What each Ray worker of this project runs before it takes work (Ray's worker process set-up hook, given by
`cluster.ray_init`). Imports nothing: it runs before the worker has loaded torch."""
import gc


def pause_collector() -> None:
    """No garbage collection while the worker loads the code of its first task or trial (Ray Tune, torch, the
    project): those imports build over a million objects, and the collections they set off took ~1.5 of ~5 s
    here. The first task or trial turns it back on with them frozen out of its reach
    (`cluster.use_assigned_cpus`), as a job's driver does after its own imports (`runtime.collect_after_imports`)."""
    gc.disable()
