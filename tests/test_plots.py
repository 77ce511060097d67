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
