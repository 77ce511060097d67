"""Every file the project reads back from shared storage, booby-trapped: a pickle that runs a shell command when
loaded. Each is refused with a clear error (the job's one-line `error:`), and the command never runs (its marker
file never appears). The CIFAR batch is in test_data.py, a backbone's weights in test_backbones.py; Tune's own
state files are Ray's (the README says Tune's storage must be writable by the cluster's users only)."""
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from library.cli import EXPECTED_ERRORS
from library.models import create_model
from library.pretrained.features import CacheEntry
from library.runtime import UnreadableFileError, load_tensors
from library.search.checkpoints import CHECKPOINT_FILE, restore_state
from library.model_store import load_model, log_model


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _trap(path: Path, marker: Path) -> None:
    torch.save({"model": {"weight": _RunsACommand(marker)}, "epoch": 3}, path)


def test_a_refused_file_is_one_of_the_errors_a_job_reports_in_one_line():
    assert issubclass(UnreadableFileError, EXPECTED_ERRORS)


def test_a_booby_trapped_trial_checkpoint_is_refused_and_the_one_before_it_used(tmp_path, capsys):
    from ray import tune

    marker = tmp_path / "pwned"
    older, latest = tmp_path / "checkpoint_000001", tmp_path / "checkpoint_000002"
    for folder in (older, latest):
        folder.mkdir()
    torch.save({"epoch": 1}, older / CHECKPOINT_FILE)
    _trap(latest / CHECKPOINT_FILE, marker)
    assert restore_state(tune.Checkpoint.from_directory(str(latest))) == {"epoch": 1}
    assert "holds more than tensors (it refers to posix.system); refused" in capsys.readouterr().out
    assert not marker.exists()


def test_a_booby_trapped_study_or_weights_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _trap(tmp_path / "state.pt", marker)
    with pytest.raises(UnreadableFileError, match=r"refers to posix.system\); refused, nothing in it was run"):
        load_tensors(tmp_path / "state.pt")
    assert not marker.exists()


def test_a_booby_trapped_logged_model_is_refused(mlflow_store, tmp_path):
    marker = tmp_path / "pwned"
    with mlflow.start_run() as run:
        log_model(create_model("mnist_a"), "mnist_a", {})
    stored = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model"))
    artifact = Path(run.info.artifact_uri.removeprefix("file://")) / "model" / "model.pt"
    assert artifact.is_file() and (stored / "model.pt").is_file()
    _trap(artifact, marker)  # the artifact store itself tampered with
    with pytest.raises(UnreadableFileError, match="model.pt holds more than tensors .*refused"):
        load_model(run.info.run_id)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["pickled_objects", "truncated"])
def test_a_tampered_feature_shard_is_refused_with_what_to_delete(tmp_path, damage):
    marker = tmp_path / "pwned"
    entry = CacheEntry(tmp_path / "cache", "key", 1)
    entry.write_shard(0, np.ones((2, 4), np.float32), np.array([0, 1]), np.array([0, 1]))
    if damage == "pickled_objects":  # np.savez pickles object arrays; np.load refuses them
        np.savez(entry.shard_path(0), features=np.array([_RunsACommand(marker)], dtype=object),
                 labels=np.array([0]), index=np.array([0]))
    else:
        entry.shard_path(0).write_bytes(entry.shard_path(0).read_bytes()[:40])
    with pytest.raises(UnreadableFileError, match=rf"refused, nothing in them was run\. Delete the folder "
                                                  rf"{entry.folder} and run again"):
        entry.load()
    assert not marker.exists()
