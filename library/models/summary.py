"""A model's architecture as a table: every leaf layer in forward order with its output shape and parameters."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from torch import nn

from ..runtime import eval_mode


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> pd.DataFrame:
    """Columns: layer (module path), type, details (its repr's arguments), output (shape without the batch),
    params. One forward pass of a zero batch of one, in eval mode (the model's mode is restored)."""
    rows: list[dict] = []

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            rows.append({"layer": name, "type": type(module).__name__, "details": module.extra_repr(),
                         "output": "×".join(map(str, shape)),
                         "params": sum(p.numel() for p in module.parameters(recurse=False))})
        return record

    leaves = [(name, m) for name, m in model.named_modules() if name and not list(m.children())]
    handles = [m.register_forward_hook(hook(name)) for name, m in leaves]
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return pd.DataFrame(rows, columns=["layer", "type", "details", "output", "params"])
