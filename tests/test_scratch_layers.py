"""B1: the scratch convolution and max-pool against PyTorch's own layers, values and gradients."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from library.models import Conv2d, MaxPool2d, conv2d, create_model, max_pool2d


def _conv_case(seed: int, unit_stride: bool = False) -> dict:
    """A random conv problem: shapes, (possibly non-square) kernel, per-axis stride and padding, bias or not.
    `unit_stride`: stride 1 over at least 2 channels, padding narrower than the kernel: the shapes that take the
    shifted-GEMM path."""
    rng = random.Random(seed)
    kh, kw = rng.randint(1, 5), rng.randint(1, 5)
    if unit_stride:
        ph, pw = rng.randint(0, min(2, kh - 1)), rng.randint(0, min(2, kw - 1))
    else:
        ph, pw = rng.randint(0, 2), rng.randint(0, 2)
    return {
        "x": (rng.randint(1, 3), rng.randint(2 if unit_stride else 1, 4), rng.randint(max(kh - 2 * ph, 1), 11),
              rng.randint(max(kw - 2 * pw, 1), 11)),
        "out": rng.randint(1, 5), "kernel": (kh, kw),
        "stride": (1, 1) if unit_stride else (rng.randint(1, 3), rng.randint(1, 3)),
        "padding": (ph, pw), "bias": rng.random() < 0.5,
    }


def _leaves(case: dict, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*case["x"], generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(case["out"], case["x"][1], *case["kernel"], generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(case["out"], generator=g, dtype=dtype, requires_grad=True) if case["bias"] else None
    return x, w, b


def _grads(out: torch.Tensor, upstream: torch.Tensor, *leaves) -> list:
    present = [t for t in leaves if t is not None]
    return list(torch.autograd.grad(out, present, upstream))


@pytest.mark.parametrize("unit_stride", [False, True], ids=["any", "shifted"])
@pytest.mark.parametrize("seed", range(16))
def test_conv2d_matches_pytorch_in_values_and_every_gradient(seed, unit_stride):
    case = _conv_case(seed, unit_stride)
    x, w, b = _leaves(case, seed)
    ours = conv2d(x, w, b, case["stride"], case["padding"])
    if unit_stride:
        assert "Shifted" in ours.grad_fn.name()
    ref = F.conv2d(x, w, b, case["stride"], case["padding"])
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(ref)
    for mine, theirs in zip(_grads(ours, upstream, x, w, b), _grads(ref, upstream, x, w, b)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_the_shifted_path_is_exact_across_row_blocks(monkeypatch):
    """Blocks of 7 rows: every block boundary falls somewhere inside an image, a row or a gap."""
    from library.models import scratch

    monkeypatch.setattr(scratch, "_BLOCK_ROWS", 7)
    for seed in range(4):
        case = _conv_case(200 + seed, unit_stride=True)
        x, w, b = _leaves(case, seed)
        ours = conv2d(x, w, b, 1, case["padding"])
        ref = F.conv2d(x, w, b, 1, case["padding"])
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        upstream = torch.randn_like(ref)
        for mine, theirs in zip(_grads(ours, upstream, x, w, b), _grads(ref, upstream, x, w, b)):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("unit_stride", [False, True], ids=["any", "shifted"])
@pytest.mark.parametrize("seed", range(4))
def test_conv2d_passes_gradcheck_in_float64(seed, unit_stride):
    case = _conv_case(100 + seed, unit_stride)
    x, w, b = _leaves(case, seed, torch.float64)
    inputs = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(
        lambda *t: conv2d(t[0], t[1], t[2] if len(t) > 2 else None, case["stride"], case["padding"]), inputs)


def test_conv2d_skips_gradients_nobody_asked_for():
    x = torch.randn(2, 3, 8, 8)  # no requires_grad: only the weight and bias get gradients
    w, b = torch.randn(4, 3, 3, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    conv2d(x, w, b, 1, 1).sum().backward()
    assert w.grad is not None and b.grad is not None and x.grad is None


def test_conv2d_names_a_channel_mismatch():
    with pytest.raises(ValueError, match="3 channels, weight expects 2"):
        conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 2, 3, 3))


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 1, 0), ((2, 3), (1, 2), (1, 0)), (3, None, 1)])
def test_max_pool2d_matches_pytorch_in_values_and_gradient(kernel, stride, padding):
    x = torch.randn(2, 3, 9, 10, requires_grad=True)
    ours = max_pool2d(x, kernel, stride, padding)
    ref = F.max_pool2d(x, kernel, stride, padding)
    torch.testing.assert_close(ours, ref)
    upstream = torch.randn_like(ref)
    torch.testing.assert_close(*(torch.autograd.grad(y, x, upstream)[0] for y in (ours, ref)))


def test_modules_are_drop_in_for_the_builtins():
    torch.manual_seed(0)
    builtin = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    ours = Conv2d(3, 8, 3, stride=2, padding=1)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in builtin.state_dict().items()}
    ours.load_state_dict(builtin.state_dict())
    x = torch.rand(2, 3, 15, 15)
    torch.testing.assert_close(ours(x), builtin(x))
    torch.testing.assert_close(MaxPool2d(3, 2, 1)(x), nn.MaxPool2d(3, 2, 1)(x))
    assert Conv2d(3, 8, 3, bias=False).bias is None


def test_default_init_has_the_builtin_scale():
    torch.manual_seed(0)
    ours, builtin = Conv2d(16, 32, 5), nn.Conv2d(16, 32, 5)
    bound = 1 / (16 * 5 * 5) ** 0.5  # kaiming_uniform(a=√5) ⇒ U(±1/√fan_in)
    for p in (ours.weight, ours.bias, builtin.weight):
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound


def test_scratch_cnn_trains_without_pytorchs_conv_or_pool(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a built-in convolution or pooling was called")

    for name in ("conv2d", "max_pool2d", "max_pool2d_with_indices"):
        monkeypatch.setattr(F, name, forbidden)
    monkeypatch.setattr(torch, "conv2d", forbidden)
    model = create_model("scratch_cnn")
    assert not any(isinstance(m, (nn.Conv2d, nn.MaxPool2d)) for m in model.modules())
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
