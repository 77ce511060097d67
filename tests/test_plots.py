import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from library.models import create_model, first_conv
from library.plots import filter_grid, filter_grid_figure, normalize_filters, training_curves_figure


def test_filter_normalisation_is_e3s_formula():
    w = torch.randn(32, 3, 7, 7)
    out = normalize_filters(w)
    for t in (0, 17):
        h = w[t]
        assert torch.allclose(out[t], h / (2 * (h.abs().max() + 1e-4)) + 0.5)
    assert out.min() >= 0 and out.max() <= 1
    # each filter's largest weight lands just inside the range, zero at mid-grey
    peak = (out - 0.5).abs().flatten(1).amax(1)
    assert torch.allclose(peak, torch.full((32,), 0.5), atol=1e-3)
    assert torch.equal(normalize_filters(torch.zeros(2, 3, 3, 3)), torch.full((2, 3, 3, 3), 0.5))


def test_filter_grid_lays_out_every_filter():
    weight = first_conv(create_model("mish_cnn")).weight  # 32 × 3 × 7 × 7
    grid = filter_grid(weight, ncols=8, pad=1)
    assert grid.shape == (4 * 8 + 1, 8 * 8 + 1, 3)  # 4 rows of 8 filters, 1-pixel borders
    assert torch.allclose(torch.from_numpy(grid[1:8, 1:8]).permute(2, 0, 1), normalize_filters(weight)[0])
    assert filter_grid(torch.randn(6, 1, 5, 5), ncols=3).shape == (2 * 6 + 1, 3 * 6 + 1, 3)
    with pytest.raises(ValueError):
        filter_grid(torch.randn(4, 8, 3, 3))


@pytest.mark.parametrize("k,c,ncols,pad", [(32, 3, 8, 1), (6, 1, 3, 1), (5, 3, 8, 2), (7, 1, 4, 0)])
def test_filter_grid_is_torchvisions_make_grid(k, c, ncols, pad):
    """The same pixels as torchvision's make_grid, which it replaces so that a driver need not import torchvision."""
    from torchvision.utils import make_grid

    weight = torch.randn(k, c, 5, 5)
    reference = make_grid(normalize_filters(weight), nrow=ncols, padding=pad, pad_value=1.0).permute(1, 2, 0)
    assert np.array_equal(filter_grid(weight, ncols, pad), reference.numpy())


def test_figures_render():
    weight = torch.randn(32, 3, 7, 7)
    fig = filter_grid_figure(weight)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    [image] = fig.axes[0].get_images()  # the grid itself, every filter in it, as filter_grid lays them out
    assert image.get_array().shape == filter_grid(weight).shape
    assert np.allclose(image.get_array(), filter_grid(weight))
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    assert (pixels != pixels[0, 0]).any(axis=-1).mean() > 0.2  # not a blank canvas
    history = [{"epoch": e, "train_loss": 2 / e, "val_loss": 2.1 / e, "train_acc": e / 10, "val_acc": e / 11}
               for e in (1, 2, 3)]
    fig = training_curves_figure(history, "t")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2


def test_figures_are_readable_at_smoke_scale():
    """One-epoch trials, a final fit without validation, a few float-valued learning rates: every figure still
    shows every trial, a legend only for what is drawn, and short tick labels."""
    import pandas as pd

    from conftest import assert_readable
    from library.search import study_report, sweep_report

    one_epoch = [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.2, "val_loss": float("nan"), "val_acc": float("nan")}]
    fig = training_curves_figure(one_epoch, "final fit")
    assert_readable(fig)
    assert all(len(ax.get_lines()) == 1 for ax in fig.axes)  # no validation line, no legend entry for one

    long = "airbench_cnn width1=32 width2=128 width3=256 lr=12 weight_decay=0.011 batch_size=512 epochs=5 [0efd6338]"
    curves = {"a": pd.Series([0.2], index=[1]), long: pd.Series([0.3, 0.35], index=[1, 2]), "c": pd.Series([0.1], index=[1])}
    fig = sweep_report.curves_figure(curves)
    assert_readable(fig)
    assert len(fig.axes[0].get_lines()) == 3

    table = pd.DataFrame({"val_acc": [0.2, 0.3, 0.25], "lr": [0.0012345678, 0.0067891234, 0.0031234567],
                          "batch_size": [512.0, 1024.0, float("nan")], "act": ["relu", "mish", "relu"],
                          "depth": [1, 1, 1]})  # batch_size: a family's choice, read back as floats beside a NaN
    fig = sweep_report.accuracy_vs_parameter_figure(table, ["lr", "batch_size", "act", "depth"], log_names=["lr"])
    assert_readable(fig)
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes) == 3  # depth took one value: nothing to show
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["512", "1024"]

    curves = pd.DataFrame({"variant": ["bn", "bn", "no_bn"], "seed": [0, 1, 0], "step": [1, 1, 1], "value": [2.0, 2.1, 2.3]})
    fig = study_report.mean_spread_figure(curves, "training loss", "epoch")
    assert_readable(fig)
    assert len(fig.axes[0].get_lines()) == 2
