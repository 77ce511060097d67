"""`run_campaign`: the catalog's selected IDs, the units that answer them and what those need, run in dependency
order with at most `max_parallel` at once; a line per unit as it starts and ends; the report at the end."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow

from .. import tracking
from ..config import Config, ConfigError
from ..data.photos import CATALOG_PHOTOS, CORGI, PHOTOS_FOLDER
from ..data.storage import data_root
from ..cluster import cluster_has_gpu, ray_init
from . import report
from .lease import Lease, acquire
from .catalog import CATALOG, Entry, select
from .runner import (PROFILE_TAG, Launcher, last_error, mark_done, retire_stale, settle, supersede,
                     unit_runs)
from .units import UNITS, with_needs

@dataclass(frozen=True)
class CampaignOptions(Config):
    profile: Literal["auto", "smoke", "cpu", "gpu"] = "auto"  # auto: gpu when the cluster has a GPU, else cpu
    ids: tuple[str, ...] = ()  # catalog IDs (A1…F1, see library/campaign/catalog.py); default: all of them
    name: str = "campaign"  # the MLflow experiment of the campaign's run; its units' are <name>.<unit>
    photos: str = ""  # the photos C1/D1/D8 use (peppers.png, a corgi, …); default: <data root>/images
    max_parallel: int = 0  # units running at once; 0: one per CPU of the cluster
    log_dir: str = ""  # each unit's console; default: ./campaign_logs/<name>-<profile>
    ray_address: str = ""  # default: $RAY_ADDRESS, else a new local Ray that every unit joins
    smoke_test: bool = False

    def __post_init__(self):
        super().__post_init__()
        select(self.ids)  # an unknown ID stops here, listing the valid ones
        if self.max_parallel < 0:
            raise ConfigError("max_parallel must be 0 (one per CPU) or more")


@dataclass
class Progress:
    """The campaign's console: a line per unit as it starts and ends, elapsed time and headline number."""

    started: float

    def line(self, text: str) -> None:
        elapsed = time.time() - self.started
        print(f"[{int(elapsed // 60):>3}:{int(elapsed % 60):02d}] {text}", flush=True)


def _ids_of(unit: str, entries: list[Entry]) -> str:
    return ",".join(e.id for e in entries if e.unit == unit)


def _headline(unit: str, entries: list[Entry], runs: list) -> str:
    for entry in entries:
        if entry.unit == unit:
            return f": {entry.id} {entry.metric} {entry.measure(runs[-1]).text}"
    return " (needed by others)"


def _campaign_run(opts: CampaignOptions, profile: str) -> str:
    run_id, created = tracking.find_or_create_run(opts.name, {PROFILE_TAG: profile},
                                                  run_name=f"{opts.name} ({profile})")
    if created:
        tracking.log_config(opts, run_id=run_id)
    return run_id


def _photos_for(units: list[str], photos: str, profile: str, log_dir: Path) -> str:
    """The photo folder the units read ({photos}): checked to hold the photos; for a smoke run without them,
    synthetic stand-ins with their names (a smoke run needs no real photo, as it needs no trained model)."""
    if not any("photos" in UNITS[u].placeholders() for u in units):
        return photos
    missing = [n for n in (*CATALOG_PHOTOS, CORGI) if not (Path(photos) / n).is_file()]
    if missing and profile == "smoke":
        return str(synthetic_photos(log_dir / "photos", (*CATALOG_PHOTOS, CORGI)))
    if missing:
        raise ConfigError(f"the photos {sorted(set(missing))} are not in {photos}: put them there or point --photos "
                          "at a folder that has them (C1, D1, D8 and D9 inspect and attack them)")
    return photos


def synthetic_photos(folder: Path, names: tuple[str, ...]) -> Path:
    """Seeded gradient-and-disc images saved under `names` (PNG or JPEG by suffix)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(dict.fromkeys(names)):
        yy, xx = np.mgrid[0:160, 0:200] / 160.0
        disc = ((yy - 0.5) ** 2 + (xx - 0.6 - 0.1 * k) ** 2 < 0.08)[..., None]
        image = np.where(disc, [200, 40 + 40 * k, 40], np.stack([yy * 255, xx * 120, 255 - yy * 200], -1))
        Image.fromarray(image.clip(0, 255).astype("uint8")).save(folder / name)
    return folder


def run_campaign(opts: CampaignOptions) -> dict:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the report reads many artifacts
    uri = tracking.connect()
    entries = select(opts.ids)
    order = with_needs(list(dict.fromkeys(e.unit for e in entries)))
    photos = opts.photos or str(data_root() / PHOTOS_FOLDER)
    ray_init(opts.ray_address)
    import ray

    profile = opts.profile if opts.profile != "auto" else ("gpu" if cluster_has_gpu() else "cpu")
    log_dir = Path(opts.log_dir or f"campaign_logs/{opts.name}-{profile}").resolve()
    photos = _photos_for(order, photos, profile, log_dir)
    parent = _campaign_run(opts, profile)
    lease = acquire(parent)  # before anything is superseded: another driver's open runs are not interrupted ones
    try:
        launcher = Launcher(parent, opts.name, profile, photos, ray.get_runtime_context().gcs_address, log_dir)
        max_parallel = opts.max_parallel or max(1, int(ray.cluster_resources().get("CPU", 1)))
        progress = Progress(time.time())
        progress.line(f"campaign {opts.name} ({profile}): {len(entries)} IDs in {len(order)} jobs, {max_parallel} "
                      f"at once; logs in {log_dir}; MLflow {uri}, run {parent}")
        done, failed = _run_units(entries, order, launcher, max_parallel, progress, lease)
    finally:
        lease.release()
    runs = unit_runs(parent)  # the report: the IDs run now and those run earlier in this campaign
    reported = [e for e in CATALOG if e in entries or runs.get(e.unit)]
    table = report.conclude(parent, reported, runs, failed, log_dir)
    mlflow.MlflowClient().set_terminated(parent, "FAILED" if failed else "FINISHED")
    print("\n" + report.console_table(table))
    met = table["met"].value_counts().to_dict()
    progress.line(f"campaign done: {len(done)} of {len(order)} jobs ran, {len(failed)} failed; bars met "
                  f"{met.get('yes', 0)}, not met {met.get('no', 0)}; report in run {parent} "
                  f"({tracking.ui_url(parent)})")
    if failed:
        raise SystemExit(1)
    return {"run_id": parent, "rows": len(table), "failed": sorted(failed)}


def _run_units(entries: list[Entry], order: list[str], launcher: Launcher, max_parallel: int, progress: Progress,
               lease: Lease) -> tuple[set[str], dict[str, str]]:
    """Skip what is done, run the rest in dependency order; the units done and those failed (with why)."""
    parent = launcher.campaign_run_id
    runs = unit_runs(parent)
    done, changed = settle(order, runs, launcher.command_line)
    for unit in order:
        if unit in done:
            progress.line(f"= {unit} [{_ids_of(unit, entries)}] done earlier{_headline(unit, entries, runs[unit])}")
        elif unit in changed:
            progress.line(f"~ {unit} [{_ids_of(unit, entries)}] done earlier with another command: runs again")
        elif unit in runs and not UNITS[unit].resumes:
            supersede(runs.pop(unit))
    pending, failed = [u for u in order if u not in done], {}
    try:
        while pending or launcher.running:
            # the units that ended first: a slot one of them frees is filled in this pass, not the next
            for running, code in launcher.ended():
                unit, elapsed = running.unit.name, time.time() - running.started
                if code == 0:
                    made = {n: runs[n][-1].info.run_id for n in UNITS[unit].needs}
                    retire_stale(UNITS[unit], unit_runs(parent).get(unit, []), launcher.command_line(UNITS[unit], made))
                runs = unit_runs(parent)
                if code == 0 and runs.get(unit):
                    mark_done(runs[unit])
                    done.add(unit)
                    progress.line(f"✓ {unit} [{_ids_of(unit, entries)}] finished in {elapsed / 60:.1f} min"
                                  f"{_headline(unit, entries, runs[unit])}")
                else:
                    failed[unit] = f"exit {code}: {last_error(running.log)}"
                    progress.line(f"✗ {unit} [{_ids_of(unit, entries)}] failed after {elapsed / 60:.1f} min, "
                                  f"{failed[unit]} (log: {running.log})")
            for unit in list(pending):
                needs = UNITS[unit].needs
                if any(n in failed for n in needs):
                    pending.remove(unit)
                    failed[unit] = f"not run: needs {', '.join(n for n in needs if n in failed)}, which failed"
                    progress.line(f"✗ {unit} [{_ids_of(unit, entries)}] {failed[unit]}")
                elif all(n in done for n in needs) and len(launcher.running) < max_parallel:
                    pending.remove(unit)
                    launcher.start(UNITS[unit], {n: runs[n][-1].info.run_id for n in needs})
                    progress.line(f"▶ {unit} [{_ids_of(unit, entries)}] started: python jobs/{UNITS[unit].job}")
            lease.renew()
            time.sleep(0.5)
    except KeyboardInterrupt:
        progress.line("interrupted: stopping the running jobs (each saves its state)")
        launcher.interrupt()
        print("the campaign was interrupted; run the same command again to go on from here", flush=True)
        raise SystemExit(130) from None
    return done, failed
