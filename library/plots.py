"""Figures that runs log: training curves and first-layer filter grids (E3).

Built on `matplotlib.figure.Figure` directly rather than pyplot: no global figure registry, no GUI backend,
safe in Ray workers and threads.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

FILTER_EPS = 1e-4


def normalize_filters(weight: torch.Tensor, eps: float = FILTER_EPS) -> torch.Tensor:
    """E3's display normalisation, per filter t: H'_t = H_t / (2(‖H_t‖∞ + ε)) + 1/2, which maps into [0, 1]
    with zero at mid-grey and keeps the sign and relative size of each filter's weights."""
    w = weight.detach().float().cpu()
    peak = w.abs().flatten(1).amax(dim=1).view(-1, *([1] * (w.ndim - 1)))
    return w / (2 * (peak + eps)) + 0.5


def filter_grid(weight: torch.Tensor, ncols: int = 8, pad: int = 1) -> np.ndarray:
    """The K×C×h×w filters of a first conv layer as one H×W×3 RGB array (grey for one input channel),
    normalised by `normalize_filters`, `ncols` filters per row, separated by `pad` white pixels."""
    if weight.ndim != 4 or weight.shape[1] not in (1, 3):
        raise ValueError(f"expected K×1×h×w or K×3×h×w filters, got {tuple(weight.shape)}")
    # torchvision's make_grid layout, built here: importing torchvision brings torch._dynamo, ~2.5 CPU-s of a
    # study's driver, which trains nothing itself and would import it for this alone
    filters = normalize_filters(weight).expand(-1, 3, -1, -1)
    k, _, h, w = filters.shape
    cols = min(ncols, k)
    rows = -(-k // cols)
    grid = torch.ones(rows * (h + pad) + pad, cols * (w + pad) + pad, 3)
    for i, f in enumerate(filters):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[top:top + h, left:left + w] = f.permute(1, 2, 0)
    return grid.numpy()


def filter_grid_figure(weight: torch.Tensor, title: str = "", ncols: int = 8) -> Figure:
    k, c, h, w = weight.shape
    fig = Figure(figsize=(1.0 * ncols, 1.0 * -(-k // ncols) + 0.6))
    ax = fig.add_subplot()
    ax.imshow(filter_grid(weight, ncols), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or f"first-layer filters ({k} × {c}×{h}×{w}), H/(2(‖H‖∞+ε)) + 1/2")
    fig.tight_layout()
    return fig


def training_curves_figure(history: Sequence[Mapping[str, float]], title: str = "") -> Figure:
    """Loss and accuracy per epoch, training and validation, side by side."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    for i, (metric, label) in enumerate((("loss", "cross-entropy loss"), ("acc", "accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for split in ("train", "val"):
            values = [h.get(f"{split}_{metric}", np.nan) for h in history]
            if np.isnan(np.asarray(values, dtype=float)).all():
                continue  # a final fit has no validation split: no line, and no legend entry for one
            ax.plot(epochs, values, marker="o", markersize=3, label="validation" if split == "val" else "training")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(counts: np.ndarray, classes: Sequence[str], title: str = "") -> Figure:
    """Counts[true, predicted] as a heat map with the counts written in (row-normalised colours)."""
    k = len(classes)
    side = min(14, 2 + 0.35 * k)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    rates = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_xticks(range(k), classes, rotation=90, fontsize=7 if k > 12 else 9)
    ax.set_yticks(range(k), classes, fontsize=7 if k > 12 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 40:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6 if k > 12 else 9,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix (test set)")
    fig.tight_layout()
    return fig


def image_gallery_figure(paths: Sequence[str], captions: Sequence[str], title: str = "", ncols: int = 4) -> Figure:
    """Photos from files in a grid, each with a caption under it."""
    from PIL import Image

    n = max(1, len(paths))
    rows = -(-n // ncols)
    fig = Figure(figsize=(3 * ncols, 3.2 * rows + 0.5))
    for i, (path, caption) in enumerate(zip(paths, captions)):
        ax = fig.add_subplot(rows, ncols, i + 1)
        with Image.open(path) as image:
            ax.imshow(image.convert("RGB"))
        ax.set_axis_off()
        ax.set_title(caption, fontsize=8)
    if not paths:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no such images", ha="center", va="center")
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def top_k_figure(rows: Sequence[dict], title: str = "") -> Figure:
    """C1: per image (a row), the top-k probabilities and logits as horizontal bars for each model (`rows`:
    {"image": path, "model": label, "classes": [...], "probabilities": [...], "logits": [...]})."""
    from PIL import Image

    images = list(dict.fromkeys(r["image"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    cols = 1 + 2 * len(models)
    fig = Figure(figsize=(3.6 * cols, 2.8 * len(images) + 0.6))
    for i, path in enumerate(images):
        ax = fig.add_subplot(len(images), cols, i * cols + 1)
        with Image.open(path) as image:
            ax.imshow(image.convert("RGB"))
        ax.set_axis_off()
        ax.set_title(path.rsplit("/", 1)[-1], fontsize=9)
        for j, model in enumerate(models):
            row = next(r for r in rows if r["image"] == path and r["model"] == model)
            for k, (key, label) in enumerate((("probabilities", "probability"), ("logits", "logit"))):
                ax = fig.add_subplot(len(images), cols, i * cols + 2 + 2 * j + k)
                ax.barh(range(len(row["classes"]))[::-1], row[key], color="C0" if k == 0 else "C1")
                ax.set_yticks(range(len(row["classes"]))[::-1], [c[:22] for c in row["classes"]], fontsize=7)
                ax.set_title(f"{model}: {label}", fontsize=9)
                if k == 0:
                    ax.set_xlim(0, 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def map_grid_figure(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], title: str = "",
                    cmap: str = "viridis") -> Figure:
    """Rows of labelled images (H×W maps in [0, 1] shown with `cmap`, or H×W×3 RGB), e.g. C2's early, middle and
    late feature maps, or E1/E2's input, map and blend per image."""
    cols = max(len(items) for _, items in rows)
    # constrained layout keeps the suptitle clear of the first row, where tight_layout overlaps them
    fig = Figure(figsize=(2.4 * cols + 0.8, 2.5 * len(rows) + 0.5), layout="constrained")
    for i, (row_label, items) in enumerate(rows):
        for j, (label, image) in enumerate(items):
            ax = fig.add_subplot(len(rows), cols, i * cols + j + 1)
            ax.imshow(image, cmap=cmap if np.ndim(image) == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=7)
            if j == 0:
                ax.set_ylabel(row_label)
    if title:
        fig.suptitle(title)
    return fig
