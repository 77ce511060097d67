"""What each Ray worker of this project runs before it takes work (Ray's worker process set-up hook, given by
`cluster.ray_init`). Imports nothing: it runs before the worker has loaded torch."""
import gc


def pause_collector() -> None:
    """No garbage collection while the worker loads the code of its first task or trial (Ray Tune, torch, the
    project): those imports build over a million objects, and the collections they set off cost time (a first
    task loading Ray Tune and the trainable: 3.86 -> 3.49 s, medians of 5 local starts). The first task or trial turns it back on with them frozen out of its reach
    (`cluster.use_assigned_cpus`), as a job's driver does after its own imports (`runtime.collect_after_imports`)."""
    gc.disable()
