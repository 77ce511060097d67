"""A10a: a bias in a layer followed by BatchNorm is cancelled by BN's mean subtraction.

BN(Wx + b) = γ (Wx + b − mean(Wx + b)) / σ + β = γ (Wx − mean(Wx)) / σ + β: the bias shifts the activations and
their batch mean alike, and leaves the variance alone. So in training mode the network's output, and the
gradient of every other weight, do not depend on b, and ∂L/∂b = 0 — the parameter is dead weight, which is
why `layers.conv` builds convolutions followed by a norm without one. (In eval mode the running mean has
absorbed b by the end of training, to the same effect.)
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model


def _with_biases(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """A copy of `model` in which every bias-free conv (each one is followed by BatchNorm) gets a random bias."""
    twin = copy.deepcopy(model)
    for parent in twin.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.bias is None:
                biased = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                   child.padding, bias=True).to(child.weight)
                biased.weight.data.copy_(child.weight.data)
                biased.bias.data.copy_(torch.randn(child.out_channels, generator=generator, dtype=child.weight.dtype))
                setattr(parent, name, biased)
    return twin


def bias_before_bn_check(model_name: str = "mish_cnn_bn", batch: int = 16, seed: int = 0) -> dict[str, float]:
    """Train-mode forward and backward of `model_name` with and without N(0, 1) biases before its BatchNorms, in
    float64 on the same batch. Returns the largest absolute differences of the logits and of the gradients of
    the shared weights, the largest |∂L/∂b| of the added biases, and the scales they are relative to."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    plain = create_model(model_name).double().train()
    biased = _with_biases(plain, generator).train()
    x = torch.rand(batch, 3, 32, 32, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (batch,), generator=generator)
    outputs = {}
    for label, model in (("plain", plain), ("biased", biased)):
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        outputs[label] = logits.detach()
    grads_plain = dict(plain.named_parameters())
    diffs, biases = [], []
    for name, p in biased.named_parameters():
        if name in grads_plain and grads_plain[name].shape == p.shape:
            diffs.append((p.grad - grads_plain[name].grad).abs().max().item())
        else:
            biases.append(p.grad.abs().max().item())
    if not biases:
        raise ValueError(f"{model_name} has no bias-free conv before a norm to test")
    return {
        "biases_added": float(len(biases)),
        "max_abs_logit_diff": (outputs["plain"] - outputs["biased"]).abs().max().item(),
        "max_abs_logit": outputs["plain"].abs().max().item(),
        "max_abs_grad_diff": max(diffs),
        "max_abs_grad": max(p.grad.abs().max().item() for p in plain.parameters()),
        "max_abs_bias_grad": max(biases),
    }
