"""What a feature-cache lookup needs to know of a backbone (its weights digest, data config and feature width),
remembered beside the feature cache under the identity of what it was computed from, so that a cache hit
neither builds timm's model nor reads and hashes the weights (seconds per backbone, for nothing).

A spec's identity is its name and weights, the installed timm and torch versions (they decide a seeded random
init and timm's preprocessing), and for weights read from a file (a path, a folder, a package, or
$CV_WEIGHTS_DIR/<name>) that file's resolved path, size and modification time: a replaced or edited file is a new
identity, so its weights are loaded and hashed again. Hub weights have no file known before timm resolves them;
their identity is the name and timm's version, which pins each pretrained tag to one published file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .backbones import BackboneSpec, resolve_weights


@dataclass(frozen=True)
class BackboneFacts:
    """The parts of a loaded `Backbone` that name its features (what `cache_key` and `describe` read)."""

    name: str
    weights: str  # where the weights came from: "hub", "none" or a path
    weights_digest: str
    data_config: dict[str, Any]
    num_features: int

    @classmethod
    def of(cls, backbone) -> "BackboneFacts":
        """The facts of a loaded backbone, in the form they are remembered (JSON: tuples become lists)."""
        return cls(backbone.name, backbone.weights, backbone.weights_digest,
                   json.loads(json.dumps(backbone.data_config)), backbone.num_features)


def identity(spec: BackboneSpec) -> dict[str, Any]:
    """What the facts of `spec` follow from, found without importing timm or reading the weights."""
    found = {"name": spec.name, "weights": spec.weights, "timm": version("timm"), "torch": version("torch")}
    source = resolve_weights(spec.name, spec.weights)
    if isinstance(source, Path):
        file = source.resolve()
        stat = file.stat()
        found |= {"file": str(file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return found


def memo_path(root: Path, spec: BackboneSpec) -> Path:
    digest = hashlib.sha256(json.dumps(identity(spec), sort_keys=True).encode()).hexdigest()[:20]
    return root / "backbones" / f"{spec.name}-{digest}.json"


def backbone_facts(spec: BackboneSpec, root: Path) -> BackboneFacts:
    """The facts of `spec`: remembered under `root` (the feature cache), else from loading it once (then kept)."""
    path = memo_path(root, spec)
    try:
        return BackboneFacts(**json.loads(path.read_text())["facts"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: compute it again
        pass
    facts = BackboneFacts.of(spec.load())
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump({"identity": identity(spec), "facts": asdict(facts)}, f, indent=1)
    os.replace(f.name, path)  # atomic: concurrent jobs write the same content
    return facts
