"""The improved CIFAR-10 CNN (A3): Ray Tune searches architecture and training hyper-parameters together, over
two families by default (improved_cnn, and airbench_cnn with airbench94's recipe; library/search/families.py).

    python jobs/tune_cnn.py                                    # Optuna + ASHA, 24 trials, local Ray
    python jobs/tune_cnn.py --smoke-test                       # 3 tiny trials, well under a minute on a CPU
    python jobs/tune_cnn.py --space.model.improved_cnn.kernel='[3]' --num_samples=50
    python jobs/tune_cnn.py --metric=val_acc_at_time --trial_time_s=120  # accuracy within 120 s of training
    python jobs/tune_cnn.py --adv_eps_255=8 --metric=val_robust_acc  # D10: PGD adversarial training, ranked by
                                                               # accuracy under PGD at 8/255 (val_robust_acc)
    ray job submit --working-dir . -- python jobs/tune_cnn.py  # on a cluster (see cluster.yaml)

Trials tune on the validation split only. When the sweep ends, the best configuration is retrained on the
whole training set and evaluated once on the test set. MLflow gets one parent run per sweep (the space, the
budget, the leaderboard, importances, learning curves, the best config, its test accuracy and weights) and one
child run per trial. Interrupted (Ctrl-C or SIGTERM, a lost driver)? Run the same command again: the sweep
resumes from its storage path and keeps logging into the same runs.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from library.search import sweep_report  # noqa: E402
from library import tracking  # noqa: E402
from library.cli import changed_settings, run_job  # noqa: E402
from library.config import ConfigError, override, project  # noqa: E402
from library.data.options import DataOptions, load_data  # noqa: E402
from library.train.fit import final_fit, log_fit  # noqa: E402
from library.search.families import DEFAULT_SPACE, FamilySpace, make_space  # noqa: E402
from library.search.space import SearchSpace  # noqa: E402
from library.train.recipe import TrainConfig  # noqa: E402
from library.cluster import ray_init  # noqa: E402
from library.search.outcome import conclude_once  # noqa: E402
from library.search.sweep import SweepOptions, run_sweep, validate_sweep  # noqa: E402


@dataclass(frozen=True)
class JobConfig(SweepOptions, TrainConfig, DataOptions):
    model: str = "improved_cnn"  # the family the space's model options belong to
    space: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPACE))  # see library/search/space.py;
    # the default searches two families, improved_cnn and airbench_cnn (library/search/families.py)
    retrain: bool = True  # retrain the best configuration on the whole training set and test it once
    final_epochs: int = 0  # epochs of that final fit; 0 = the best trial's epoch budget (with metric=val_acc_at_time:
    # the epochs it trained within trial_time_s)
    final_train_size: int = 0  # cap on its training images (train+val); 0 = the whole training set
    budget: Literal["auto", "gpu", "cpu"] = "auto"  # gpu: the settings as they are (the seeds' full search); cpu:
    # BUDGETS["cpu"] for the settings left at their defaults, a search of ~15 minutes on 2 cores; auto:
    # gpu when torch sees a GPU here or the job runs on a cluster ($RAY_ADDRESS), else cpu
    smoke_test: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.final_epochs < 0 or self.final_train_size < 0:
            raise ConfigError("final_epochs and final_train_size must be >= 0")


SMOKE = {
    "name": f"tune_cnn_smoke_{time.strftime('%Y%m%d-%H%M%S')}",
    "num_samples": 3, "max_concurrent": 2, "grace_period": 1,
    "train_size": 384, "val_size": 128, "test_size": 128, "final_train_size": 384, "eval_batch_size": 256, "warmup_epochs": 0.5,
    "space": {"width": [8, 16], "stages": [2], "depth": [1], "kernel": [3, 5], "norm": ["bn"],
              "act": ["relu", "mish"], "residual": [True, False], "lr": (1e-3, 1e-2, "log"), "batch_size": [64],
              "epochs": [2]},
}
# what --budget=cpu sets, where the command line leaves a setting at its default: 12 trials of at most 5 epochs on
# 8,000 images, 2 at a time (one core each), ASHA from epoch 2, at most 20 minutes of trials, the widest options
# of each family left out, then a final fit on 20,000 images
BUDGETS: dict[str, dict[str, Any]] = {
    "gpu": {},
    "cpu": {"num_samples": 12, "max_concurrent": 2, "cpus_per_trial": 1.0, "grace_period": 2, "time_budget_s": 1200.0,
            "train_size": 8000, "val_size": 2000, "final_train_size": 20000, "space.epochs": [5],
            "space.model.improved_cnn.width": [32, 64], "space.model.improved_cnn.depth": [1],
            "space.model.airbench_cnn.width2": [128], "space.model.airbench_cnn.width3": [128, 256],
            "space.model.airbench_cnn.batch_size": [256, 512]},  # 1,024 leaves 7 steps an epoch on 8,000 images
}


def resolve_budget(cfg: JobConfig) -> JobConfig:
    """`--budget` made concrete, its settings applied to those the command line left at their defaults."""
    budget = cfg.budget
    if budget == "auto":
        budget = "gpu" if torch.cuda.is_available() or os.environ.get("RAY_ADDRESS") else "cpu"
    changed = set(changed_settings(cfg))
    settings = {k: v for k, v in BUDGETS[budget].items() if k.split(".")[0] not in changed}
    return override(cfg, settings | {"budget": budget})


def describe_budget(cfg: JobConfig) -> str:
    epochs = cfg.space.get("epochs", "the space's")
    epochs = max(epochs) if isinstance(epochs, (list, tuple)) else epochs
    work = (f"{cfg.num_samples} trials of at most {epochs} epochs on {cfg.train_size or 'all the'} training images, "
            f"{cfg.max_concurrent} at a time")
    limit = f", stopped after {cfg.time_budget_s / 60:.0f} minutes" if cfg.time_budget_s else ""
    final = f", then a final fit on {cfg.final_train_size or 'all'} images" if cfg.retrain else ""
    sized = "about 15 minutes on 2 CPU cores; --budget=gpu for the full search" if cfg.budget == "cpu" \
        else "the full search"
    return f"budget {cfg.budget}: {work}{limit}{final} ({sized})"


DESCRIPTION = ("A3: architecture + hyper-parameter search for the improved CIFAR-10 CNN. Trials are ranked by "
               "validation accuracy; the best configuration is retrained on train+val and tested once.")


def log_report(parent: str, space: SearchSpace | FamilySpace, metric: str) -> Any:
    """Leaderboard, importances, learning curves and accuracy-vs-parameter plots (of the sweep's `metric`),
    into the parent run."""
    client = mlflow.MlflowClient()
    table = sweep_report.leaderboard(parent, metric)
    names = [d.name for d in space.searched]
    # log_dict/log_text overwrite; log_table would append rows to a leaderboard an interrupted run logged before
    client.log_dict(parent, json.loads(table.to_json(orient="records")), "leaderboard.json")
    client.log_text(parent, table.to_csv(index=False), "leaderboard.csv")
    spec = sweep_report.flat_spec(space.spec)
    client.log_figure(parent, sweep_report.importance_figure(sweep_report.importances(table, spec, metric),
                                                             metric), "parameter_importance.png")
    client.log_figure(parent, sweep_report.curves_figure(sweep_report.learning_curves(parent, metric), metric),
                      "learning_curves.png")
    client.log_figure(parent, sweep_report.accuracy_vs_parameter_figure(table, names, metric,
                                                                     sweep_report.log_searched(spec)),
                      "accuracy_vs_parameters.png")
    return table


def log_final(parent: str, best_cfg: TrainConfig, cfg: JobConfig) -> dict[str, float]:
    """Retrain the best configuration on the whole training set (train+val, uncapped), test it once; log the
    result into the parent run."""
    # trials may tune on a capped subset (train_size); the final fit uses the whole training set
    full = load_data(dataclasses.replace(cfg, train_size=cfg.final_train_size))
    fit = final_fit(best_cfg, full, cfg.cpus_per_trial)
    log_fit(fit, parent, "best configuration, final fit on train+val", prefix="final")
    return fit.test


def conclude(parent: str, space: SearchSpace | FamilySpace, cfg: JobConfig, errors: int) -> dict:
    """Everything after the trials, once: the report, the best configuration, its final fit and test."""
    client = mlflow.MlflowClient()
    table = log_report(parent, space, cfg.metric)
    if table.empty:
        raise RuntimeError(f"no trial reported a result ({errors} errored); see the Tune log in {cfg.experiment_path()}")
    best = table.iloc[0]
    searched = {d.name: best.get(d.name) for d in space.searched}  # a family's trial has no value for the others'
    best_point = space.fixed() | {k: v for k, v in searched.items() if v is not None and not pd.isna(v)}
    best_cfg = space.apply(best_point)
    if cfg.final_epochs:
        best_cfg = dataclasses.replace(best_cfg, epochs=cfg.final_epochs)
    elif cfg.metric == "val_acc_at_time":  # the epochs the best trial trained within its time budget
        best_cfg = dataclasses.replace(best_cfg, epochs=int(best["epochs_run"]), steps=0)
    logged = client.get_run(parent).data.metrics  # non-empty if an earlier run died part-way through this
    client.set_tag(parent, "best_trial", best["trial"])
    tracking.log_config(best_point, run_id=parent, prefix="best.")
    if f"best_{cfg.metric}" not in logged:
        client.log_metric(parent, f"best_{cfg.metric}", float(best[cfg.metric]))
    client.log_text(parent, f"{best_cfg.model}: {best_cfg.model_kw}\n{best_cfg}\n", "best_config.txt")
    client.log_dict(parent, dataclasses.asdict(best_cfg), "best_config.json")  # TrainConfig(**it) rebuilds it
    print(f"\n{len(table)} trials ({errors} errored); best {best['trial']}: {cfg.metric} {best[cfg.metric]:.4f}")
    if cfg.retrain and "test_acc" not in logged:  # the test set is evaluated once, ever
        test = log_final(parent, best_cfg, cfg)
        robust = f", under PGD at {best_cfg.robust_eps * 255:g}/255 {test['robust_acc']:.4f}" if "robust_acc" in test else ""
        print(f"best configuration retrained on the whole training set: test accuracy {test['acc']:.4f}{robust}")
    return {"trials": len(table), "best_trial": best["trial"], f"best_{cfg.metric}": float(best[cfg.metric]),
            "best_config": best_point}


def main(cfg: JobConfig) -> dict:
    if not cfg.smoke_test:
        print(describe_budget(cfg), flush=True)
    space = make_space(cfg.space, project(cfg, TrainConfig))  # a bad space key or value stops here, before Ray
    validate_sweep(cfg, space)
    uri = tracking.connect()
    data = load_data(cfg)
    ray_init(cfg.ray_address)
    outcome = run_sweep(cfg, space, data, experiment=cfg.name, description=DESCRIPTION,
                        parent_params={"data.train_images": len(data.train), "data.val_images": len(data.val),
                                       "data.test_images": len(data.test), "data.verified": data.verified})
    parent, client, summary = outcome.parent_run_id, mlflow.MlflowClient(), {}
    if not conclude_once(outcome, "sweep", cfg.experiment_path(),
                         lambda: summary.update(conclude(parent, space, cfg, outcome.results.num_errors))):
        run = client.get_run(parent)
        print(f"\nthis sweep is complete already: best {run.data.tags.get('best_trial')}, {cfg.metric} "
              f"{run.data.metrics.get(f'best_{cfg.metric}', float('nan')):.4f}, test accuracy "
              f"{run.data.metrics.get('test_acc', float('nan')):.4f} (the test set is used once)")
        summary = {"best_trial": run.data.tags.get("best_trial"),
                   f"best_{cfg.metric}": run.data.metrics.get(f"best_{cfg.metric}")}
    metrics = client.get_run(parent).data.metrics
    summary |= {"parent_run_id": parent, "test_acc": metrics.get("test_acc"),
                "test_robust_acc": metrics.get("test_robust_acc")}
    print(f"MLflow parent run {parent} in experiment '{cfg.name}' at {uri}; Tune state in {cfg.experiment_path()}")
    print(f"in the MLflow UI (README: Sweeps): {tracking.ui_url(parent)}")
    return summary


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE, resolve=resolve_budget)
