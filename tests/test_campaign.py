"""The whole catalog as one campaign, for real: `jobs/campaign.py --profile=smoke` on local Ray with every job
as its own driver, on small data written in the real formats (one data root: CIFAR-10, MNIST, Pets), a real
MLflow store; then the report (table, CSV, HTML page), a re-run that changes nothing, a campaign killed mid-way
and run again, an expectation that is not met, and the README's table against the catalog."""
import dataclasses
import html.parser
import os
import signal
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from conftest import REPO, campaign, execute_notebook, finish, load_job
from library.campaign import report
from library.campaign.catalog import CATALOG, at_least, markdown_table, select
from library.campaign.runner import SUPERSEDED_TAG, UNIT_TAG, unit_runs
from library.campaign.units import PROFILES, UNITS
from library.cli import parse_job_config
from library.config import ConfigError

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _report(store: Path, parent) -> tuple:
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    table = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/report.json")
    page = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/report.html")
    return table, page


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.embedded, self.rows = 0, 0

    def handle_starttag(self, tag, attrs):
        src = dict(attrs).get("src", "")
        self.embedded += tag == "img" and src.startswith("data:image/png;base64,")
        self.rows += tag == "tr"


def test_a_smoke_campaign_runs_every_catalog_id_and_reports_each(smoke_campaign):
    store, out, parent = smoke_campaign
    table, page = _report(store, parent)
    assert [row["id"] for row in table] == [e.id for e in CATALOG]  # one row per ID, in catalog order
    missing = [(row["id"], row["status"]) for row in table if row["value"] == "missing" or row["status"] != "ran"]
    assert not missing, missing  # every ID ran and its number was found in its run
    client = mlflow.MlflowClient()
    for row in table:  # each row's run exists, finished, and belongs to the unit that answers the ID
        run = client.get_run(row["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags[UNIT_TAG] == row["unit"]
    assert all(row["met"] in ("yes", "no") for row in table if row["expectation"])
    parsed = _Images()
    parsed.feed(page)
    assert parsed.rows == len(CATALOG) + 1
    assert parsed.embedded == sum(1 for e in CATALOG if e.figure)  # every key figure embedded in the page
    assert "campaign done: 23 of 23 jobs ran, 0 failed" in out
    d6 = next(row for row in table if row["id"] == "D6")  # the seed's D6: every "1" attacked toward "8"
    params = client.get_run(d6["run_id"]).data.params
    assert (params["source_class"], params["target_class"], params["targeted"]) == ("1", "8", "True")
    assert out.count("▶ ") == len(UNITS) and out.count("✓ ") == len(UNITS)  # a line as each starts and ends


def test_running_a_finished_campaign_again_changes_nothing(smoke_campaign, campaign_root):
    store, _, parent = smoke_campaign
    client = mlflow.MlflowClient()
    before = {r.info.run_id: r.info.end_time for runs in unit_runs(parent.info.run_id).values() for r in runs}
    out = finish(campaign(store, campaign_root), timeout=300)
    assert out.count("done earlier") == len(UNITS) and "▶ " not in out
    after = {r.info.run_id: r.info.end_time for runs in unit_runs(parent.info.run_id).values() for r in runs}
    assert after == before  # no experiment re-run, no run touched
    assert len(client.search_runs([mlflow.get_experiment_by_name("campaign_smoke").experiment_id])) == 1


def test_an_expectation_that_is_not_met_shows_as_not_met(smoke_campaign):
    store, _, parent = smoke_campaign
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    entries = [dataclasses.replace(e, bar="≥ 101%", check=at_least(1.01)) if e.id == "A5" else e for e in CATALOG]
    table = report.rows(entries, unit_runs(parent.info.run_id), {})
    a5 = table.set_index("id").loc["A5"]
    assert a5["met"] == "no" and a5["expectation"] == "≥ 101%"
    assert report.rows(CATALOG, unit_runs(parent.info.run_id), {}).set_index("id").loc["A5", "met"] == "yes"


@pytest.mark.timeout(900)
def test_a_campaign_killed_mid_way_finishes_on_its_rerun_without_running_anything_twice(tmp_path, campaign_root):
    ids = "--ids=[B1,E3]"  # scratch_layers, then standard (train_cnn, which cannot resume), one at a time
    job = campaign(tmp_path, campaign_root, ids, "--max_parallel=1")
    lines = []
    for line in job.stdout:  # kill once the first experiment finished and the second is under way
        lines.append(line)
        if line.count("▶ ") and any("✓ " in seen for seen in lines):
            time.sleep(2)
            os.kill(job.pid, signal.SIGKILL)  # the campaign's driver alone: its units must die with it
            break
    job.wait(timeout=60)
    assert _gone_soon(tmp_path)  # no unit outlives its campaign (the parent-death signal)
    first = next(line for line in lines if "✓ " in line).split("✓ ")[1].split()[0]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,) = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name("campaign_smoke").experiment_id])
    done_before = unit_runs(parent.info.run_id)[first][0]

    out = finish(campaign(tmp_path, campaign_root, ids, "--max_parallel=1"), timeout=600)
    assert f"= {first} " in out and f"▶ {first} " not in out  # the finished experiment was not re-run
    runs = unit_runs(parent.info.run_id)
    assert runs[first][0].info.run_id == done_before.info.run_id
    assert runs[first][0].info.end_time == done_before.info.end_time
    assert {u: len(r) for u, r in runs.items()} == {"scratch_layers": 1, "standard": 1}
    table, _ = _report(tmp_path, parent)
    # B3 too: scratch_layers answers B1 and B3, and the report holds every ID the campaign ran
    assert [row["id"] for row in table] == ["B1", "B3", "E3"] and all(row["status"] == "ran" for row in table)
    client = mlflow.MlflowClient()
    everything = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                    filter_string=f"tags.`campaign.run_id` = '{parent.info.run_id}'")
    assert not [r for r in everything if r.info.status == "RUNNING"]  # nothing left open
    superseded = [r for r in everything if r.data.tags.get(SUPERSEDED_TAG) == "true"]
    assert all(r.info.status == "KILLED" for r in superseded)  # the killed train_cnn run, if it had started one


def _gone_soon(folder, timeout: float = 10) -> bool:
    """No job process started in `folder` (a unit of the killed campaign) is alive within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [p for p in psutil.process_iter(["cmdline", "cwd"]) if p.info.get("cwd") == str(folder)
                 and any("/jobs/" in a for a in p.info["cmdline"] or [])]
        if not alive:
            return True
        time.sleep(0.5)
    return False


def test_every_unit_parses_under_every_profile_with_its_jobs_config():
    """A typo in a profile that CI does not run (cpu, gpu) stops here, not overnight; so does a profile left out
    or a need that names no unit (a placeholder that names no need fails to format below)."""
    for unit in UNITS.values():
        assert set(unit.args) == set(PROFILES) and set(unit.needs) <= set(UNITS), unit.name
        job = load_job(unit.job.removesuffix(".py"))
        for profile in PROFILES:
            argv = unit.argv(profile, "campaign", {n: "0" * 32 for n in unit.needs}, "/photos")
            parse_job_config(job.JobConfig, argv, getattr(job, "SMOKE", None))


def test_a_class_to_class_attack_needs_both_classes_and_a_targeted_sweep():
    job = load_job("eps_sweep")
    assert job.JobConfig(targeted=True, source_class=1, target_class=8).target_shift(10) == 7
    assert job.JobConfig(targeted=True, source_class=9, target_class=2).target_shift(10) == 3
    assert job.JobConfig(targeted=True).target_shift(10) == 1  # toward label + 1
    for wrong in ({"target_class": 8, "source_class": 1}, {"targeted": True, "target_class": 8},
                  {"targeted": True, "source_class": 8, "target_class": 8}):
        with pytest.raises(ConfigError, match="target_class needs targeted=true"):
            job.JobConfig(**wrong)


def test_an_unknown_id_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown experiment ID\(s\) \['A11'\]; valid IDs: A1, A2"):
        select(["A1", "A11"])


def test_a_comparison_with_an_id_not_measured_is_not_met_rather_than_an_error():
    from library.campaign.measures import Measure

    (a3,) = select(["A3"])  # beats A1 and A2: a campaign run with --ids=[A3] alone has neither
    assert a3.met(Measure(0.8), {"A3": Measure(0.8)}) == "no"
    assert a3.met(Measure(0.8), {"A1": Measure(0.5), "A2": Measure(0.6)}) == "yes"


def test_the_readme_experiment_table_is_the_catalogs():
    assert markdown_table() in (REPO / "README.md").read_text(), (
        "regenerate the README's table: python -c 'from library.campaign.catalog import markdown_table; "
        "print(markdown_table())'")


def test_the_notebook_rebuilds_the_report_from_mlflow_alone(smoke_campaign, monkeypatch):
    store, _, parent = smoke_campaign
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("CAMPAIGN_RUN_ID", parent.info.run_id)
    outputs, text = execute_notebook("campaign_report.ipynb")
    assert f"run {parent.info.run_id}" in text
    page = next(o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}) and "<section>" in
                o["data"]["text/html"])
    parsed = _Images()
    parsed.feed(page)
    assert parsed.embedded == sum(1 for e in CATALOG if e.figure)


def test_a_unit_done_with_another_command_runs_again_and_so_does_what_takes_its_model(mlflow_store, tmp_path):
    from library.campaign.runner import COMMAND_TAG, DONE_TAG, Launcher, settle
    from library.campaign.units import Unit

    def units(b_args: tuple[str, ...]) -> dict[str, Unit]:
        return {"a": Unit("a", "train_cnn.py", dict.fromkeys(PROFILES, ("--epochs=2",))),
                "b": Unit("b", "transfer_attack.py", dict.fromkeys(PROFILES, ("--models=[run:{a}]", *b_args)),
                          needs=("a",))}

    launcher = Launcher("campaign-run", "c", "cpu", str(tmp_path), "", tmp_path)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("c.units")

    def record(name: str, command: str) -> None:
        run = client.create_run(experiment, tags={UNIT_TAG: name, DONE_TAG: "true", COMMAND_TAG: command})
        client.set_terminated(run.info.run_id)

    def fetch() -> dict:
        runs = {}
        for run in client.search_runs([experiment], order_by=["attributes.start_time ASC"]):
            if run.data.tags.get(SUPERSEDED_TAG) != "true":
                runs.setdefault(run.data.tags[UNIT_TAG], []).append(run)
        return runs

    now = units(())
    record("a", launcher.command_line(now["a"], {}))
    a_run = fetch()["a"][0].info.run_id
    record("b", launcher.command_line(now["b"], {"a": a_run}))
    assert settle(["a", "b"], fetch(), launcher.command_line, now) == ({"a", "b"}, [])  # nothing changed
    assert settle(["a", "b"], fetch(), launcher.command_line, units(("--steps=5",))) == ({"a"}, ["b"])
    assert list(fetch()) == ["a"]  # b's run superseded: the campaign runs b again
    record("b", launcher.command_line(now["b"], {"a": a_run}))
    record("a", launcher.command_line(now["a"], {}) + " --lr=0.1")  # a was trained again, with other arguments
    runs = fetch()
    assert settle(["a", "b"], runs, launcher.command_line, now) == (set(), ["a", "b"])  # b takes a's new model
    assert fetch() == {}


def test_a_sweep_run_with_another_command_goes_on_in_its_run_and_what_its_job_left_is_retired(
        mlflow_store, tmp_path, monkeypatch):
    """A sweep's job continues its own MLflow run (found by its state's path) whatever run settings changed: the
    campaign keeps that run, the job re-tags it with the command it now runs, and a run the job did not take up
    (the old sweep, when new arguments gave it another path) is retired once the job ends."""
    import json

    from library import tracking
    from library.campaign.runner import COMMAND_TAG, DONE_TAG, Launcher, retire_stale, settle
    from library.campaign.units import Unit

    def sweep(budget: int) -> dict[str, Unit]:
        return {"s": Unit("s", "tune_cnn.py", dict.fromkeys(PROFILES, (f"--time_budget_s={budget}",)),
                          names_field="name", resumes=True)}

    launcher, client = Launcher("campaign-run", "c", "cpu", str(tmp_path), "", tmp_path), mlflow.MlflowClient()
    experiment = client.create_experiment("c.s")
    before, now = launcher.command_line(sweep(60)["s"], {}), launcher.command_line(sweep(600)["s"], {})
    for sweep_id in ("same-path", "old-path"):
        run = client.create_run(experiment, tags={UNIT_TAG: "s", DONE_TAG: "true", COMMAND_TAG: before,
                                                  "sweep_id": sweep_id})
        client.set_terminated(run.info.run_id)

    def fetch() -> list:
        return [r for r in client.search_runs([experiment], order_by=["attributes.start_time ASC"])
                if r.data.tags.get(SUPERSEDED_TAG) != "true"]

    assert settle(["s"], {"s": fetch()}, launcher.command_line, sweep(600)) == (set(), ["s"])
    assert len(fetch()) == 2  # kept: the job goes on in its run
    monkeypatch.setenv(tracking.RUN_TAGS_ENV, json.dumps({COMMAND_TAG: now, SUPERSEDED_TAG: "false"}))
    taken, created = tracking.find_or_create_run("c.s", {"sweep_id": "same-path"})
    assert not created and client.get_run(taken).data.tags[COMMAND_TAG] == now
    retire_stale(sweep(600)["s"], fetch(), now)
    assert [r.info.run_id for r in fetch()] == [taken]
