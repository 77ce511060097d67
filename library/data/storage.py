"""Where data sets live and how they get there: the data root, one download under a lock, checksums.

Every dataset goes through `prepare()`: under a file lock in the data root (so N workers on a node, or N nodes
on shared storage, download once), it decides between three cases:

- the files are present with the official checksums: use them;
- the files are present in the standard layout but their checksums differ (a staged copy, such as the
  JPEG-derived CIFAR-10 kept for offline machines): use them, with a `StagedCopyWarning`;
- the files are absent: download through torchvision (which verifies the archive's md5); if that fails,
  raise `DatasetNotFoundError` saying which files to put where.
"""
from __future__ import annotations

import hashlib

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock

DATA_ROOT_ENV = "CV_DATA_ROOT"
DEFAULT_DATA_ROOT = "~/.cache/cv-campaigns/data"
LOCK_TIMEOUT_S = 3600  # a first CIFAR-10 download on a slow link can take minutes; never wait forever


class DatasetNotFoundError(FileNotFoundError):
    """The data set is neither on disk nor downloadable; the message says which files to put where."""


class DatasetCorruptError(ValueError):
    """A data file is not what its format allows (truncated, tampered, another file); the message says which."""


_warned: set[tuple[str, Path]] = set()  # (data set, root) already warned about as a staged copy


class StagedCopyWarning(UserWarning):
    """Files are in the standard layout but differ from the official archive (e.g. a re-encoded copy)."""


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root: an explicit path (a job's `--data_root`), else $CV_DATA_ROOT, else ~/.cache/cv-campaigns/data.

    Always absolute: Ray Tune runs each trial in its own working directory, so relative paths would break.
    """
    chosen = explicit or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return Path(chosen).expanduser().resolve()


def _md5(path: Path) -> str | None:
    """The file's md5 (hex), None where it is not a readable file."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "md5").hexdigest()
    except OSError:
        return None


@dataclass(frozen=True)
class DatasetFiles:
    """The on-disk contract of one data set in its torchvision layout."""

    name: str  # human name, e.g. "CIFAR-10"
    folder: str  # sub-folder of the root that holds `files`
    files: dict[str, str | None]  # file name -> official md5 (None: cannot be checked)
    download: Callable[[Path], None]  # fetches into the root; raises on failure
    sources: list[str] = field(default_factory=list)  # where a user gets the files by hand

    def missing(self, root: Path) -> list[str]:
        return [f for f in self.files if not (root / self.folder / f).is_file()]

    def mismatched(self, root: Path) -> list[str]:
        return [f for f, md5 in self.files.items() if md5 and _md5(root / self.folder / f) != md5]

    def not_found_message(self, root: Path, cause: BaseException | None) -> str:
        lines = [
            f"{self.name} is not in the data root {root} and could not be downloaded"
            + (f" ({type(cause).__name__}: {cause})." if cause else "."),
            f"Put these files in {root / self.folder}/:",
            *(f"    {f}" for f in self.files),
            "They come from:",
            *(f"    {s}" for s in self.sources),
            f"or point the job at a root that has them: --data_root=DIR or {DATA_ROOT_ENV}=DIR.",
        ]
        return "\n".join(lines)


def prepare(spec: DatasetFiles, root: Path, download: bool = True) -> bool:
    """Make `spec`'s files available under `root`; True if they carry the official checksums.

    Safe to call from many processes at once: the first one downloads, the others wait on the lock and then
    find the files in place.
    """
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{spec.folder.replace('/', '_')}.lock"), timeout=LOCK_TIMEOUT_S):
        if spec.missing(root):
            if not download:
                raise DatasetNotFoundError(spec.not_found_message(root, None))
            try:
                spec.download(root)
            except Exception as e:  # urllib, ssl, socket and torchvision's own md5 RuntimeError all land here
                raise DatasetNotFoundError(spec.not_found_message(root, e)) from e
            if spec.missing(root):
                raise DatasetNotFoundError(spec.not_found_message(root, None))
        bad = spec.mismatched(root)
    if bad and (spec.name, root) not in _warned:  # once per process: a job may load its data more than once
        _warned.add((spec.name, root))
        warnings.warn(
            f"{spec.name} in {root / spec.folder} differs from the official archive ({', '.join(bad)} fail their md5"
            " check); using it as a staged copy. Accuracies may differ slightly from published figures.",
            StagedCopyWarning,
            stacklevel=2,
        )
    return not bad
