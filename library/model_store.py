"""Trained models in MLflow: logged with the spec that rebuilds them, registered by name, and loaded back by run,
by registered name, or by a model spec as jobs take them on the command line."""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import mlflow
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from .config import ConfigError
from .runtime import load_tensors

MODEL_ARTIFACT_DIR = "model"


def save_model(model: nn.Module, directory: Path, name: str, model_kw: Mapping[str, Any]) -> Path:
    """Write `model.pt` (the state dict) and `model.json` (how to rebuild it) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "model.pt")
    spec = {"model": name, "model_kw": dict(model_kw), "init": getattr(model, "init_scheme", "")}
    (directory / "model.json").write_text(json.dumps(spec, indent=2, default=list))
    return directory


def log_model(model: nn.Module, name: str, model_kw: Mapping[str, Any], local_dir: Path | None = None,
              run_id: str | None = None) -> None:
    """Log the state dict and its rebuild spec under the `model/` artifacts of the active run (or `run_id`).
    With `local_dir`, they are written there first and kept, so a tracking server failing at the last moment
    loses no trained model."""
    def upload(directory: Path) -> None:
        if run_id is None:
            mlflow.log_artifacts(str(directory), MODEL_ARTIFACT_DIR)
        else:
            mlflow.MlflowClient().log_artifacts(run_id, str(directory), MODEL_ARTIFACT_DIR)

    if local_dir is not None:
        upload(save_model(model, local_dir, name, model_kw))
        return
    with tempfile.TemporaryDirectory() as tmp:
        upload(save_model(model, Path(tmp), name, model_kw))


def load_model(run_id: str, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model logged by `log_model` from its run: registry name + options, then the state dict
    (loaded with weights_only=True: no code from the artifact store is unpickled)."""
    from .models import create_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT_DIR, dst_path=tmp))
        spec = json.loads((path / "model.json").read_text())
        state = load_tensors(path / "model.pt", map_location)
    model = create_model(spec["model"], **spec["model_kw"])
    model.load_state_dict(state)
    return model


class ModelNotRegisteredError(LookupError):
    """No model is registered under the asked name in this tracking store."""


def register_model(run_id: str, name: str) -> int:
    """A new version of the registered model `name` pointing at the weights `log_model` put in run `run_id`;
    returns the version number. Other jobs then load it by name (`load_registered_model`)."""
    client = mlflow.MlflowClient()
    with contextlib.suppress(MlflowException):  # RESOURCE_ALREADY_EXISTS: a later version of a known name
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_DIR}"
    return int(client.create_model_version(name, source, run_id=run_id).version)


def registered_run(name: str, version: int | None = None) -> str:
    """The run id behind version `version` (default: the newest) of the registered model `name`."""
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    if version is not None:
        versions = [v for v in versions if int(v.version) == version]
    if not versions:
        which = f"version {version} of " if version is not None else ""
        raise ModelNotRegisteredError(f"no {which}model registered as {name!r} in {mlflow.get_tracking_uri()}; "
                                      f"train and register it first (python jobs/train_mnist_models.py trains "
                                      f"mnist_a and mnist_b)")
    return max(versions, key=lambda v: int(v.version)).run_id


def load_registered_model(name: str, version: int | None = None,
                          map_location: str | torch.device = "cpu") -> nn.Module:
    """The registered model `name` (newest version unless told), rebuilt by `load_model`, in eval mode."""
    return load_model(registered_run(name, version), map_location).eval()


def load_model_spec(spec: str, num_classes: int, in_chans: int) -> nn.Module:
    """A trained model named on the command line, in eval mode: `registered:<name>[:<version>]` (the model
    registry), `run:<run id>` (a model a job logged into that run) or `init:<registry name>` (seeded random
    weights, for smoke tests). Loaded on the driver; Ray tasks receive the modules, never MLflow connections."""
    from .models import create_model

    kind, _, rest = spec.partition(":")
    if kind == "registered":
        name, _, version = rest.partition(":")
        return load_registered_model(name, int(version) if version else None)
    if kind == "run":
        return load_model(rest).eval()
    if kind == "init":
        torch.manual_seed(0)
        return create_model(rest, num_classes=num_classes, in_chans=in_chans).eval()
    raise ConfigError(f"model {spec!r}: use registered:<name>[:<version>], run:<run id> or init:<registry name>")
