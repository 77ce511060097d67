"""Ablation studies on Ray Tune: every named variant × every seed, trained to the end and tested.

A study is a grid search with nothing searched: `tune.grid_search` over variant names and seeds, FIFO (no early
stopping, which would bias the comparison), every trial scored on the test set when it ends (nothing is chosen
on validation, so the test set is not tuned on). It runs through `sweep.run_sweep`, so it has the sweep's
checkpoints, resume and MLflow records: one parent run per study, one child per trial named `<variant>/seed<k>`.
`conclude_study` then puts the comparison into the parent run: the per-trial and per-variant tables, the
training-loss curves as mean and spread over seeds, every trial's model and first-layer filters.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import mlflow
import pandas as pd
import torch

from .. import model_store, tracking
from ..config import ConfigError
from ..data import ImageData
from ..data.options import DataOptions, load_data
from ..models import create_model, first_conv
from ..plots import filter_grid_figure
from ..cluster import ray_init
from ..runtime import load_tensors
from ..train.recipe import TrainConfig, model_options
from . import study_report
from .checkpoints import CHECKPOINT_FILE
from .outcome import SweepOutcome, conclude_once
from .space import dimension
from .sweep import SweepOptions, run_sweep, validate_sweep


@dataclass(frozen=True)
class StudyOptions(SweepOptions):
    """A sweep that is a study: a grid, FIFO, one sample; `seeds` repeat every variant."""

    search: Literal["optuna", "random", "grid"] = "grid"
    scheduler: Literal["asha", "fifo", "pbt"] = "fifo"
    num_samples: int = 1
    max_concurrent: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)  # every variant is trained once per seed
    variants: tuple[str, ...] = ()  # run only these of the study's variants; empty = all
    smoke_test: bool = False  # a few hundred images, one or two epochs: a check that the study runs end to end

    def __post_init__(self):
        super().__post_init__()
        if (self.search, self.scheduler, self.num_samples) != ("grid", "fifo", 1):
            raise ConfigError("a study trains every variant × seed to the end: it needs search=grid, scheduler=fifo "
                              f"and num_samples=1 (got {self.search}, {self.scheduler}, {self.num_samples}); "
                              "use --seeds for repeats")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={self.seeds} must be a non-empty list of distinct seeds")


@dataclass(frozen=True)
class StudyJobConfig(StudyOptions, TrainConfig, DataOptions):
    """What a study job takes: how the study runs, the training settings its variants start from, the data."""


def smoke_settings(name: str, **changes: Any) -> dict[str, Any]:
    """`--smoke-test` for a study: a fresh name (no resume), two seeds, tiny data, one epoch; plus `changes`."""
    return {"name": f"{name}_smoke_{time.strftime('%Y%m%d-%H%M%S')}", "seeds": [0, 1], "epochs": 1,
            "train_size": 256, "val_size": 128, "test_size": 128, "batch_size": 64, "eval_batch_size": 256,
            "warmup_epochs": 0.5, **changes}


def select_variants(variants: Mapping[str, TrainConfig], chosen: Sequence[str]) -> dict[str, TrainConfig]:
    """`variants` restricted to `chosen` (in the study's order); all of them when `chosen` is empty."""
    unknown = [name for name in chosen if name not in variants]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; this study has: {', '.join(variants)}")
    return {name: cfg for name, cfg in variants.items() if not chosen or name in chosen}


class StudySpace:
    """The trials of a study as a space `sweep.run_sweep` takes (the interface of `SearchSpace`): the point
    {"variant": name, "seed": k} is the variant's TrainConfig with that seed."""

    def __init__(self, variants: Mapping[str, TrainConfig], seeds: Sequence[int]):
        if not variants:
            raise ConfigError("a study needs at least one variant")
        self.variants = dict(variants)
        self.seeds = tuple(int(s) for s in seeds)
        self.base = next(iter(self.variants.values()))
        self.spec = {"variant": list(self.variants), "seed": list(self.seeds)}
        self.dimensions = [dimension(name, values) for name, values in self.spec.items()]
        for cfg in self.variants.values():  # a bad model option stops here, before Ray
            create_model(cfg.model, **cfg.model_kw)

    @property
    def searched(self):
        return self.dimensions

    def fixed(self) -> dict[str, Any]:
        return {}

    def apply(self, point: Mapping[str, Any]) -> TrainConfig:
        return dataclasses.replace(self.variants[str(point["variant"])], seed=int(point["seed"]))

    def run_name(self, point: Mapping[str, Any]) -> str:
        return f"{point['variant']}/seed{point['seed']}"

    def tune_space(self, grid: bool = True) -> dict[str, Any]:
        from ray import tune

        return {name: tune.grid_search(values) for name, values in self.spec.items()}

    def max_epochs(self) -> int:
        return max(cfg.epochs for cfg in self.variants.values())


def run_study(opts: StudyOptions, space: StudySpace, data: ImageData, description: str) -> SweepOutcome:
    """Run (or resume) the study's trials and record what each variant is in the parent run. Call
    `validate_sweep`, `tracking.connect()` and `ray_init()` first."""
    outcome = run_sweep(opts, space, data, experiment=opts.name, description=description, test_each_trial=True,
                        parent_params={"data.train_images": len(data.train), "data.val_images": len(data.val),
                                       "data.test_images": len(data.test), "data.verified": data.verified})
    client = mlflow.MlflowClient()
    for name, cfg in space.variants.items():  # what each variant is, beside the base config run_sweep logged
        changed = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                   if getattr(cfg, f.name) != getattr(space.base, f.name)}
        client.log_text(outcome.parent_run_id, json.dumps(dataclasses.asdict(cfg), indent=1, default=str),
                        f"variants/{name}.json")
        tracking.log_config(changed or {"same_as_base": True}, run_id=outcome.parent_run_id, prefix=f"variant.{name}.")
    return outcome


def _trial_models(outcome: SweepOutcome, space: StudySpace, data: ImageData) -> dict[str, torch.nn.Module]:
    """trial id -> its trained model, rebuilt from the trial's last checkpoint."""
    models = {}
    for result in outcome.results:
        if result.checkpoint is None or "variant" not in result.config:
            continue
        cfg = space.apply(result.config)
        with result.checkpoint.as_directory() as directory:
            state = load_tensors(f"{directory}/{CHECKPOINT_FILE}")
        model = create_model(cfg.model, **model_options(cfg, data))
        model.load_state_dict(state["model"])
        models[result.metrics["trial_id"]] = model.eval()
    return models


def conclude_study(outcome: SweepOutcome, space: StudySpace, data: ImageData) -> pd.DataFrame:
    """The comparison every study has, into the parent run: results.csv/json (a row per trial), summary.csv/json
    (per variant: mean, std, min, max of the test accuracy and the training time), `<variant>.test_acc_mean`/
    `_std` metrics, the training loss per epoch (mean and min–max band over seeds), and per trial its model and
    first-layer filters (the first seed's also in the parent). Returns the per-trial table."""
    parent, client = outcome.parent_run_id, mlflow.MlflowClient()
    table = study_report.trial_table(parent, order=list(space.variants))
    if table.empty:
        raise RuntimeError(f"no trial of the study reported a result; see the Tune log in {outcome.results.experiment_path}")
    summary = study_report.summary(table, order=list(space.variants))
    # log_text/log_dict overwrite, where log_table would append rows to a table a retried conclusion logged
    client.log_text(parent, table.to_csv(index=False), "results.csv")
    client.log_dict(parent, json.loads(table.to_json(orient="records")), "results.json")
    client.log_text(parent, summary.to_csv(), "summary.csv")
    client.log_dict(parent, json.loads(summary.reset_index().to_json(orient="records")), "summary.json")
    for variant, row in summary.iterrows():
        client.log_metric(parent, f"{variant}.test_acc_mean", float(row["test_acc_mean"]))
        client.log_metric(parent, f"{variant}.test_acc_std", float(row["test_acc_std"]) if row["n"] > 1 else 0.0)
    curves = study_report.metric_curves(parent, "train_loss", table)
    client.log_figure(parent, study_report.mean_spread_figure(curves, "training loss", "epoch", order=list(space.variants)),
                      "train_loss_per_epoch.png")
    runs = dict(zip(table["trial_id"], table["run_id"]))
    shown: set[str] = set()
    for trial_id, model in _trial_models(outcome, space, data).items():
        run_id = runs.get(trial_id)
        if run_id is None:
            continue
        variant = table.loc[table["run_id"] == run_id, "variant"].iloc[0]
        cfg = space.variants[variant]
        model_store.log_model(model, cfg.model, model_options(cfg, data), run_id=run_id)
        client.log_param(run_id, "model.init", getattr(model, "init_scheme", ""))
        try:
            figure = filter_grid_figure(first_conv(model).weight)
        except ValueError:
            continue  # no convolution (a ViT's patch embedding is one; an MLP has none)
        client.log_figure(run_id, figure, "first_layer_filters.png")
        if variant not in shown:
            client.log_figure(parent, filter_grid_figure(first_conv(model).weight, title=f"{variant}: first-layer filters"),
                              f"filters/{variant}.png")
            client.log_param(parent, f"variant.{variant}.init", getattr(model, "init_scheme", ""))
            shown.add(variant)
    return table


StudyReport = Callable[[str, pd.DataFrame, StudySpace, ImageData], None]  # (parent run, trial table, space, data)


def run_study_job(cfg: Any, variants: Mapping[str, TrainConfig], description: str,
                  report: StudyReport | None = None) -> dict[str, Any]:
    """A study job's `main`: `cfg` is a StudyOptions + DataOptions config. Checks the variants and the storage
    before Ray starts, runs (or resumes) the trials, then concludes once: the comparison, then the job's own
    `report`."""
    space = StudySpace(select_variants(variants, cfg.variants), cfg.seeds)
    validate_sweep(cfg, space)
    uri = tracking.connect()
    data = load_data(cfg)
    ray_init(cfg.ray_address)
    outcome = run_study(cfg, space, data, description)
    parent = outcome.parent_run_id

    def conclude() -> None:
        table = conclude_study(outcome, space, data)
        if report is not None:
            report(parent, table, space, data)

    if not conclude_once(outcome, "study", cfg.experiment_path(), conclude):
        print(f"\nthis study is complete already (parent run {parent}); its tables and figures are in MLflow")
    table = study_report.trial_table(parent, order=list(space.variants))
    summary = study_report.summary(table, order=list(space.variants))
    print("\n" + study_report.markdown_table(summary))
    print(f"MLflow parent run {parent} in experiment '{cfg.name}' at {uri}; Tune state in {cfg.experiment_path()}")
    print(f"in the MLflow UI (README: Sweeps): {tracking.ui_url(parent)}")
    return {"parent_run_id": parent, "summary": json.loads(summary.to_json(orient="index"))}
