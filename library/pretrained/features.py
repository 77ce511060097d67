"""Penultimate-layer features of pretrained backbones, extracted in shards (Ray tasks) into a content-addressed
cache on shared storage.

The cache key is a digest of the backbone name, its weights (`Backbone.weights_digest`, a hash of the tensors
themselves), the preprocessing (timm's data config) and the data (`PhotoSet.fingerprint`): the same inputs give
the same key wherever and whenever they are computed, so a re-run, or a probe in another job, reads the features
instead of running the model. Each shard is written atomically by the task that computed it, so an interrupted
extraction resumes with the shards still missing.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config, ConfigError
from ..data.photos import PhotoDataset, PhotoSet
from ..data.storage import data_root
from ..cluster import ray_init, remote_task
from ..runtime import UnreadableFileError, eval_mode, faster_memory_format, keep_freed_memory, pick_device
from .backbones import LITE0, Backbone, BackboneSpec, check_model_name
from .folding import folded_for_inference
from .weights_memo import BackboneFacts, backbone_facts, memo_path

CACHE_ENV = "CV_FEATURE_CACHE"


def cache_root(explicit: str = "") -> Path:
    """--cache_dir, else $CV_FEATURE_CACHE, else <data root>/features (shared storage on a cluster)."""
    chosen = explicit or os.environ.get(CACHE_ENV) or data_root() / "features"
    return Path(chosen).expanduser().resolve()


def cache_key(backbone: Backbone | BackboneFacts, photos: PhotoSet) -> str:
    identity = {"model": backbone.name, "weights": backbone.weights_digest,
                "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()},
                "data": photos.name, "fingerprint": photos.fingerprint(), "features": "pre_logits, L2-normalised"}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CacheEntry:
    """The folder of one (backbone, data) pair's features: shard-<i>-of-<n>.npz files and meta.json."""

    root: Path
    key: str
    shards: int

    @property
    def folder(self) -> Path:
        return self.root / self.key

    def shard_path(self, i: int) -> Path:
        return self.folder / f"shard-{i:05d}-of-{self.shards:05d}.npz"

    def missing(self) -> list[int]:
        return [i for i in range(self.shards) if not self.shard_path(i).is_file()]

    def write_shard(self, i: int, features: np.ndarray, labels: np.ndarray, index: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".tmp", delete=False) as f:
            np.savez(f, features=features, labels=labels, index=index)
        os.replace(f.name, self.shard_path(i))  # atomic: a reader sees a whole shard or none

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))

    def _read_shard(self, i: int) -> dict[str, np.ndarray]:
        """A shard's arrays, read without unpickling (np.load refuses object arrays): a tampered or cut-short
        shard on shared storage is refused, with what to do."""
        path = self.shard_path(i)
        try:
            with np.load(path) as shard:
                return {name: shard[name] for name in ("features", "labels", "index")}
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise UnreadableFileError(
                f"cached features {path} are unreadable ({type(e).__name__}: {str(e)[:200]}); refused, nothing in "
                f"them was run. Delete the folder {self.folder} and run again: its features are extracted anew.") from e

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(features N×D float32, labels N), in the data set's order."""
        parts = [self._read_shard(i) for i in range(self.shards)]
        order = np.argsort(np.concatenate([p["index"] for p in parts]))
        return (np.concatenate([p["features"] for p in parts])[order],
                np.concatenate([p["labels"] for p in parts])[order])


def existing_entry(root: Path, key: str) -> CacheEntry | None:
    """The complete cache entry for `key`, whatever shard count it was written with."""
    meta = root / key / "meta.json"
    if not meta.is_file():
        return None
    entry = CacheEntry(root, key, int(json.loads(meta.read_text())["shards"]))
    return entry if not entry.missing() else None


_RUNNERS: dict[tuple, tuple[torch.nn.Module, torch.memory_format]] = {}  # per process: see _inference_model


def _inference_model(backbone: Backbone, x: torch.Tensor) -> tuple[torch.nn.Module, torch.memory_format]:
    """The model extraction runs, chosen once per process on the first batch: BatchNorm folded into its
    convolutions where that computes the same (folding.py), and on the CPU the memory format its forward runs
    faster in (channels_last took EfficientNet-Lite0 from 13.3 to 9.6 ms per image here; it is slower for some
    nets). On a GPU contiguous: not measured there yet."""
    key = (backbone.name, backbone.weights_digest, tuple(x.shape[1:]), x.device.type)
    if key not in _RUNNERS:
        sample = x[:16]  # a few images time it as well as a batch, at a fraction of the cost
        model = folded_for_inference(backbone.model, sample[:4])
        fmt = torch.contiguous_format
        if x.device.type == "cpu":
            fmt = faster_memory_format(
                lambda f: model.to(memory_format=f).forward_features(sample.contiguous(memory_format=f)))
        _RUNNERS[key] = (model.to(memory_format=fmt), fmt)
    return _RUNNERS[key]


@torch.no_grad()
def extract(backbone: Backbone, photos: PhotoSet, index: range, batch_size: int = 64, workers: int = 0,
            device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised pre-logits (post-pool) features of `photos[index]`, and their labels (in eval mode; the
    backbone's mode is restored)."""
    target = pick_device(device)
    loader = torch.utils.data.DataLoader(PhotoDataset(photos, backbone.transform(), index), batch_size=batch_size,
                                         num_workers=workers, pin_memory=target.type == "cuda")
    features, labels = [], []
    with eval_mode(backbone.model.to(target)):
        model, fmt = None, torch.contiguous_format
        for x, y, _ in loader:
            x = x.to(target, non_blocking=True)
            if model is None:
                model, fmt = _inference_model(backbone, x)
            pooled = model.forward_head(model.forward_features(x.contiguous(memory_format=fmt)), pre_logits=True)
            features.append(F.normalize(pooled.float(), dim=1).cpu())
            labels.append(y)
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


@functools.lru_cache(maxsize=2)
def worker_backbone(spec: BackboneSpec) -> Backbone:
    """The backbone as this process loaded it for an earlier shard: Ray runs a job's tasks in the same worker
    processes, so each worker loads a backbone once, however many shards it extracts."""
    return spec.load()


def extract_shard(spec: BackboneSpec, photos: PhotoSet, entry: CacheEntry, shard: int, batch_size: int) -> dict:
    """One unit of work (a Ray task): the backbone (loaded once per worker), one shard extracted into the cache;
    returns timings."""
    threads = torch.get_num_threads()  # what remote_task sized to the CPUs Ray reserved
    start = time.perf_counter()
    backbone = worker_backbone(spec)
    loaded = time.perf_counter()
    index = photos.shards(entry.shards)[shard]
    features, labels = extract(backbone, photos, index, batch_size, workers=max(0, threads - 1))
    entry.write_shard(shard, features, labels, np.asarray(index))
    done = time.perf_counter()
    return {"shard": shard, "images": len(index), "load_s": loaded - start, "extract_s": done - loaded,
            "threads": threads, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "freed_memory_kept": keep_freed_memory()}


def describe(backbone: Backbone | BackboneFacts, photos: PhotoSet, shards: int) -> dict[str, Any]:
    return {"model": backbone.name, "weights": backbone.weights, "weights_digest": backbone.weights_digest,
            "num_features": backbone.num_features, "data_config": backbone.data_config, "data": photos.name,
            "fingerprint": photos.fingerprint(), "images": len(photos), "classes": list(photos.classes),
            "shards": shards, "spec": {"name": backbone.name, "weights": backbone.weights}}


@dataclass
class Extraction:
    """One (backbone, data set) pair of a job: its cache entry and how it was obtained."""

    spec: BackboneSpec
    photos: PhotoSet
    entry: CacheEntry
    cache_hit: bool
    meta: dict[str, Any]
    tasks: list[dict] | None = None  # the shard tasks' timings when computed now

    @property
    def seconds(self) -> float:
        return sum(t["load_s"] + t["extract_s"] for t in self.tasks or [])


def plan_extractions(pairs: list[tuple[BackboneSpec, PhotoSet]], root: Path, shards: int) -> list[Extraction]:
    """Each (backbone, data set) pair's cache entry, found complete (a hit) or to be computed. Needs no Ray, and
    no backbone either once its facts are remembered beside the cache (`weights_memo`): a first plan loads each
    backbone once on the driver for its weights digest (no forward pass)."""
    facts: dict[BackboneSpec, BackboneFacts] = {}
    extractions = []
    for spec, photos in pairs:
        backbone = facts.setdefault(spec, backbone_facts(spec, root))
        key = cache_key(backbone, photos)
        found = existing_entry(root, key)
        entry = found or CacheEntry(root, key, max(1, min(shards, len(photos))))
        extractions.append(Extraction(spec, photos, entry, found is not None,
                                      describe(backbone, photos, entry.shards) | {"key": key},
                                      None if found else []))
    return extractions


def run_extractions(extractions: list[Extraction], batch_size: int, num_cpus: float, num_gpus: float,
                    progress: bool = True) -> None:
    """Compute the missing shards of every planned extraction as Ray tasks, all pairs at once, with a progress
    bar on the driver as tasks finish; then mark each entry complete. Call ray_init() first."""
    import ray
    from tqdm.auto import tqdm

    task = remote_task(extract_shard, num_cpus, num_gpus)
    pending = {task.remote(e.spec, e.photos, e.entry, i, batch_size): e
               for e in extractions if not e.cache_hit for i in e.entry.missing()}
    with tqdm(total=len(pending), desc="feature shards", unit="shard", disable=not progress or not pending) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            extraction = pending.pop(ready[0])
            extraction.tasks.append(ray.get(ready[0]))
            bar.update(1)
    for e in extractions:
        if not e.cache_hit:
            e.entry.write_meta(e.meta)


@dataclass(frozen=True)
class FeatureOptions(Config):
    """Which features a job needs: backbones × the splits of a photo data set, and how to compute missing ones."""

    backbones: tuple[str, ...] = (LITE0,)  # timm names, each optionally @weights (a path, none, package:...)
    dataset: Literal["pets", "folder"] = "pets"  # pets: Oxford-IIIT Pet under the data root; folder: see folder
    folder: str = ""  # for dataset=folder: <folder>/<class>/<image>, one split
    splits: tuple[str, ...] = ("trainval", "test")  # Oxford-IIIT Pet's
    data_root: str = ""  # default: $CV_DATA_ROOT, else ~/.cache/cv-campaigns/data
    cache_dir: str = ""  # default: $CV_FEATURE_CACHE, else <data root>/features
    shards: int = 8  # Ray tasks per (backbone, split); each loads the backbone once
    batch_size: int = 64  # images per forward pass
    cpus_per_task: float = 1.0  # Ray CPUs each task reserves; its torch threads follow them
    gpus_per_task: float = 1.0  # only when the cluster has GPUs
    limit: int = 0  # N evenly spaced images of each split (quick runs); 0 = all
    ray_address: str = ""  # default: $RAY_ADDRESS, else a running cluster on this machine, else a local Ray

    def __post_init__(self):
        super().__post_init__()
        if not self.backbones:
            raise ConfigError("backbones is empty")
        if self.dataset == "folder" and not self.folder:
            raise ConfigError("dataset=folder needs --folder=/path/to/<class>/<image> files")
        if self.shards < 1 or self.batch_size < 1:
            raise ConfigError("shards and batch_size must be at least 1")

    def check_final(self) -> None:
        """An unknown name stops the job here, before a run is opened. A backbone whose features were computed
        before is known already: a cache hit does without timm's import."""
        super().check_final()
        root = cache_root(self.cache_dir)
        for text in self.backbones:
            spec = BackboneSpec.parse(text, check=False)
            if not memo_path(root, spec).is_file():
                check_model_name(spec.name)


def load_photos(opts: FeatureOptions) -> list[PhotoSet]:
    from ..data.photos import load_image_folder, load_pets

    sets = [load_image_folder(opts.folder)] if opts.dataset == "folder" else [
        load_pets(opts.data_root or None, split) for split in opts.splits]
    # evenly spaced, not the first N: split files are sorted by class, and a quick run should see every class
    return [s.subset(sorted({int(i) for i in np.linspace(0, len(s) - 1, min(opts.limit, len(s)))}),
                     f".spaced{opts.limit}") if opts.limit else s for s in sets]


def extract_features(opts: FeatureOptions) -> list[Extraction]:
    """Every (backbone, split) pair's features, from the cache or computed as Ray tasks; Ray is started only
    when something is missing. Ordered backbone-major, splits in `opts.splits` order."""
    photos = load_photos(opts)
    pairs = [(BackboneSpec.parse(text, check=False), p) for text in opts.backbones for p in photos]  # checked
    extractions = plan_extractions(pairs, cache_root(opts.cache_dir), opts.shards)
    if not all(e.cache_hit for e in extractions):
        ray_init(opts.ray_address)
        run_extractions(extractions, opts.batch_size, opts.cpus_per_task, opts.gpus_per_task)
    return extractions
