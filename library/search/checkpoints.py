"""A sweep's saved state. A trial's training state in Tune checkpoints: written each epoch by the trainable,
read back on a restart without unpickling code (`weights_only`), falling back to the checkpoint kept before an
unreadable one. Tune's own experiment state (which Tune writes in place, so a full disk truncates it): checked
before a resume, and room for it checked before a sweep starts."""
from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..runtime import load_tensors

CHECKPOINT_FILE = "train_state.pt"
MIN_FREE_BYTES = 512 * 2**20  # Tune's state and two checkpoints per trial, with room to spare


class SweepStateError(ConfigError):
    """Tune's saved state of a sweep cannot be resumed (truncated, say by a full disk)."""


def check_saved_state(path: str) -> None:
    """Before Tune restores the sweep at `path` (local storage): its experiment state parses. Tune writes it in
    place, so a full disk leaves it cut short, and Tune would then start the sweep over. (Its search state, a
    pickle despite its .json name, is Tune's to read.)"""
    if "://" in path:
        return
    files = sorted(glob.glob(f"{glob.escape(path)}/experiment_state-*.json"))
    if files:
        try:
            json.loads(Path(files[-1]).read_text())
        except (OSError, ValueError) as e:
            raise SweepStateError(
                f"Tune's saved state {files[-1]} is unreadable ({type(e).__name__}: {e}): cut short by a full disk? "
                f"The trials' checkpoints are intact, but this sweep cannot be resumed. Free some disk space, then "
                f"move {path} aside (or choose another --name) and run again: the sweep starts over, and MLflow "
                f"keeps the runs of this one (tagged orphaned).") from e


def check_free_space(path: str, need: int = MIN_FREE_BYTES) -> None:
    """Refuse to start (or resume) a sweep whose local storage is nearly full: Tune would write truncated state."""
    if "://" in path:
        return
    existing = Path(path)
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need:
        raise SweepStateError(f"only {free / 2**20:.0f} MiB free where the sweep keeps its state ({existing}); it "
                              f"needs at least {need / 2**20:.0f} MiB for Tune's state and the trials' checkpoints. "
                              "Free some space, or point --storage_path (or $CV_STORAGE_PATH) elsewhere.")


def check_storage(path: str) -> None:
    """Both checks of the sweep's storage at `path`: room for its state, and a saved state that a resume can read."""
    check_free_space(path)
    check_saved_state(path)


class CheckpointError(RuntimeError):
    """A trial checkpoint exists but cannot be read."""


def _load_checkpoint(checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as directory:
        path = Path(directory) / CHECKPOINT_FILE
        try:
            return load_tensors(path)
        except ValueError as e:  # truncated file, unpickling refused, missing file
            raise CheckpointError(f"trial checkpoint {checkpoint.path} cannot be read ({e})") from e


def _older_checkpoints(checkpoint) -> list:
    """The trial's checkpoints saved before `checkpoint` (CheckpointConfig keeps two), newest first."""
    from pyarrow.fs import FileSelector, FileType
    from ray import tune

    folder, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    infos = checkpoint.filesystem.get_file_info(FileSelector(folder))
    older = sorted((i.path for i in infos if i.type == FileType.Directory and i.base_name.startswith("checkpoint_")
                    and i.base_name < name), reverse=True)
    return [tune.Checkpoint(path=p, filesystem=checkpoint.filesystem) for p in older]


def restore_state(checkpoint) -> dict[str, Any] | None:
    """The training state to resume a trial from: its latest checkpoint, else (unreadable: a full disk, a
    tampered file) the one kept before it, else none, and the trial restarts from scratch. Each step is printed
    (the trial's log, forwarded to the driver's console)."""
    if checkpoint is None:
        return None
    for candidate in [checkpoint, *_older_checkpoints(checkpoint)]:
        try:
            return _load_checkpoint(candidate)
        except CheckpointError as e:
            print(f"{e}; trying the checkpoint before it", flush=True)
    print("no readable checkpoint left: this trial restarts from its first epoch", flush=True)
    return None
