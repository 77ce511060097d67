"""The campaign report: a row per catalog ID (what, metric, expectation, value with its interval, met?, the run
that holds it), as report.json and report.csv in the campaign's run (a re-run overwrites them), and one
self-contained HTML page with the key figure of each experiment embedded. Built from MLflow alone (no Ray), so notebooks/campaign_report.ipynb
rebuilds it from the store."""
from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Mapping

import mlflow
import pandas as pd

from .catalog import Entry

COLUMNS = ["id", "what", "metric", "expectation", "value", "met", "status", "unit", "run_id"]


def rows(entries: list[Entry], runs: Mapping[str, list], failed: Mapping[str, str]) -> pd.DataFrame:
    """The report's table: every entry measured on its unit's newest run, its bar checked against all."""
    measures = {e.id: e.measure(runs[e.unit][-1] if runs.get(e.unit) else None) for e in entries}
    out = []
    for e in entries:
        run = runs[e.unit][-1] if runs.get(e.unit) else None
        status = failed.get(e.unit) or ("ran" if run is not None else "not run")
        out.append({"id": e.id, "what": e.what, "metric": e.metric, "expectation": e.bar,
                    "value": measures[e.id].text, "met": e.met(measures[e.id], measures) if run is not None else "",
                    "status": status, "unit": e.unit, "run_id": run.info.run_id if run is not None else "",
                    "value_raw": measures[e.id].value, "low": measures[e.id].low, "high": measures[e.id].high})
    return pd.DataFrame(out)


def console_table(table: pd.DataFrame) -> str:
    shown = table[["id", "metric", "value", "expectation", "met", "status"]].copy()
    shown["metric"] = shown["metric"].str.slice(0, 36)
    return shown.to_string(index=False)


def _figure(run_id: str, path: str, tmp: Path) -> str | None:
    """The artifact as a data: URI, or None when the run does not hold it."""
    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(tmp)))
    except Exception:  # noqa: BLE001 (an experiment that logged no figure: the page says so)
        return None
    return "data:image/png;base64," + base64.b64encode(local.read_bytes()).decode()


def html_page(table: pd.DataFrame, entries: list[Entry], title: str) -> str:
    """One page, no external resources: the table, then each experiment's figure."""
    figures = {e.id: e.figure for e in entries}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS[:7])
    body, sections = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for row in table.itertuples():
            css = {"yes": "met", "no": "unmet"}.get(row.met, "")
            cells = [row.id, row.what, row.metric, row.expectation, row.value, row.met, row.status]
            body.append(f'<tr class="{css}">' + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
            if figures.get(row.id) and row.run_id:
                uri = _figure(row.run_id, figures[row.id], Path(tmp))
                content = (f'<img alt="{html.escape(row.id)}" src="{uri}">' if uri
                           else f"<p>(no {html.escape(figures[row.id])} in run {row.run_id})</p>")
                sections.append(f"<section><h2>{html.escape(row.id)}: {html.escape(row.what)}</h2>"
                                f"<p>run {row.run_id}, {html.escape(figures[row.id])}</p>{content}</section>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:left}tr.met td:nth-child(6){background:#d4f4d4}"
             "tr.unmet td:nth-child(6){background:#f8d0d0}img{max-width:100%;border:1px solid #eee}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"{''.join(sections)}</body></html>")


def conclude(parent: str, entries: list[Entry], runs: Mapping[str, list], failed: Mapping[str, str],
             log_dir: Path) -> pd.DataFrame:
    """The report into the campaign's run (each write overwrites: a re-run rebuilds it), with the units' logs."""
    client = mlflow.MlflowClient()
    table = rows(entries, runs, failed)
    shown = table[COLUMNS]
    client.log_text(parent, shown.to_csv(index=False), "report.csv")
    client.log_dict(parent, json.loads(shown.to_json(orient="records")), "report.json")
    title = f"Campaign {client.get_run(parent).info.run_name}"
    client.log_text(parent, html_page(table, entries, title), "report.html")
    met = table["met"].value_counts().to_dict()
    for key, value in {"ids": len(table), "bars_met": met.get("yes", 0), "bars_not_met": met.get("no", 0),
                       "jobs_failed": len(failed)}.items():
        client.log_metric(parent, key, value)
    for log in sorted(log_dir.glob("*.log")):
        client.log_artifact(parent, str(log), "logs")
    return table
