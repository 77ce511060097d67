"""Linear probes: multinomial logistic regression on frozen features, its L2 strength chosen on a validation split.

The objective is scikit-learn's `LogisticRegression(C=C)` (multinomial, L2 on the weights, not the bias):
C · Σᵢ CE(xᵢ) + ½‖W‖², minimised to convergence with full-batch L-BFGS in torch (convex, so the optimum is
the same; it runs on the GPU when there is one). The seed's metric is the mean per-class accuracy. A probe's
result is remembered beside the features it was fitted on (`probe_key`), so a re-run of a probe job costs
nothing but reading it back.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime import pick_device

C_GRID = tuple(float(c) for c in np.logspace(-1, 6, 15))  # 0.1 … 10⁶, half a decade apart (unit-norm features
# need little regularisation: their logits are small unless the weights are large)


@dataclass
class LinearModel:
    weight: torch.Tensor  # K×D
    bias: torch.Tensor  # K

    def logits(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(features, dtype=torch.float32, device=self.weight.device)
        return x @ self.weight.T + self.bias

    def predict(self, features) -> np.ndarray:
        return self.logits(features).argmax(1).cpu().numpy()


def fit_logistic(features: np.ndarray, labels: np.ndarray, num_classes: int, c: float, max_iter: int = 500,
                 device: str = "auto") -> LinearModel:
    """argmin over (W, b) of C·Σ CE + ½‖W‖² (scikit-learn's scaling), by L-BFGS with a strong-Wolfe line search.
    Internally divided by C·N, which leaves the minimiser unchanged and keeps the gradients well scaled."""
    target = pick_device(device)
    x = torch.as_tensor(features, dtype=torch.float32, device=target)
    y = torch.as_tensor(labels, dtype=torch.long, device=target)
    weight = torch.zeros(num_classes, x.shape[1], device=target, requires_grad=True)
    bias = torch.zeros(num_classes, device=target, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-7,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
    penalty = 1 / (2 * c * len(y))

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + penalty * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearModel(weight.detach(), bias.detach())


def per_class_accuracy(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class (NaN for a class absent from `labels`)."""
    out = np.full(num_classes, np.nan)
    for k in range(num_classes):
        mask = labels == k
        if mask.any():
            out[k] = float((predicted[mask] == k).mean())
    return out


def mean_per_class_accuracy(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    return float(np.nanmean(per_class_accuracy(labels, predicted, num_classes)))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]"""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): `val_fraction` of each class (at least one image of any class with two or more)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        n_val = min(len(members) - 1, max(1, round(val_fraction * len(members)))) if len(members) > 1 else 0
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


@dataclass
class ProbeResult:
    c: float  # the chosen C (inverse L2 strength)
    val_scores: dict[float, float]  # C -> validation mean per-class accuracy
    mean_per_class_acc: float  # on the test set
    acc: float  # overall test accuracy
    per_class_acc: np.ndarray
    confusion: np.ndarray
    test_predictions: np.ndarray
    classes: tuple[str, ...] = field(default_factory=tuple)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 classes: tuple[str, ...], c_grid: tuple[float, ...] = C_GRID, val_fraction: float = 0.2,
                 seed: int = 0, device: str = "auto") -> ProbeResult:
    """Choose C on a stratified validation split of the training features (mean per-class accuracy, the larger
    C on ties: less regularisation), refit on all training features, evaluate once on the test features."""
    k = len(classes)
    fit_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    scores = {}
    for c in c_grid:
        model = fit_logistic(train_x[fit_idx], train_y[fit_idx], k, c, device=device)
        scores[c] = mean_per_class_accuracy(train_y[val_idx], model.predict(train_x[val_idx]), k)
    best = max(c_grid, key=lambda c: (scores[c], c))
    final = fit_logistic(train_x, train_y, k, best, device=device)
    predicted = final.predict(test_x)
    return ProbeResult(best, scores, mean_per_class_accuracy(test_y, predicted, k), float((predicted == test_y).mean()),
                       per_class_accuracy(test_y, predicted, k), confusion_matrix(test_y, predicted, k), predicted,
                       tuple(classes))


PROBE_VERSION = 1  # part of every remembered probe's key: raise it when the objective or the choice of C changes


def probe_key(train_features: str, test_features: str, c_grid: tuple[float, ...], val_fraction: float,
              seed: int) -> str:
    """What a probe's result follows from: the two feature-cache keys and the probe's own settings."""
    identity = {"train": train_features, "test": test_features, "c_grid": [float(c) for c in c_grid],
                "val_fraction": val_fraction, "seed": seed, "version": PROBE_VERSION}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def save_result(path: Path, result: ProbeResult) -> None:
    """The result as one .npz of plain arrays (no pickle), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scalars = {"c": result.c, "mean_per_class_acc": result.mean_per_class_acc, "acc": result.acc}
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        np.savez(f, scalars=np.array(json.dumps(scalars)), val_c=np.array(list(result.val_scores)),
                 val_score=np.array(list(result.val_scores.values())), per_class_acc=result.per_class_acc,
                 confusion=result.confusion, test_predictions=result.test_predictions,
                 classes=np.array(result.classes, dtype=str))
    os.replace(f.name, path)


def load_result(path: Path) -> ProbeResult | None:
    """A remembered result, or None when there is none (or it cannot be read: the probe then runs again)."""
    try:
        with np.load(path) as saved:
            scalars = json.loads(str(saved["scalars"]))
            return ProbeResult(scalars["c"], dict(zip(saved["val_c"].tolist(), saved["val_score"].tolist())),
                               scalars["mean_per_class_acc"], scalars["acc"], saved["per_class_acc"],
                               saved["confusion"], saved["test_predictions"], tuple(saved["classes"].tolist()))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
