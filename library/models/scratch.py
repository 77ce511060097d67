"""Convolution and max-pooling written from scratch (experiment B1): no `nn.Conv2d`, `F.conv2d`, `nn.MaxPool2d`
or `F.max_pool2d` anywhere below, only `unfold`/`fold`, slices and matrix products.

A convolution is a matrix product once the input is unrolled into patches ("im2col"): unfolding turns an
(N, C, H, W) image into (N, C·kh·kw, L) columns, one per output position, and the weight (O, C, kh, kw) becomes
an (O, C·kh·kw) matrix, so  y = W · cols  (+ bias).  The backward pass is two more matrix products:

    ∂L/∂W    = Σₙ ∂L/∂yₙ · colsₙᵀ                  (O × C·kh·kw)
    ∂L/∂cols = Wᵀ · ∂L/∂y, then `F.fold` sums the overlapping patches back into ∂L/∂x

That is the general path ("im2col"). A stride-1 convolution over more than one channel takes a cheaper one
("shifted GEMMs"): with the zero-padded input laid out as rows of channels, (N·Hp·Wp, C), the kernel tap (i, j)
reads the row i·Wp + j further on, so

    y_rows[p] = Σᵢⱼ x_rows[p + i·Wp + j] · W[:, :, i, j]ᵀ

is kh·kw matrix products, each over a contiguous slice of the same rows (no copy), accumulated in place into
the output computed over the padded grid (its border rows are discarded: (Hp·Wp)/(H·W) extra work, 13% on a
32² CIFAR map). The rows go in blocks of 4,096, every tap adding to one block while it is still in cache. The
backward pass is the same kh·kw slices:

    ∂L/∂x_rows[p + off] += ∂L/∂y_rows[p] · W_ij          ∂L/∂W_ij = Σₚ ∂L/∂y_rows[p]ᵀ · x_rows[p + off]

Nothing kh·kw times the input is ever built, so the peak memory is the built-in's order, and each product is a
plain GEMM (benchmarks/scratch_conv.py measures both paths).

Only the input, never its columns, is saved for backward; the im2col path rebuilds its columns there (the
columns are kh·kw times the input's size, so keeping them would multiply the memory a conv holds between
forward and backward by 9 for a 3×3 kernel, 25 for a 5×5 one).

`Conv2d` and `MaxPool2d` are drop-in replacements for the built-ins: same constructor arguments, same
parameter names, shapes and initialisation, so state dicts move between them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

IntOrPair = int | tuple[int, int]


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _columns(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int]) -> torch.Tensor:
    """`F.unfold(x, kernel, padding=padding, stride=stride)`, (N, C·kh·kw, L), built from the strided windows of
    `Tensor.unfold` and one reshape copy: the copy is a vectorised, multi-threaded kernel, 1.5-4× faster on the
    CPU than ATen's im2col at the layer sizes here (benchmarks/scratch_conv.py)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    windows = x.unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C, H_out, W_out, kh, kw), a view
    n, c = x.shape[:2]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, -1)


class _Conv2dFunction(torch.autograd.Function):
    """conv2d as unfold + matmul, with a hand-written backward (fold + matmuls)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, stride: tuple[int, int], padding: tuple[int, int]):
        n, _, h, w = x.shape
        out_chans, _, kh, kw = weight.shape
        cols = _columns(x, (kh, kw), stride, padding)  # (N, C·kh·kw, L)
        # (O, C·kh·kw) @ (N, C·kh·kw, L) -> (N, O, L), as an explicit batched product: `matmul` would fold the
        # batch into one big product by first copying the (large) columns into another layout
        out = torch.bmm(weight.reshape(out_chans, -1).expand(n, -1, -1), cols)
        if bias is not None:
            out = out + bias.view(1, -1, 1)
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.stride, ctx.padding = bias is not None, stride, padding
        h_out = _out_size(h, kh, stride[0], padding[0])
        w_out = _out_size(w, kw, stride[1], padding[1])
        return out.view(n, out_chans, h_out, w_out)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        n, _, h, w = x.shape
        out_chans, _, kh, kw = weight.shape
        grad = grad_out.reshape(n, out_chans, -1)  # (N, O, L)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_cols = torch.bmm(weight.reshape(out_chans, -1).t().expand(n, -1, -1), grad)  # (N, C·kh·kw, L)
            grad_x = F.fold(grad_cols, (h, w), (kh, kw), padding=ctx.padding, stride=ctx.stride)
        if ctx.needs_input_grad[1]:
            cols = _columns(x, (kh, kw), ctx.stride, ctx.padding)
            # per image (O × L) @ (L × C·kh·kw), batched, then summed over images: ~15× faster on the CPU than
            # the same contraction as one einsum, which reorders `cols` in memory first
            grad_w = torch.bmm(grad, cols.transpose(1, 2)).sum(0).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2))
        return grad_x, grad_w, grad_b, None, None


_BLOCK_ROWS = 4096  # output rows per block: a block's output stays in cache while every tap adds to it


def _tap_blocks(m: int, kw: int, wp: int, taps: torch.Tensor):
    """(start, end, offset, tap (C, O)) for every block of the first `m` output rows and every kernel tap."""
    kh = taps.shape[0]
    for start in range(0, m, _BLOCK_ROWS):
        end = min(start + _BLOCK_ROWS, m)
        for i in range(kh):
            for j in range(kw):
                yield start, end, i * wp + j, taps[i, j]


def _padded_rows(x: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) -> the zero-padded image as rows of channels, (N·Hp·Wp, C)."""
    n, c, h, w = x.shape
    ph, pw = padding
    rows = x.new_zeros(n, h + 2 * ph, w + 2 * pw, c)
    rows[:, ph:ph + h, pw:pw + w] = x.permute(0, 2, 3, 1)
    return rows.view(-1, c)


class _ShiftedConv2dFunction(torch.autograd.Function):
    """A stride-1 conv2d as kh·kw GEMMs over shifted slices of the padded input's rows (module docstring)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, padding: tuple[int, int]):
        n, _, h, w = x.shape
        out_chans, _, kh, kw = weight.shape
        hp, wp = h + 2 * padding[0], w + 2 * padding[1]
        rows = _padded_rows(x, padding)
        taps = weight.permute(2, 3, 1, 0).contiguous()  # (kh, kw, C, O)
        m = rows.shape[0] - (kh - 1) * wp - (kw - 1)  # grid positions every tap can reach: all the real outputs
        out = x.new_zeros(n * hp * wp, out_chans)
        if bias is not None:
            out += bias
        for start, end, off, tap in _tap_blocks(m, kw, wp, taps):
            out[start:end].addmm_(rows[start + off:end + off], tap)
        ctx.save_for_backward(x, taps)
        ctx.has_bias, ctx.padding = bias is not None, padding
        return out.view(n, hp, wp, out_chans)[:, :hp - kh + 1, :wp - kw + 1].permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x, taps = ctx.saved_tensors
        n, c, h, w = x.shape
        kh, kw, _, out_chans = taps.shape
        (ph, pw), h_out, w_out = ctx.padding, grad_out.shape[2], grad_out.shape[3]
        hp, wp = h + 2 * ph, w + 2 * pw
        grid = grad_out.new_zeros(n, hp, wp, out_chans)  # ∂L/∂y on the padded grid, zero where nothing was output
        grid[:, :h_out, :w_out] = grad_out.permute(0, 2, 3, 1)
        grid = grid.view(-1, out_chans)
        m = grid.shape[0] - (kh - 1) * wp - (kw - 1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_rows = x.new_zeros(n * hp * wp, c)
            for start, end, off, tap in _tap_blocks(m, kw, wp, taps):
                grad_rows[start + off:end + off].addmm_(grid[start:end], tap.t())
            grad_x = grad_rows.view(n, hp, wp, c)[:, ph:ph + h, pw:pw + w].permute(0, 3, 1, 2).contiguous()
        if ctx.needs_input_grad[1]:
            rows = _padded_rows(x, ctx.padding)
            grad_taps = torch.zeros_like(taps)
            for start, end, off, _ in _tap_blocks(m, kw, wp, taps):
                i, j = divmod(off, wp)
                grad_taps[i, j].addmm_(rows[start + off:end + off].t(), grid[start:end])
            grad_w = grad_taps.permute(3, 2, 0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: IntOrPair = 1,
           padding: IntOrPair = 0) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride, padding)` (no dilation or groups), computed from scratch: shifted GEMMs
    for a stride-1 conv over several channels, im2col otherwise (a single channel gives the shifted products one
    column each, and a stride would waste most of the padded grid)."""
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d takes (N, C, H, W) input and (O, C, kh, kw) weight, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[1]} channels, weight expects {weight.shape[1]}")
    if _pair(stride) == (1, 1) and x.shape[1] > 1:
        return _ShiftedConv2dFunction.apply(x, weight, bias, _pair(padding))
    return _Conv2dFunction.apply(x, weight, bias, _pair(stride), _pair(padding))


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
    return out.view(n, c, _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw))


class Conv2d(nn.Module):
    """Drop-in for `nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias)`: the same
    `weight` (O, C, kh, kw) and `bias` (O,) parameters with the same default initialisation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding: IntOrPair = 0, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's defaults: Kaiming-uniform with a=√5, i.e. U(±1/√fan_in), for the weight and the bias.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


class MaxPool2d(nn.Module):
    """Drop-in for `nn.MaxPool2d(kernel_size, stride=None, padding=0)`."""

    def __init__(self, kernel_size: IntOrPair, stride: IntOrPair | None = None, padding: IntOrPair = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride if stride is not None else kernel_size, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
