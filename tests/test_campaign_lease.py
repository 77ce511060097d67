"""One driver per campaign: a second driver is refused while the first lives, naming it; a killed driver's
campaign is taken over at once on its machine, and a silent one's from elsewhere once its heartbeat is stale."""
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from conftest import REPO
from library.campaign import lease
from library.campaign.lease import DRIVER_TAG, HEARTBEAT_TAG, CampaignBusyError, acquire


def _campaign_run(store: str) -> str:
    mlflow.set_tracking_uri(store)  # an earlier test of the session may have set another
    with mlflow.start_run(run_name="campaign (smoke)") as run:
        return run.info.run_id


def test_a_second_driver_is_refused_while_the_first_lives_and_takes_over_once_it_is_killed(mlflow_store):
    run_id = _campaign_run(mlflow_store)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from library.campaign.lease import acquire; acquire('{run_id}'); print('held', "
         "flush=True); import time; time.sleep(120)"], cwd=REPO, env=os.environ | {"MLFLOW_TRACKING_URI": mlflow_store},
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CampaignBusyError, match=f"another driver runs this campaign .*:{holder.pid}:.*--name"):
            acquire(run_id)
        holder.send_signal(signal.SIGKILL)  # no release: its process is gone, which this machine can tell, even
        time.sleep(0.5)  # before its parent has collected it
        start = time.monotonic()
        held = acquire(run_id)
        assert time.monotonic() - start < 5
        held.release()
        assert DRIVER_TAG not in mlflow.MlflowClient().get_run(run_id).data.tags
    finally:
        holder.kill()


def test_a_driver_on_another_machine_holds_the_campaign_while_its_heartbeat_is_fresh(mlflow_store):
    run_id, client = _campaign_run(mlflow_store), mlflow.MlflowClient()
    client.set_tag(run_id, DRIVER_TAG, "another-host:4242:987654")
    client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time() - 30:.0f}")
    with pytest.raises(CampaignBusyError, match="another-host:4242:987654, last heard from 3[0-9] s ago"):
        acquire(run_id)
    client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time() - lease.STALE_S - 1:.0f}")  # silent too long: gone
    assert acquire(run_id).driver == lease.this_driver()
