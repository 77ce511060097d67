"""Ray Tune around `library.train.loop.train`: the sweep's options, the searcher and scheduler, and `run_sweep`.

Each trial runs `trainable.trainable`; the data set travels once through the object store
(`tune.with_parameters`). Metrics reach MLflow through `MLflowTrialRuns` on the driver.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import tracking
from ..config import Config, ConfigError, digest, project
from ..data import ImageData
from ..cluster import cluster_has_gpu
from .checkpoints import check_storage
from .outcome import SweepOutcome, all_trials_done, is_complete
from .space import SearchSpace

STORAGE_ENV = "CV_STORAGE_PATH"
MODE = "max"  # every metric a sweep can rank by is an accuracy
UI_HINT = ("\n\n**Reading it in the MLflow UI** (the *Model training* view): in the experiment's Runs table, ⊞ beside "
           "this run lists its trials, one child run each; *Columns* adds `val_acc` (and `test_acc`) to compare them; "
           "this run's *Artifacts* hold the comparison: tables (leaderboard or results) and figures.")
# how and where a sweep runs, not what its trials do: a re-run that changes only these continues the same sweep
RUN_SETTINGS = ("storage_path", "resume", "ray_address", "cpus_per_trial", "gpus_per_trial", "time_budget_s",
                "data_root", "retrain", "final_epochs", "final_train_size", "smoke_test")


@dataclass(frozen=True)
class SweepOptions(Config):
    """How a sweep runs; a job's config extends this."""

    name: str = "tune_cnn"  # MLflow experiment name; the Tune state is <storage_path>/<name>-<digest of the settings>
    storage_path: str = ""  # local dir, NFS mount or s3://bucket/prefix, shared by all nodes; default:
    # $CV_STORAGE_PATH (cluster.yaml sets it to shared storage), else ~/ray_results
    num_samples: int = 24  # trials (for search=grid: repeats of the grid)
    max_concurrent: int = 4  # trials running at once (and Optuna's window of pending suggestions)
    search: Literal["optuna", "random", "grid"] = "optuna"  # optuna: TPE proposes each trial from the ones
    # before; random: independent draws from the space; grid: every combination of its lists (no ranges)
    scheduler: Literal["asha", "fifo", "pbt"] = "asha"  # asha stops weak trials early; fifo runs every trial
    # out; pbt (with search=random or grid) copies good trials' checkpoints and perturbs their training
    # hyper-parameters every grace_period epochs (it keeps every epoch's checkpoint of every trial on storage)
    grace_period: int = 2  # epochs every trial gets before ASHA may stop it
    reduction_factor: int = 3  # ASHA keeps the top 1/reduction_factor at each rung
    cpus_per_trial: float = 1.0  # Ray CPUs each trial reserves; its torch threads follow them
    gpus_per_trial: float = 0.25  # only when the cluster has GPUs: 0.25 = four small trials share one GPU
    time_budget_s: float = 0.0  # stop the whole sweep after this many seconds, 0 = no limit
    resume: bool = True  # continue this sweep (same name and settings) when its state exists; false: stop with an
    # error instead
    ray_address: str = ""  # default: $RAY_ADDRESS (set by `ray job submit`), else a running `ray start` cluster
    # on this machine, else a new local Ray; "local" always starts a new one
    search_seed: int = 0  # seeds Optuna's sampler
    metric: Literal["val_acc", "val_robust_acc", "val_acc_at_time"] = "val_acc"  # what trials are ranked, stopped
    # and chosen by; val_robust_acc (accuracy under PGD, for adversarial training) needs a robust radius in every
    # trial; val_acc_at_time is the validation accuracy when the trial's training time reaches trial_time_s
    trial_time_s: float = 0.0  # with metric=val_acc_at_time: each trial's training budget, seconds of training
    # (evaluation excluded); a trial stops after the epoch that reaches it

    def __post_init__(self):
        super().__post_init__()
        for key in ("num_samples", "max_concurrent", "grace_period"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be at least 1")
        if self.scheduler == "pbt" and self.search == "optuna":
            raise ConfigError("scheduler=pbt needs search=random or search=grid: PBT itself changes the configs")
        if self.reduction_factor < 2:
            raise ConfigError(f"reduction_factor={self.reduction_factor} must be at least 2")
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"cpus_per_trial={self.cpus_per_trial} must be positive")
        if (self.metric == "val_acc_at_time") != (self.trial_time_s > 0):
            raise ConfigError("metric=val_acc_at_time and trial_time_s > 0 go together: the metric is the accuracy "
                              f"within that training time (got metric={self.metric}, trial_time_s={self.trial_time_s})")
        if self.gpus_per_trial < 0 or (self.gpus_per_trial > 1 and self.gpus_per_trial % 1):
            raise ConfigError(f"gpus_per_trial={self.gpus_per_trial} must be a fraction of one GPU or whole GPUs")

    def experiment_path(self) -> str:
        """Where Tune keeps this sweep: `<storage root>/<name>-<digest>`, the digest of every setting of the config
        (a job's whole config: space, training, data) but how and where it runs, so the same command resumes
        its own sweep and a sweep with other settings never continues it. Absolute (Tune changes each trial's
        working directory), or a URI as given."""
        root = self.storage_path or os.environ.get(STORAGE_ENV) or "~/ray_results"
        root = root if "://" in root else str(Path(root).expanduser().resolve())
        return f"{root.rstrip('/')}/{self.name}-{digest(self, RUN_SETTINGS)}"


def _searcher(opts: SweepOptions, space: SearchSpace):
    if opts.search != "optuna":
        return None  # Tune's BasicVariantGenerator, driven by param_space
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory" per searcher built

    optuna = OptunaSearch(space=space.define_by_run, metric=opts.metric, mode=MODE, seed=opts.search_seed)
    return ConcurrencyLimiter(optuna, max_concurrent=opts.max_concurrent)


PBT_MUTABLE = ("lr", "weight_decay", "label_smoothing", "momentum", "cutout")  # safe to change mid-run


def _scheduler(opts: SweepOptions, space: SearchSpace):
    if opts.scheduler == "fifo":
        return None
    if opts.scheduler == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        tune_space = space.tune_space()
        mutations = {d.name: tune_space[d.name] for d in space.searched if d.name in PBT_MUTABLE}
        if not mutations:
            raise ConfigError(f"scheduler=pbt needs at least one of {', '.join(PBT_MUTABLE)} searched in the space "
                              "(the architecture cannot change under a copied checkpoint)")
        if "lr" in mutations and "onecycle" in _values(space, "schedule"):
            raise ConfigError("scheduler=pbt mutates lr, which schedule=onecycle cannot take mid-run (it owns its "
                              "learning rates): search schedule over cosine/constant only, or do not search lr")
        return PopulationBasedTraining(time_attr="epoch", perturbation_interval=opts.grace_period,
                                       hyperparam_mutations=mutations)
    from ray.tune.schedulers import ASHAScheduler

    max_t = space.max_epochs()
    return ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=min(opts.grace_period, max_t),
                         reduction_factor=opts.reduction_factor)


def _values(space: SearchSpace, name: str) -> list[Any]:
    """The values trials of `space` can get for the TrainConfig field `name` (a range: its two ends), in every
    family of a FamilySpace (whose dimensions are named <family>.<name>)."""
    spaces = getattr(space, "spaces", {"": space}).values()
    values = []
    for sub in spaces:
        dim = next((d for d in sub.dimensions if d.name == name), None)
        values += [getattr(sub.base, name)] if dim is None else list(dim.values)
    return values


def _smallest(space: SearchSpace, name: str) -> Any:
    """The smallest value any trial of `space` gets for the TrainConfig field `name`."""
    return min(_values(space, name))


def validate_sweep(opts: SweepOptions, space: SearchSpace) -> None:
    """Build the searcher, scheduler and param space once, and check the storage, to fail on a bad combination or
    a full or damaged storage path before the job loads its data and starts Ray (a full one: refused in 4.7 s
    instead of 14.8 s, `tune_cnn.py --smoke-test` on 2 cores)."""
    if opts.metric == "val_robust_acc" and not (_smallest(space, "robust_eps_255") or _smallest(space, "adv_eps_255")):
        raise ConfigError("metric=val_robust_acc needs a robust radius in every trial: adv_eps_255 > 0 (adversarial "
                          "training at that radius) or robust_eps_255 > 0 (measure only)")
    _searcher(opts, space)
    _scheduler(opts, space)
    if opts.search != "optuna":
        space.tune_space(grid=opts.search == "grid")
    check_storage(opts.experiment_path())


def build_tuner(opts: SweepOptions, space: SearchSpace, data: ImageData, callbacks: list, test: bool = False):
    """A new Tuner, or the restored one when the experiment path already holds this sweep."""
    from ray import tune

    from .budget import SweepBudget, expect
    from .trainable import trainable

    path = opts.experiment_path()
    expect(path, opts.time_budget_s)
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial if cluster_has_gpu() else 0.0}
    fn = tune.with_resources(tune.with_parameters(trainable, data=data, space=space, test=test,
                                                  time_budget_s=opts.trial_time_s), resources)
    if tune.Tuner.can_restore(path):
        if not opts.resume:
            raise ConfigError(f"this sweep already exists at {path}; pass --resume=true to continue it, or choose "
                              "another --name to start a new one")
        print(f"resuming the sweep stored at {path}")
        return tune.Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=True), True
    grid = opts.search == "grid"
    param_space = {} if opts.search == "optuna" else space.tune_space(grid=grid)
    tune_config = tune.TuneConfig(
        metric=opts.metric, mode=MODE, search_alg=_searcher(opts, space), scheduler=_scheduler(opts, space),
        num_samples=opts.num_samples, reuse_actors=True,
        max_concurrent_trials=None if opts.search == "optuna" else opts.max_concurrent,
    )
    root, name = path.rsplit("/", 1)
    run_config = tune.RunConfig(
        name=name, storage_path=root, callbacks=callbacks, verbose=0,  # progress.Progress prints instead
        stop=SweepBudget(opts.time_budget_s, path) if opts.time_budget_s else None,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=_checkpoints_kept(opts)),
        failure_config=tune.FailureConfig(max_failures=1),  # one retry from the last checkpoint (lost node)
    )
    return tune.Tuner(fn, param_space=param_space, tune_config=tune_config, run_config=run_config), False


def _checkpoints_kept(opts: SweepOptions) -> int | None:
    """Checkpoints kept per trial (one per epoch). PBT restores a lower trial from the checkpoint an upper one had
    when they were compared; the lower trial may wait for a slot while the upper one trains on, so a count would
    delete that checkpoint before it is read: under PBT every one is kept."""
    return None if opts.scheduler == "pbt" else 2


def expected_trials(opts: SweepOptions, space: SearchSpace) -> int:
    if opts.search != "grid":
        return opts.num_samples
    return opts.num_samples * math.prod(len(d.values) for d in space.searched)


def sweep_id(opts: SweepOptions) -> str:
    """A stable key for the sweep's MLflow parent run: its experiment path."""
    return hashlib.sha1(opts.experiment_path().encode()).hexdigest()[:16]


def run_sweep(opts: SweepOptions, space: SearchSpace, data: ImageData, experiment: str,
              parent_params: dict[str, Any] | None = None, description: str | None = None,
              test_each_trial: bool = False) -> SweepOutcome:
    """Run (or resume) the sweep: the parent MLflow run, one child per trial, Tune until done.
    `test_each_trial` scores every trial on the test set when it finishes: for studies, whose trials are the
    results, never for searches, whose test set is for the one final model.

    Call `tracking.connect()` and `ray.init()` first. The parent run is found again by the sweep's storage path,
    so a resumed sweep logs into the same parent and children.
    """
    from .budget import budget_spent
    from .progress import Progress, quiet_tune
    from .trial_runs import MLflowTrialRuns

    check_storage(opts.experiment_path())  # again for callers that skip validate_sweep; before any run is opened,
    # so a refusal leaves nothing RUNNING
    parent, created = tracking.find_or_create_run(
        experiment, {"sweep_id": sweep_id(opts)}, run_name=opts.name,
        tags={"sweep_path": opts.experiment_path(), "sweep_kind": "study" if test_each_trial else "sweep",
              "mlflow.note.content": (description or "") + UI_HINT})
    if created:
        tracking.log_config(project(opts, SweepOptions), run_id=parent, prefix="sweep.")  # opts: often a job config
        tracking.log_config(space.base, run_id=parent, prefix="base.")
        tracking.log_config({k: repr(v) for k, v in space.spec.items()}, run_id=parent, prefix="space.")  # tuples stay tuples
        if parent_params:
            tracking.log_config(parent_params, run_id=parent)
    elif is_complete(parent):  # concluded: a re-run neither resumes nor retries any of its trials
        return SweepOutcome(parent, None, resumed=True, finished=True)
    # a restored Tuner keeps its own copies of these: they hold nothing that goes stale
    callbacks = [MLflowTrialRuns(experiment, sweep_id(opts), space, opts.experiment_path()),
                 Progress(opts.metric, expected_trials(opts, space), space.run_name)]
    tuner, resumed = build_tuner(opts, space, data, callbacks, test=test_each_trial)
    quiet_tune()
    start = time.monotonic()
    results = tuner.fit()
    # Tune's own account of the budget (it carries what interrupted runs spent); the wall time of this fit for a
    # sweep saved before that account existed
    out_of_time = budget_spent(opts.experiment_path()) or (
        bool(opts.time_budget_s) and time.monotonic() - start >= opts.time_budget_s)
    finished = out_of_time or all_trials_done(parent, expected_trials(opts, space))
    return SweepOutcome(parent, results, resumed, finished)
