"""The MLflow UI as a user meets it, in a real browser: a server on loopback over a smoke sweep's store, headless
Debian Chromium driven by Playwright. The experiment page lists the sweep's parent run, ⊞ reveals its trials by
name, and the parent's leaderboard and a figure render from its artifacts. Skips where Chromium is absent
(`.ci/run` installs it)."""
import shutil
from pathlib import Path

import mlflow
import pytest

from conftest import SMOKE_SWEEP, free_port, start_mlflow_server, stop_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as root, in a sandbox with no network: the flags this machine's notes give for a headless Chromium
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")]


@pytest.fixture(scope="module")
def ui(tune_smoke):
    """`mlflow ui` as the README starts it, over the smoke sweep's store; its base URL."""
    store, _ = tune_smoke
    port = free_port()
    server = start_mlflow_server(store, port, command="ui")
    yield f"http://127.0.0.1:{port}", store
    stop_server(server)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def test_the_experiment_page_lists_the_sweep_its_trials_and_renders_the_comparison(ui, browser, tmp_path):
    base, store = ui
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name(SMOKE_SWEEP)
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="tags.sweep_kind = 'sweep'",
                              order_by=["attributes.start_time ASC"])
    parent = runs.iloc[0]
    trials = mlflow.search_runs([experiment.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{base}/#/experiments?workflowType=machine_learning")  # the README's link
    page.get_by_text(SMOKE_SWEEP, exact=True).first.wait_for(timeout=60_000)
    # the Model training view (MLflow 3 opens on GenAI traces unless told: the README's link says so)
    page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")
    row = page.locator("[role=gridcell]", has=page.locator(f"a[href$='/runs/{parent.run_id}']")).first
    row.wait_for(timeout=60_000)
    row.locator("button").first.click()  # ⊞: the trials under the parent
    for name in trials["tags.mlflow.runName"]:
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "runs.png"))

    page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.run_id}"
              "?workflowType=machine_learning")
    page.get_by_text("Reading it in the MLflow UI").first.wait_for(timeout=60_000)  # the description says what to click

    page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/{parent.run_id}/artifacts"
              "?workflowType=machine_learning")
    page.get_by_text("leaderboard.csv", exact=True).first.click(timeout=60_000)
    page.get_by_text("val_acc").first.wait_for(timeout=30_000)  # the table renders
    page.get_by_text("learning_curves.png", exact=True).first.click()
    # the figure itself, loaded: an 800-pixel-wide PNG (the page's own icons are small SVGs)
    page.wait_for_function("() => [...document.images].some(img => img.complete && img.naturalWidth >= 400)",
                           timeout=30_000)
    page.screenshot(path=str(tmp_path / "figure.png"))
    page.close()
