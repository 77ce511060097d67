"""A sweep's comparison rebuilt from MLflow alone: the leaderboard, learning curves, parameter importances.

The tune job logs these into the parent run when the sweep ends, and `notebooks/sweep_report.ipynb` calls the
same functions, so the figures in the run and in the notebook are the same figures.
"""
from __future__ import annotations

import ast
import math
import textwrap
from typing import Any, Sequence

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..tracking import SPACE_PARAM_PREFIX
from .outcome import ORPHAN_TAG


def child_runs(parent_run_id: str) -> pd.DataFrame:
    """The trial runs under a sweep's parent run, as `mlflow.search_runs` returns them, without orphaned runs
    (trials a killed driver started that Tune's saved state does not have: `trial_runs.MLflowTrialRuns`)."""
    parent = mlflow.get_run(parent_run_id)
    runs = mlflow.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              output_format="pandas")
    column = f"tags.{ORPHAN_TAG}"
    return runs[runs[column] != "true"].reset_index(drop=True) if column in runs else runs


def flat_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A space's entries by the names trials record them under: a family space's `model` becomes the choice of
    family, and each family's entries (with the shared ones) `<family>.<name>`."""
    families = spec.get("model")
    if not isinstance(families, dict):
        return dict(spec)
    shared = {k: v for k, v in spec.items() if k != "model"}
    flat: dict[str, Any] = {"model": list(families)}
    for family, own in families.items():
        flat |= {f"{family}.{name}": value for name, value in {**own, **shared}.items()}
    return flat


def space_spec(parent_run_id: str) -> dict[str, Any]:
    """The search space as the parent run recorded it (`space.<name>` params), flattened (`flat_spec`)."""
    params = mlflow.get_run(parent_run_id).data.params
    return flat_spec({k[len("space."):]: ast.literal_eval(v) for k, v in params.items() if k.startswith("space.")})


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def leaderboard(parent_run_id: str, metric: str = "val_acc") -> pd.DataFrame:
    """One row per trial, best last `metric` (the sweep's: val_acc or val_robust_acc) first: the trial's
    searched values, its final metrics, how many epochs it ran (fewer than budgeted when ASHA stopped it) and
    its run status."""
    runs = child_runs(parent_run_id)
    client = mlflow.MlflowClient()
    rows = []
    for _, run in runs.iterrows():
        history = client.get_metric_history(run["run_id"], "val_acc")
        row = {"trial": run.get("tags.mlflow.runName"), "run_id": run["run_id"], "status": run["status"],
               "epochs_run": max((m.step for m in history), default=0),
               "val_acc": run.get("metrics.val_acc", math.nan), "val_loss": run.get("metrics.val_loss", math.nan),
               "train_loss": run.get("metrics.train_loss", math.nan)}
        for extra in ("val_robust_acc", "val_acc_at_time", "train_s"):  # what some sweeps report
            if f"metrics.{extra}" in runs.columns:
                row[extra] = run.get(f"metrics.{extra}", math.nan)
        for column in runs.columns:
            if column.startswith(f"params.{SPACE_PARAM_PREFIX}"):
                row[column[len(f"params.{SPACE_PARAM_PREFIX}"):]] = _value(run[column]) if isinstance(run[column], str) else run[column]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values(metric, ascending=False, na_position="last").reset_index(drop=True)


def learning_curves(parent_run_id: str, metric: str = "val_acc") -> dict[str, pd.Series]:
    """Per trial (run name), `metric` indexed by epoch."""
    client = mlflow.MlflowClient()
    curves = {}
    for _, run in child_runs(parent_run_id).iterrows():
        history = sorted(client.get_metric_history(run["run_id"], metric), key=lambda m: m.step)
        if history:
            curves[run["tags.mlflow.runName"]] = pd.Series([m.value for m in history], index=[m.step for m in history])
    return curves


def importances(table: pd.DataFrame, spec: dict[str, Any], metric: str = "val_acc") -> pd.Series:
    """How much each searched parameter mattered to `metric` (Optuna's PED-ANOVA on the finished trials,
    whatever searcher produced them). Empty when there are too few trials to say."""
    import optuna

    from .space import dimension, optuna_distributions

    dims = [dimension(name, value) for name, value in spec.items() if name in _varied(table, [name])]
    dists = optuna_distributions(dims)
    done = table.dropna(subset=[metric])
    if len(done) < 4 or not dists:
        return pd.Series(dtype=float)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, row in done.iterrows():
        params = {n: row[n].item() if hasattr(row[n], "item") else row[n] for n in dists if not pd.isna(row[n])}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={n: dists[n] for n in params},
                                                  value=float(row[metric])))  # a family's parameters only
    try:
        scores = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError):
        return pd.Series(dtype=float)
    return pd.Series(scores, dtype=float).sort_values(ascending=False)


def importance_figure(scores: pd.Series, metric: str = "val_acc") -> Figure:
    fig = Figure(figsize=(6, 0.4 * max(3, len(scores)) + 1))
    ax = fig.add_subplot()
    if scores.empty:
        ax.text(0.5, 0.5, "too few finished trials to estimate importances", ha="center", va="center")
        ax.set_axis_off()
    else:
        ax.barh(scores.index[::-1], scores.values[::-1])
        ax.set_xlabel(f"importance for {metric} (PED-ANOVA)")
    fig.tight_layout()
    return fig


def curves_figure(curves: dict[str, pd.Series], metric: str = "val_acc", highlight: str | None = None) -> Figure:
    """Every trial's curve, the best one (or `highlight`) drawn bold."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    best = highlight or (max(curves, key=lambda k: curves[k].iloc[-1]) if curves else None)
    for name, series in curves.items():
        bold = name == best
        ax.plot(series.index, series.values, marker="o" if bold or len(series) == 1 else None,  # one epoch: a dot
                linewidth=2.5 if bold else 1, alpha=1 if bold else 0.45, zorder=3 if bold else 1,
                label=textwrap.fill(f"best: {name}", 60) if bold else None)  # run names run long: wrapped
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of {len(curves)} trials (ASHA-stopped trials end early)")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if best:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_searched(spec: dict[str, Any]) -> list[str]:
    """The parameters a space searches on a log scale: `(low, high, "log")` entries."""
    return [name for name, value in spec.items() if isinstance(value, (list, tuple)) and len(value) == 3
            and value[2] == "log"]


def _tick(value) -> str:
    return f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)


def _varied(table: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """The parameters that took more than one value among the trials (the others show nothing to compare)."""
    return [n for n in names if n in table.columns and table[n].dropna().nunique() > 1]


def accuracy_vs_parameter_figure(table: pd.DataFrame, names: list[str], metric: str = "val_acc",
                                 log_names: Sequence[str] = ()) -> Figure:
    """`metric` against each searched parameter: numbers on a numeric axis (log for the parameters in
    `log_names`, searched on a log scale), choices (and whole numbers taking few values) as categories; tick
    labels rounded to 4 digits. Parameters that took a single value are left out."""
    names = _varied(table, names)
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4 * cols, 3 * rows))
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        valid = table[[name, metric]].dropna()  # a family's parameter: only its own trials have a value
        x, y = valid[name], valid[metric]
        whole = pd.api.types.is_numeric_dtype(x) and bool((x == x.round()).all())  # a choice read back as floats
        if pd.api.types.is_numeric_dtype(x) and (x.nunique() > 4 or not whole):
            ax.scatter(x, y, s=14)
            if name in log_names and (x > 0).all():
                ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.4g}"))
        else:
            x = x.astype(int) if whole else x
            order = sorted(set(x), key=lambda v: (str(type(v)), v))
            ax.scatter([order.index(v) for v in x], y, s=14)
            ax.set_xticks(range(len(order)), [_tick(v) for v in order])
        ax.set_title(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

