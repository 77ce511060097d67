"""Per-iteration metrics: the gradient-magnitude hook against a direct computation, step budgets, the rows."""
import pytest
import torch
import torch.nn.functional as F

from library.data import ImageData, ImageSet
from library.models import create_model
from library.train.step_metrics import GradientMagnitude, StepRecorder, conv_layers
from library.train.loop import train
from library.train.recipe import TrainConfig


def test_hook_reports_the_max_abs_gradient_of_the_weight():
    torch.manual_seed(0)
    model = create_model("allconv_cnn", extra_layers=3, norm="none", init="torch")
    monitor = GradientMagnitude.first_and_last_conv(model)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    seen = monitor.latest()
    first, last = conv_layers(model)[0], conv_layers(model)[-1]
    assert seen["grad_first"].item() == pytest.approx(first.weight.grad.abs().max().item(), rel=1e-6)
    assert seen["grad_last"].item() == pytest.approx(last.weight.grad.abs().max().item(), rel=1e-6)
    # the direct computation, independent of .grad: autograd.grad of the same loss
    model.zero_grad()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [first.weight, last.weight])
    assert monitor.latest()["grad_first"].item() == pytest.approx(grads[0].abs().max().item(), rel=1e-6)
    monitor.remove()
    F.cross_entropy(model(x), y).backward()
    assert monitor.latest() == {}  # removed hooks record nothing


def _tiny(n: int = 64) -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 10
    split = ImageSet(images, labels)
    held = ImageSet(images[:16], labels[:16])
    return ImageData("tiny", split, held, held, tuple(f"c{k}" for k in range(10)))


def test_a_step_budget_ends_part_way_through_an_epoch():
    cfg = TrainConfig(model="mish_cnn", steps=5, batch_size=16, log_steps=True, crop="none", flip=False)
    result = train(cfg, _tiny())  # 4 steps per epoch: 2 epochs, the second of one step
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert [row["step"] for row in result.step_rows] == [1, 2, 3, 4, 5]
    assert set(result.step_rows[0]) == {"step", "train_loss", "train_acc", "grad_first", "grad_last"}
    assert all(row["grad_first"] > 0 and 0 <= row["train_acc"] <= 1 for row in result.step_rows)


def test_recorder_reads_the_device_once_per_flush_and_handles_a_model_without_convs():
    model = create_model("mnist_b")
    recorder = StepRecorder(model)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    for step in (1, 2):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        recorder.record(step, loss, logits, y)
    rows = recorder.flush()
    assert [r["step"] for r in rows] == [1, 2] and set(rows[0]) == {"step", "train_loss", "train_acc"}
    assert recorder.flush() == []
