"""A study's comparison rebuilt from MLflow alone: per-trial and per-variant tables, curves as mean and spread.

`library.search.study.conclude_study` logs these into the study's parent run and `notebooks/` can call the same
functions on any finished study.
"""
from __future__ import annotations

import math
from typing import Sequence

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .sweep_report import child_runs
from ..tracking import SPACE_PARAM_PREFIX

FINAL_METRICS = ("test_acc", "test_loss", "train_acc", "train_loss", "val_acc", "val_loss", "images_per_s")


def _ordered(frame: pd.DataFrame, order: Sequence[str] | None) -> pd.DataFrame:
    if not order:
        return frame
    rank = {name: i for i, name in enumerate(order)}
    return frame.sort_values(["variant", "seed"], key=lambda c: c.map(rank) if c.name == "variant" else c)


def trial_table(parent_run_id: str, order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per trial: variant, seed, the final metrics (images_per_s: the last epoch's), epochs run, training time (s, the sum of the epochs'
    wall times), run id, trial id and status."""
    runs = child_runs(parent_run_id)
    if runs.empty:
        return pd.DataFrame()
    client = mlflow.MlflowClient()
    rows = []
    for _, run in runs.iterrows():
        epochs = client.get_metric_history(run["run_id"], "epoch_s")
        row = {"variant": run.get(f"params.{SPACE_PARAM_PREFIX}variant"),
               "seed": int(run.get(f"params.{SPACE_PARAM_PREFIX}seed")),
               **{m: run.get(f"metrics.{m}", math.nan) for m in FINAL_METRICS},
               "epochs": len(epochs), "train_s": sum(m.value for m in epochs),
               "run_id": run["run_id"], "trial_id": run.get("tags.trial_id"), "status": run["status"]}
        rows.append(row)
    return _ordered(pd.DataFrame(rows), order).reset_index(drop=True)


def summary(table: pd.DataFrame, columns: Sequence[str] = ("test_acc", "train_s"),
            order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per variant (index): n, then mean, std, min and max of each of `columns` over its seeds."""
    grouped = table.groupby("variant", sort=False)
    out = pd.DataFrame({"n": grouped.size()})
    for column in columns:
        stats = grouped[column].agg(["mean", "std", "min", "max"])
        out[[f"{column}_{s}" for s in stats.columns]] = stats.values
    if order:
        out = out.reindex([v for v in order if v in out.index])
    return out


def metric_curves(parent_run_id: str, metric: str, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every trial's history of `metric` in long form: variant, seed, step, value."""
    table = trial_table(parent_run_id) if table is None else table
    client = mlflow.MlflowClient()
    frames = []
    for _, trial in table.iterrows():
        history = client.get_metric_history(trial["run_id"], metric)
        if history:
            frames.append(pd.DataFrame({"variant": trial["variant"], "seed": trial["seed"],
                                        "step": [m.step for m in history], "value": [m.value for m in history]}))
    if not frames:
        return pd.DataFrame(columns=["variant", "seed", "step", "value"])
    return pd.concat(frames).drop_duplicates(["variant", "seed", "step"], keep="last").sort_values("step")


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)  # shorter windows at the start: no lag, no gap
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def mean_spread(curves: pd.DataFrame, smooth: int = 1) -> dict[str, pd.DataFrame]:
    """Per variant, per step: mean, min and max over seeds (each seed's curve first smoothed by a trailing
    moving average of `smooth` steps)."""
    out = {}
    for variant, group in curves.groupby("variant", sort=False):
        wide = group.pivot(index="step", columns="seed", values="value").sort_index()
        wide = wide.apply(lambda c: pd.Series(_smooth(c.to_numpy(dtype=float), smooth), index=c.index))
        out[variant] = pd.DataFrame({"mean": wide.mean(axis=1), "min": wide.min(axis=1), "max": wide.max(axis=1),
                                     "n": wide.count(axis=1)})
    return out


def mean_spread_figure(curves: pd.DataFrame, ylabel: str, xlabel: str, title: str = "", smooth: int = 1,
                       log_y: bool = False, order: Sequence[str] | None = None, ax=None) -> Figure:
    """One line per variant (the mean over seeds) with a band from the lowest to the highest seed."""
    fig = ax.figure if ax is not None else Figure(figsize=(8, 5))
    ax = ax or fig.add_subplot()
    stats = mean_spread(curves, smooth)
    for variant in [v for v in (order or stats) if v in stats]:
        s = stats[variant]
        line, = ax.plot(s.index, s["mean"], label=f"{variant} (n={int(s['n'].max())})",
                        marker="o" if len(s) <= 20 else None, markersize=4)  # a one-epoch run is one point
        if s["n"].max() > 1:
            ax.fill_between(s.index, s["min"], s["max"], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    spread = "line: mean over seeds, band: min–max" + (f"; moving average of {smooth}" if smooth > 1 else "")
    ax.set_title(f"{title}\n{spread}" if title else spread, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    if ax is fig.axes[0]:
        fig.tight_layout()
    return fig


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A pipe table (for run descriptions and notes) without the optional `tabulate` dependency."""
    frame = frame.reset_index() if frame.index.name else frame
    def cell(v):
        return f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
