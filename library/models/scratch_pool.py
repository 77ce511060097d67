"""Max-pooling written from scratch (experiment B1): no `nn.MaxPool2d` or `F.max_pool2d` anywhere below, only
`unfold` and a max over each window. `MaxPool2d` is a drop-in replacement for the built-in."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .scratch import IntOrPair, out_size


def max_pool2d(x: torch.Tensor, kernel_size: IntOrPair, stride: IntOrPair | None = None,
               padding: IntOrPair = 0) -> torch.Tensor:
    """`F.max_pool2d` from scratch: each channel's windows unrolled by `unfold`, the max over each window.
    Padding is -inf, so it never wins. Autograd routes the gradient to each window's arg-max through `max`
    and `unfold`'s own backward (a fold), as the built-in does."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride if stride is not None else kernel_size)
    ph, pw = _pair(padding)
    n, c, h, w = x.shape
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=float("-inf"))
    # Channels become batch entries, so each window holds one channel's kh·kw values.
    windows = F.unfold(x.reshape(n * c, 1, h + 2 * ph, w + 2 * pw), (kh, kw), stride=(sh, sw))
    out = windows.max(dim=1).values  # (N·C, L)
    return out.view(n, c, out_size(h, kh, sh, ph), out_size(w, kw, sw, pw))


class MaxPool2d(nn.Module):
    """Drop-in for `nn.MaxPool2d(kernel_size, stride=None, padding=0)`."""

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride if stride is not None else kernel_size, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
