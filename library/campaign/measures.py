"""Reading an experiment's answer out of its MLflow run: a `Measure` (a value, its interval where there is one,
and how to print it) from the run's metrics or the tables it logged. No Ray: the report notebook uses this."""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import Callable

import mlflow
import pandas as pd

from ..stats import wilson_interval


@dataclass(frozen=True)
class Measure:
    value: float | None  # None: the run does not hold it
    low: float | None = None
    high: float | None = None
    unit: str = ""  # "%" prints value × 100
    detail: str = ""  # printed after the value (what else the number stands for)

    @property
    def text(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "missing"
        scale, suffix = (100, self.unit) if self.unit in ("%", " pts") else (1, self.unit)
        text = f"{self.value * scale:.4g}{suffix}" if abs(self.value * scale) < 1e4 else f"{self.value:.3e}"
        if self.low is not None and self.high is not None:
            text += f" [{self.low * scale:.3g}, {self.high * scale:.3g}]"
        return f"{text} ({self.detail})" if self.detail else text


Reader = Callable[[mlflow.entities.Run], Measure]
MISSING = Measure(None)


@functools.lru_cache(maxsize=256)
def _artifact_text(run_id: str, path: str) -> str | None:
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")
    except Exception:  # noqa: BLE001 (absent artifact: the measure is missing, the report says so)
        return None


def table(run: mlflow.entities.Run, path: str) -> pd.DataFrame | None:
    """A CSV the run logged (`mlflow.log_text(df.to_csv())`), or None."""
    text = _artifact_text(run.info.run_id, path)
    return pd.read_csv(io.StringIO(text)) if text else None


def metric(name: str, unit: str = "", n_metric: str = "") -> Reader:
    """The run's metric `name`; with `n_metric` (the number of images it is a proportion of), its interval."""
    def read(run: mlflow.entities.Run) -> Measure:
        value = run.data.metrics.get(name)
        n = run.data.metrics.get(n_metric) or _param_int(run, n_metric)
        if value is None or not n:
            return Measure(value, unit=unit)
        return Measure(value, *wilson_interval(value * n, n), unit=unit)

    return read


def _param_int(run: mlflow.entities.Run, name: str) -> int:
    try:
        return int(run.data.params.get(name, 0))
    except ValueError:
        return 0


def from_table(path: str, column: str, where: dict | None = None, how: str = "first", unit: str = "",
               n_column: str = "") -> Reader:
    """A value from a logged CSV: `column` of the rows matching `where`, reduced by `how` (first, min, max,
    mean); with `n_column`, the Wilson interval of a proportion over that many images."""
    def read(run: mlflow.entities.Run) -> Measure:
        rows = table(run, path)
        if rows is None:
            return MISSING
        for key, value in (where or {}).items():
            rows = rows[rows[key].astype(str) == str(value)]
        if rows.empty or column not in rows:
            return MISSING
        value = float(rows[column].iloc[0] if how == "first" else getattr(rows[column], how)())
        if n_column and n_column in rows and how == "first":
            n = float(rows[n_column].iloc[0])
            return Measure(value, *wilson_interval(value * n, n), unit=unit)
        return Measure(value, unit=unit)

    return read
