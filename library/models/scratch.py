"""Convolution written from scratch (experiment B1; max-pooling is in `scratch_pool.py`): no `nn.Conv2d` or
`F.conv2d` anywhere below, only `unfold`/`fold`, slices and matrix products.

A convolution is a matrix product once the input is unrolled into patches ("im2col"): unfolding turns an
(N, C, H, W) image into (N, C·kh·kw, L) columns, one per output position, and the weight (O, C, kh, kw) becomes
an (O, C·kh·kw) matrix, so  y = W · cols  (+ bias).  The backward pass is two more matrix products:

    ∂L/∂W    = Σₙ ∂L/∂yₙ · colsₙᵀ                  (O × C·kh·kw)
    ∂L/∂cols = Wᵀ · ∂L/∂y, then `F.fold` sums the overlapping patches back into ∂L/∂x

That is the general path ("im2col"). A stride-1 convolution over more than one channel takes a cheaper one
("shifted GEMMs"). Lay the input out as rows of channels, (rows, C), on a grid of pitch w + g: each image row
is followed by g zero columns and each image by g zero rows, g being the padding (or what the kernel reaches past
the image, if more). One gap serves as the bottom (right) padding of what comes before it and the top (left)
padding of what comes after, so a same-padded 7² map takes 8² grid positions, not 9². The kernel tap (a, b) of
the output at grid position q then reads the row q + a·pitch + b, and

    y_rows[q] = Σ_ab x_rows[q + a·pitch + b] · W[:, :, a, b]ᵀ

is kh·kw matrix products, each over a contiguous slice of the same rows (no copy), accumulated in place. Grid
positions that are not outputs are computed too and discarded (the gaps: 6-31% of the work at the sizes here).
The rows go in blocks of 4,096, every tap adding to one block while it is still in cache. The backward pass is
the same products: ∂L/∂x is a forward pass of ∂L/∂y (zero off the outputs, shifted by the kernel's reach) with
the kernel flipped and transposed, and ∂L/∂W_ab = Σ_q x_rows[q + a·pitch + b]ᵀ · ∂L/∂y_rows[q].

Nothing kh·kw times the input is ever built, so the peak memory is the built-in's order, and each product is a
plain GEMM (benchmarks/scratch_conv.py measures both paths).

The shifted path keeps its input rows for backward (the input plus its gaps); the im2col path keeps only the
input and rebuilds its columns there (the columns are kh·kw times the input's size, so keeping them would
multiply the memory a conv holds between forward and backward by 9 for a 3×3 kernel, 25 for a 5×5 one).

`Conv2d` is a drop-in replacement for the built-in: same constructor arguments, same parameter names, shapes and
initialisation, so state dicts move between them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

IntOrPair = int | tuple[int, int]


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis of a convolution or pooling window (no dilation)."""
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
        h_out = out_size(h, kh, stride[0], padding[0])
        w_out = out_size(w, kw, stride[1], padding[1])
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


@dataclass(frozen=True)
class _Grid:
    """Where a stride-1 conv's input and outputs sit in the rows layout of the module docstring."""

    n: int
    h: int
    w: int
    kh: int
    kw: int
    ph: int
    pw: int

    @property
    def gaps(self) -> tuple[int, int]:  # zero rows after each image, zero columns after each image row
        return max(self.ph, self.kh - 1 - self.ph), max(self.pw, self.kw - 1 - self.pw)

    @property
    def pitch(self) -> int:
        return self.w + self.gaps[1]

    @property
    def slot(self) -> int:  # grid positions per image
        return (self.h + self.gaps[0]) * self.pitch

    @property
    def output_size(self) -> tuple[int, int]:
        return out_size(self.h, self.kh, 1, self.ph), out_size(self.w, self.kw, 1, self.pw)

    @property
    def reach(self) -> int:  # how far past an output position its last tap reads
        return (self.kh - 1) * self.pitch + self.kw - 1

    @property
    def offsets(self) -> list[int]:  # each tap's row offset, in (a, b) order
        return [a * self.pitch + b for a in range(self.kh) for b in range(self.kw)]

    @property
    def outputs(self) -> int:  # grid positions up to the last output
        (gh, gw), (h_out, w_out) = self.gaps, self.output_size
        last = ((self.n - 1) * (self.h + gh) + gh - self.ph + h_out - 1) * self.pitch + gw - self.pw + w_out - 1
        return last + 1

    def input_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (rows, C): the input on the grid, zero in the gaps, with a gap's worth of rows more
        for the last image's taps to read."""
        gh, gw = self.gaps
        rows = x.new_zeros(self.n * self.slot + (gh + 1) * self.pitch, x.shape[1])
        self.images(rows, gh, gw, self.h, self.w).copy_(x.permute(0, 2, 3, 1))
        return rows

    def images(self, rows: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
        """The (N, h, w, channels) view of `rows` at rows `top`.., columns `left`.. of each image's slot."""
        slots = rows[:self.n * self.slot].view(self.n, self.h + self.gaps[0], self.pitch, rows.shape[1])
        return slots[:, top:top + h, left:left + w]

    def output_view(self, out: torch.Tensor) -> torch.Tensor:
        """The (N, H_out, W_out, O) outputs among the grid positions `out`."""
        (gh, gw), (h_out, w_out) = self.gaps, self.output_size
        return self.images(out, gh - self.ph, gw - self.pw, h_out, w_out)


def _shifted_products(src: torch.Tensor, taps: torch.Tensor, offsets: list[int], count: int, out: torch.Tensor,
                      bias: torch.Tensor | None = None) -> None:
    """out[q] = bias + Σ_t src[q + offsets[t]] · taps[t] for q < count, a block of rows at a time."""
    for start in range(0, count, _BLOCK_ROWS):
        end = min(start + _BLOCK_ROWS, count)
        block = out[start:end]
        first = src[start + offsets[0]:end + offsets[0]]
        if bias is None:
            torch.mm(first, taps[0], out=block)
        else:
            torch.addmm(bias, first, taps[0], out=block)
        for off, tap in zip(offsets[1:], taps[1:]):
            block.addmm_(src[start + off:end + off], tap)


class _ShiftedConv2dFunction(torch.autograd.Function):
    """A stride-1 conv2d as kh·kw GEMMs over shifted slices of the input's rows (module docstring)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, padding: tuple[int, int]):
        out_chans, _, kh, kw = weight.shape
        grid = _Grid(x.shape[0], x.shape[2], x.shape[3], kh, kw, *padding)
        rows = grid.input_rows(x)
        taps = weight.permute(2, 3, 1, 0).reshape(kh * kw, -1, out_chans)  # (kh·kw, C, O), tap by tap
        out = x.new_empty(max(grid.n * grid.slot, grid.outputs), out_chans)  # discarded positions stay garbage
        _shifted_products(rows, taps, grid.offsets, grid.outputs, out, bias)
        ctx.save_for_backward(rows, taps)
        ctx.grid, ctx.has_bias = grid, bias is not None
        return grid.output_view(out).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        rows, taps = ctx.saved_tensors
        grid: _Grid = ctx.grid
        out_chans, reach = grad_out.shape[1], grid.reach
        # ∂L/∂y on the grid, zero where nothing was output, after `reach` zero rows: reading it at q + offset
        # with the kernel flipped is reading it at q - offset with the kernel as it is
        padded = grad_out.new_zeros(reach + rows.shape[0], out_chans)
        grad_grid = padded[reach:]
        grid.output_view(grad_grid).copy_(grad_out.permute(0, 2, 3, 1))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = taps.flip(0).transpose(1, 2).contiguous()  # (kh·kw, O, C), tap (a, b) at (kh-1-a, kw-1-b)
            grad_rows = rows.new_empty(rows.shape)
            _shifted_products(padded, flipped, grid.offsets, rows.shape[0], grad_rows)
            grad_x = grid.images(grad_rows, *grid.gaps, grid.h, grid.w).permute(0, 3, 1, 2).contiguous()
        if ctx.needs_input_grad[1]:
            grad_taps = torch.zeros_like(taps)
            for start in range(0, grid.outputs, _BLOCK_ROWS):
                end = min(start + _BLOCK_ROWS, grid.outputs)
                for off, grad_tap in zip(grid.offsets, grad_taps):
                    grad_tap.addmm_(rows[start + off:end + off].t(), grad_grid[start:end])
            grad_w = grad_taps.view(grid.kh, grid.kw, -1, out_chans).permute(3, 2, 0, 1).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: IntOrPair = 1,
           padding: IntOrPair = 0) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride, padding)` (no dilation or groups), computed from scratch: shifted GEMMs
    for a stride-1 conv over several channels with padding narrower than the kernel, im2col otherwise (a single
    channel gives the shifted products one column each, a stride would waste most of the grid, and wider
    padding puts outputs outside their image's slot of it)."""
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d takes (N, C, H, W) input and (O, C, kh, kw) weight, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[1]} channels, weight expects {weight.shape[1]}")
    padding_within_kernel = all(p < k for p, k in zip(_pair(padding), weight.shape[2:]))
    if _pair(stride) == (1, 1) and x.shape[1] > 1 and padding_within_kernel:
        return _ShiftedConv2dFunction.apply(x, weight, bias, _pair(padding))
    return _Conv2dFunction.apply(x, weight, bias, _pair(stride), _pair(padding))


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
