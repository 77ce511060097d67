"""The whole catalog as one command: every experiment ID (A1…F1, library/campaign/catalog.py) run by the job
that answers it, in dependency order, several at once on one Ray cluster, each held against the seeds' bar in
one campaign report (an MLflow run with report.csv, report.html and a table).

    python jobs/campaign.py --profile=smoke              # every ID on tiny settings: minutes on a CPU
    python jobs/campaign.py                              # --profile=auto: gpu with a GPU in the cluster, else cpu
    python jobs/campaign.py --ids=[A1,A4,D5]             # these IDs and what they need (D5: the MNIST models)
    ray job submit --working-dir . -- python jobs/campaign.py --profile=gpu   # on a cluster

Run the same command again after an interruption: finished experiments are skipped (their runs unchanged),
sweeps and studies resume, nothing evaluates a test set twice. `--name` starts another campaign.
"""
from __future__ import annotations

import gc
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

from library.campaign.schedule import CampaignOptions, run_campaign  # noqa: E402
from library.cli import run_job  # noqa: E402

JobConfig = CampaignOptions  # as every job names its config
SMOKE = {"profile": "smoke", "name": "campaign_smoke"}


def main(cfg: JobConfig) -> dict:
    return run_campaign(cfg)


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
