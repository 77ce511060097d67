"""MLflow helpers: where runs go and what every run records (trained models in and out: `model_store`).

The tracking URI is $MLFLOW_TRACKING_URI when set (a server, `http://head:5000`, on a cluster), else a local
store in the working directory: `sqlite:///<cwd>/mlflow.db` with artifacts in `<cwd>/mlruns/` (MLflow 3's own
default, made explicit and absolute so Tune trials, which run elsewhere, write to the same place).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import mlflow
import torch
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException

from .config import flatten
from .runtime import git_sha

TRACKING_ENV = "MLFLOW_TRACKING_URI"
RUN_TAGS_ENV = "CV_RUN_TAGS"  # a JSON object of tags every run of the process gets (a campaign's, say)
PACKAGES = ("torch", "torchvision", "timm", "ray", "mlflow", "optuna", "numpy", "pandas")
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"  # the UI's "Model training"
SPACE_PARAM_PREFIX = "space."  # a trial's sampled values are params space.<name>; its full config beside them


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store cannot be reached or written; nothing has been trained yet."""


def tracking_uri() -> str:
    if os.environ.get(TRACKING_ENV):
        return os.environ[TRACKING_ENV]
    cwd = Path.cwd().resolve()
    if "runtime_resources" in cwd.parts:  # `ray job submit --working-dir`: a temporary copy Ray deletes
        warnings.warn(f"{TRACKING_ENV} is not set, so runs go to a local store in {cwd}, Ray's temporary copy of "
                      f"the working dir, which is deleted after the job. Set {TRACKING_ENV} (cluster.yaml does).",
                      stacklevel=2)
    return f"sqlite:///{cwd / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _check_reachable(uri: str) -> None:
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as reply:
                if reply.status == 200:
                    return
                problem = f"HTTP {reply.status}"
        except (urllib.error.URLError, OSError) as e:
            problem = str(getattr(e, "reason", e))
        raise TrackingUnavailableError(
            f"the MLflow tracking server {uri} does not answer ({problem}). Start it (e.g. `mlflow server --host "
            f"127.0.0.1 --port 5000`), fix {TRACKING_ENV}, or unset {TRACKING_ENV} to record into a local store "
            f"in {Path.cwd()}. Nothing has been run yet."
        )
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingUnavailableError(f"cannot create the MLflow store directory {db.parent}: {e}") from e
        if not os.access(db.parent, os.W_OK):
            raise TrackingUnavailableError(f"the MLflow store directory {db.parent} is not writable")


def connect(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default: `tracking_uri()`) after checking it answers; returns the URI. A local store
    opens in a thread meanwhile (its code and, when new, its tables: ~1.2 s), while the job reads its data and
    starts Ray; MLflow builds stores under a lock, so a use before then waits for it. Not a daemon thread: an
    exit (a bad config, say) waits for the tables to be whole."""
    uri = uri or tracking_uri()
    _check_reachable(uri)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
    mlflow.set_tracking_uri(uri)
    if _sqlite_path(uri) is not None:
        threading.Thread(target=_open_store, args=(uri,), name="open-mlflow-store").start()
    return uri


def _open_store(uri: str) -> None:
    with contextlib.suppress(Exception):  # a store that fails to open fails the same way in the job's first use
        mlflow.MlflowClient(uri).search_experiments(max_results=1)


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if needed (safe when several processes race to create it), tagged as
    a model-training experiment (MLflow 3's kind). A local sqlite store keeps the artifacts beside the database."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND_TAG not in found.tags:  # an experiment created before the tag, or by another tool
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return found.experiment_id
    db = _sqlite_path(mlflow.get_tracking_uri())
    location = (db.parent / "mlruns").as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    except MlflowException:
        found = client.get_experiment_by_name(name)  # another process created it first
        if found is None:
            raise
        return found.experiment_id


def run_tags() -> dict[str, str]:
    """Provenance for every run: code version, package versions, host and accelerator, and $CV_RUN_TAGS."""
    tags = {"git_sha": git_sha(), "host": socket.gethostname(), "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"version.{package}"] = metadata.version(package)
    tags |= {"version.torch": torch.__version__, "version.cuda": str(torch.version.cuda)}  # with its build tag
    return tags | json.loads(os.environ.get(RUN_TAGS_ENV) or "{}")  # e.g. the campaign this job runs in


def log_config(cfg: Any, run_id: str | None = None, prefix: str = "") -> None:
    """The flattened config as params of the active run, or of `run_id` (MLflow takes at most 100 per call)."""
    params = {f"{prefix}{k}": json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
              for k, v in flatten(cfg).items()}
    items = list(params.items())
    for i in range(0, len(items), 100):
        if run_id is None:
            mlflow.log_params(dict(items[i : i + 100]))
        else:
            mlflow.MlflowClient().log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])


def find_run(experiment: str, match: Mapping[str, str]) -> str | None:
    """The newest run of `experiment` whose tags include `match` (e.g. a trial id), or None."""
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in match.items())
    found = mlflow.MlflowClient().search_runs([experiment_id(experiment)], filter_string=query, max_results=1,
                                              order_by=["attributes.start_time DESC"])
    return found[0].info.run_id if found else None


def find_or_create_run(experiment: str, match: Mapping[str, str], run_name: str | None = None,
                       tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> tuple[str, bool]:
    """The run of `experiment` whose tags include `match` (e.g. a trial id), reopened as RUNNING; or a new one.
    Returns (run id, created). This is what keeps a resumed sweep from duplicating its runs."""
    client = mlflow.MlflowClient()
    found = find_run(experiment, match)
    if found is not None:
        if client.get_run(found).info.status != "RUNNING":
            client.update_run(found, status="RUNNING")
        for key, value in json.loads(os.environ.get(RUN_TAGS_ENV) or "{}").items():  # its context now (a campaign's
            client.set_tag(found, key, value)  # current command for a sweep it resumes)
        return found, False
    parent = {} if parent_run_id is None else {"mlflow.parentRunId": parent_run_id}
    all_tags = {**run_tags(), **(tags or {}), **match, **parent}
    return client.create_run(experiment_id(experiment), run_name=run_name, tags=all_tags).info.run_id, True


def create_child_run(parent: mlflow.entities.Run, run_name: str) -> str:
    """A new run under `parent` (same experiment, provenance tags), not made active: for results a driver
    records per unit of work while the parent run is active. Returns its id; end it with set_terminated."""
    tags = run_tags() | {"mlflow.parentRunId": parent.info.run_id}
    return mlflow.MlflowClient().create_run(parent.info.experiment_id, run_name=run_name, tags=tags).info.run_id


@contextlib.contextmanager
def start_run(experiment: str, run_name: str | None = None, config: Any = None,
              tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
              description: str | None = None, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """An active MLflow run in `experiment` with the config as params and provenance tags; nests under a parent
    run when `parent_run_id` is given, reopens `run_id` when given. Call `connect()` first."""
    all_tags = {**run_tags(), **(tags or {})}
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id(experiment), run_name=run_name,
                          parent_run_id=parent_run_id, description=description, tags=all_tags) as run:
        if config is not None:
            log_config(config)
        try:
            yield run
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (cluster.stop_on_sigterm): stopped, not failed
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise


def ui_url(run_id: str) -> str:
    """Run `run_id` in the MLflow UI's Model training view (a local store: `mlflow ui` as the README starts it)."""
    uri = mlflow.get_tracking_uri()
    root = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    return f"{root}/#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"


def log_epoch(metrics: Mapping[str, float], step: int | None = None) -> None:
    """One epoch's metrics at step = its epoch number (the 'epoch' entry itself is the step, not a metric)."""
    step = int(metrics.get("epoch", 0)) if step is None else step
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "epoch"}, step=step)


def log_rows(run_id: str, rows: Sequence[Mapping[str, float]], step_key: str, prefix: str = "") -> None:
    """Rows of metrics (one per epoch or iteration) into a run: every finite value as `<prefix><name>` at step
    `row[step_key]`, in batches of MLflow's 1000-metric limit."""
    now = int(time.time() * 1000)
    metrics = [Metric(f"{prefix}{k}", float(v), now, int(row[step_key]))
               for row in rows for k, v in row.items() if k != step_key and math.isfinite(v)]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
