"""Looking inside classifiers (C1, C2, E1, E2): top-k predictions, intermediate feature maps, class activation
maps and gradient saliency. Works on timm models and on the registry's models (both expose `forward_features`
and a linear classifier after global pooling).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import eval_mode


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final linear layer: timm's `get_classifier()`, else a `fc` attribute (the registry's Classifier)."""
    layer = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "fc", None)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"{type(model).__name__} does not end in a linear classifier (found {type(layer).__name__})")
    return layer


@dataclass
class TopK:
    indices: list[int]
    probabilities: list[float]
    logits: list[float]


@torch.no_grad()
def top_k(model: nn.Module, x: torch.Tensor, k: int = 5) -> list[TopK]:
    """The k most probable classes of each image in the batch `x` (already preprocessed), with the
    probabilities (softmax over all classes) and the raw logits."""
    with eval_mode(model):
        logits = model(x).float()
    probabilities = logits.softmax(1)
    top = probabilities.topk(k, dim=1)
    return [TopK(i.tolist(), p.tolist(), logits[n, i].tolist()) for n, (p, i) in enumerate(zip(top.values, top.indices))]


def _spatial(features: torch.Tensor, model: nn.Module) -> torch.Tensor:
    if features.ndim != 4:
        raise ValueError(f"{type(model).__name__}'s forward_features gives a {features.ndim}-d tensor, not a B×C×H×W "
                         "feature map: class activation maps need a network ending in global pooling + linear (a CNN)")
    return features


def class_activation_map(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """E1 (Zhou et al., 2016): for a network ending in global average pooling and a linear layer, the map
    Σ_c w[class, c] · F_c of the last feature map F, upsampled bilinearly to the input size and scaled to [0, 1]
    per image. `classes`: one per image, default the predicted class. The model's mode is restored. Returns B×H×W."""
    with torch.no_grad(), eval_mode(model):
        features = _spatial(model.forward_features(x), model).float()
        weight = classifier_layer(model).weight.float()
        if classes is None:
            classes = model.forward_head(features).argmax(1)
        cam = torch.einsum("bchw,bc->bhw", features, weight[classes])
        cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _unit_range(cam)


def saliency_map(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """E2 (Simonyan et al., 2014): |∂ score_class / ∂ input|, the maximum over colour channels, scaled to [0, 1]
    per image. `classes` default to the predicted ones. The model's mode is restored. Returns B×H×W."""
    x = x.detach().clone().requires_grad_(True)
    with eval_mode(model):
        scores = model(x)
        if classes is None:
            classes = scores.argmax(1)
        scores.gather(1, classes[:, None]).sum().backward()
    return _unit_range(x.grad.abs().amax(dim=1))


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def blend(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """An RGB image (3×H×W in [0, 1]) with a heat map (H×W in [0, 1]) laid over it in the 'jet' colours."""
    from matplotlib import colormaps

    coloured = torch.as_tensor(colormaps["jet"](heat.cpu().numpy())[..., :3], dtype=torch.float32).permute(2, 0, 1)
    return (1 - alpha) * image.cpu() + alpha * coloured


def conv_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The output of every convolution of `model` on `x`, in forward order (C2's feature maps); the model's mode
    is restored."""
    outputs: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda m, i, o, name=name: outputs.append((name, o.detach())))
               for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def early_middle_late(model: nn.Module, x: torch.Tensor, per_stage: int = 5) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """C2: `per_stage` feature maps (H×W, each scaled to [0, 1]) of one image from the first, the middle and the
    last convolution of the network: the channels with the largest mean activation there."""
    outputs = conv_outputs(model, x[:1])
    if not outputs:
        raise ValueError(f"{type(model).__name__} has no convolutions to show feature maps of")
    picked = {"early": outputs[0], "middle": outputs[len(outputs) // 2], "late": outputs[-1]}
    maps = {}
    for stage, (name, out) in picked.items():
        channels = out[0].mean(dim=(1, 2)).topk(min(per_stage, out.shape[1])).indices
        maps[stage] = [(f"{name}[{c}]", m) for c, m in zip(channels.tolist(), _unit_range(out[0, channels]))]
    return maps
