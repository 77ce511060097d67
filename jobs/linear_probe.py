"""Linear probes on frozen pretrained features (C3, C4): multinomial logistic regression per backbone, its L2
strength chosen on a validation split carved from trainval, refit on trainval, tested once.

    python jobs/linear_probe.py                                  # EfficientNet-Lite0 on Oxford-IIIT Pet
    python jobs/linear_probe.py --backbones=[resnet50,vit_small_patch16_224]   # C4: a CNN against a ViT
    python jobs/linear_probe.py --smoke-test

Features come from the cache `jobs/extract_features.py` fills (computed first if missing, as Ray tasks). The probes
of several backbones run as parallel Ray tasks; each result and its two figures are remembered beside the features
(`<cache>/probes/`), so a re-run with the same features and settings reads them back and starts neither Ray nor a
fit, nor draws a figure. MLflow: a parent run with the comparison table (probes.csv) and, per pair of backbones, the
test images one gets right and the other wrong, both ways (gallery and table); a child run per backbone with the
mean per-class accuracy (the seed's metric), the overall accuracy, the chosen C and the validation curve, the
per-class table and the confusion matrix.
"""
from __future__ import annotations

import gc
import itertools
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a job: no garbage collection while its imports load (see run_job)
    gc.disable()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library/, also under `ray job submit`

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from library import tracking  # noqa: E402
from library.cli import run_job  # noqa: E402
from library.config import ConfigError  # noqa: E402
from library.pretrained.features import Extraction, FeatureOptions, extract_features  # noqa: E402
from library.plots import confusion_matrix_figure, image_gallery_figure  # noqa: E402
from library.pretrained.probe import (C_GRID, ProbeResult, linear_probe, load_result, probe_key,  # noqa: E402
                                      save_result)


@dataclass(frozen=True)
class JobConfig(FeatureOptions):
    c_grid: tuple[float, ...] = C_GRID  # inverse L2 strengths tried (scikit-learn's C)
    val_fraction: float = 0.2  # of each class of trainval, for choosing C
    seed: int = 0  # the validation split
    parallel: bool = True  # probe several backbones as parallel Ray tasks (one backbone: in this process)
    gallery_size: int = 8  # images per direction in each backbone pair's gallery
    experiment: str = "linear_probe"  # MLflow experiment
    smoke_test: bool = False

    def __post_init__(self):
        super().__post_init__()
        if tuple(self.splits) != ("trainval", "test") and self.dataset == "pets":
            raise ConfigError("a probe needs splits=[trainval,test]: it fits on the first and tests on the second")
        if self.dataset == "folder":
            raise ConfigError("a probe needs a train and a test split: dataset=pets (an image folder has one split)")
        if not 0 < self.val_fraction < 1 or not self.c_grid:
            raise ConfigError("val_fraction must be in (0, 1) and c_grid non-empty")


SMOKE = {"backbones": ["tf_efficientnet_lite0@none", "resnet18@none"], "limit": 24, "shards": 2, "batch_size": 8,
         "c_grid": [0.1, 10.0], "gallery_size": 4, "experiment": "linear_probe_smoke"}


def probe_path(train: Extraction, test: Extraction, cfg: JobConfig) -> Path:
    key = probe_key(train.entry.key, test.entry.key, tuple(cfg.c_grid), cfg.val_fraction, cfg.seed)
    return train.entry.root / "probes" / f"{key}.npz"


def probe_pair(train: Extraction, test: Extraction, cfg: JobConfig) -> ProbeResult:
    """The probe of one backbone: fitted, or read back when these features were probed with these settings."""
    path = probe_path(train, test, cfg)
    remembered = load_result(path)
    if remembered is not None:
        return remembered
    train_x, train_y = train.entry.load()
    test_x, test_y = test.entry.load()
    result = linear_probe(train_x, train_y, test_x, test_y, train.photos.classes, tuple(cfg.c_grid),
                          cfg.val_fraction, cfg.seed)
    save_result(path, result)
    return result


def run_probes(pairs: list[tuple[Extraction, Extraction]], cfg: JobConfig) -> list[ProbeResult]:
    if not cfg.parallel or len(pairs) == 1 or all(probe_path(*pair, cfg).is_file() for pair in pairs):
        return [probe_pair(train, test, cfg) for train, test in pairs]
    import ray

    from library.cluster import ray_init, remote_task

    ray_init(cfg.ray_address)
    task = remote_task(probe_pair, cfg.cpus_per_task)
    return ray.get([task.remote(train, test, cfg) for train, test in pairs])


def validation_figure(result: ProbeResult, title: str) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    cs = sorted(result.val_scores)
    ax.plot(cs, [result.val_scores[c] for c in cs], marker="o")
    ax.axvline(result.c, color="grey", linestyle="--", label=f"chosen C = {result.c:g}")
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse L2 strength)")
    ax.set_ylabel("validation mean per-class accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def log_probe(run_id: str, name: str, result: ProbeResult, test: Extraction, figures_dir: Path) -> None:
    client = mlflow.MlflowClient()
    client.log_metric(run_id, "mean_per_class_acc", result.mean_per_class_acc)
    client.log_metric(run_id, "acc", result.acc)
    client.log_metric(run_id, "c", result.c)
    for step, c in enumerate(sorted(result.val_scores)):
        client.log_metric(run_id, "val_mean_per_class_acc", result.val_scores[c], step=step)
    client.log_param(run_id, "features.key", test.meta["key"])
    client.log_param(run_id, "features.weights_digest", test.meta["weights_digest"])
    table = pd.DataFrame({"class": result.classes, "accuracy": result.per_class_acc,
                          "test_images": result.confusion.sum(axis=1)})
    client.log_text(run_id, table.to_csv(index=False), "per_class_accuracy.csv")
    for path in probe_figures(result, name, figures_dir):
        client.log_artifact(run_id, str(path))


def probe_figures(result: ProbeResult, name: str, folder: Path) -> list[Path]:
    """The probe's confusion matrix and validation curve as PNGs in `folder` (beside the remembered result),
    drawn the first time only: drawing them is most of what a re-run on cached features would still cost."""
    figures = {"confusion_matrix.png": lambda: confusion_matrix_figure(result.confusion, result.classes,
                                                                       f"{name}: test confusion matrix"),
               "validation_curve.png": lambda: validation_figure(result, name)}
    folder.mkdir(parents=True, exist_ok=True)
    for file, draw in figures.items():
        if not (folder / file).is_file():
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".png", delete=False) as f:
                draw().savefig(f, format="png")
            os.replace(f.name, folder / file)  # atomic: a reader never sees half a figure
    return [folder / file for file in figures]


def disagreements(a: tuple[str, ProbeResult], b: tuple[str, ProbeResult], test: Extraction, size: int) -> pd.DataFrame:
    """Test images that `a` classifies right and `b` wrong, and the other way round (C4)."""
    labels = np.asarray(test.photos.labels)
    right_a, right_b = a[1].test_predictions == labels, b[1].test_predictions == labels
    rows = []
    for winner, loser, mask in ((a, b, right_a & ~right_b), (b, a, right_b & ~right_a)):
        for i in np.flatnonzero(mask):
            rows.append({"right": winner[0], "wrong": loser[0], "index": int(i), "file": Path(test.photos.paths[i]).name,
                         "true": test.photos.classes[labels[i]],
                         "wrong_prediction": test.photos.classes[loser[1].test_predictions[i]]})
    return pd.DataFrame(rows, columns=["right", "wrong", "index", "file", "true", "wrong_prediction"])


def log_disagreements(parent: str, a, b, test: Extraction, size: int) -> dict:
    table = disagreements(a, b, test, size)
    client, tag = mlflow.MlflowClient(), f"{a[0]}_vs_{b[0]}"
    client.log_text(parent, table.to_csv(index=False), f"c4/{tag}.csv")
    for right in (a[0], b[0]):
        shown = table[table["right"] == right].head(size)
        captions = [f"{r.true}\n{r.wrong} said {r.wrong_prediction}" for r in shown.itertuples()]
        figure = image_gallery_figure([test.photos.paths[i] for i in shown["index"]], captions,
                                      f"right by {right}, wrong by the other ({(table['right'] == right).sum()} in all)")
        client.log_figure(parent, figure, f"c4/{tag}_right_by_{right}.png")
    return {f"{tag}.{r}_only": int((table["right"] == r).sum()) for r in (a[0], b[0])}


def main(cfg: JobConfig) -> dict:
    uri = tracking.connect()
    with tracking.start_run(cfg.experiment, run_name="linear_probe", config=cfg) as parent:
        extractions = extract_features(cfg)
        pairs = [(extractions[i], extractions[i + 1]) for i in range(0, len(extractions), 2)]  # (trainval, test)
        cached = {train.spec.name: probe_path(train, test, cfg).is_file() for train, test in pairs}
        results = run_probes(pairs, cfg)
        named = [(train.spec.name, result) for (train, _), result in zip(pairs, results)]
        rows = []
        for (name, result), (train, test) in zip(named, pairs):
            child = tracking.create_child_run(parent, name)
            log_probe(child, name, result, test, probe_path(train, test, cfg).with_suffix("") / name)
            mlflow.MlflowClient().set_terminated(child)
            rows.append({"backbone": name, "weights": train.spec.weights, "num_features": test.meta["num_features"],
                         "mean_per_class_acc": result.mean_per_class_acc, "acc": result.acc, "c": result.c,
                         "features_cached": train.cache_hit and test.cache_hit,
                         "probe_remembered": cached[name], "run_id": child})
            mlflow.log_metric(f"{name}.mean_per_class_acc", result.mean_per_class_acc)
            print(f"{name}: mean per-class accuracy {result.mean_per_class_acc:.4f}, accuracy {result.acc:.4f} "
                  f"(C = {result.c:g}, {len(test.photos)} test images"
                  + (", probe read back from the cache)" if cached[name] else ")"))
        table = pd.DataFrame(rows)
        client = mlflow.MlflowClient()
        client.log_text(parent.info.run_id, table.to_csv(index=False), "probes.csv")
        client.log_dict(parent.info.run_id, json.loads(table.to_json(orient="records")), "probes.json")
        for a, b in itertools.combinations(named, 2):
            counts = log_disagreements(parent.info.run_id, a, b, pairs[0][1], cfg.gallery_size)
            mlflow.log_metrics(counts)
    print(f"MLflow run {parent.info.run_id} in experiment '{cfg.experiment}' at {uri}")
    return {"probes": rows}


if __name__ == "__main__":
    run_job(main, JobConfig, smoke=SMOKE)
