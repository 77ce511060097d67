"""Feature extraction and linear probes end to end: tiny Oxford-IIIT Pet in the real layout, random-init timm
backbones (offline), a real local Ray for the shard tasks, a real MLflow store, the real feature cache."""
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import REPO, job_env
from library.pretrained.backbones import BackboneSpec, create_backbone, state_digest
from library.data.photos import load_pets
from library.pretrained.features import cache_key, extract, plan_extractions


def test_features_are_unit_norm_pre_logits_of_num_features(pets_root):
    photos = load_pets(pets_root, "test")
    for name in ("resnet18", "vit_tiny_patch16_224"):
        backbone = create_backbone(name, weights="none")
        features, labels = extract(backbone, photos, range(5), batch_size=4)
        assert features.shape == (5, backbone.num_features)
        assert np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
        assert labels.tolist() == list(photos.labels[:5])


def test_cache_key_follows_weights_preprocessing_and_data(pets_root):
    test, trainval = load_pets(pets_root, "test"), load_pets(pets_root, "trainval")
    a = create_backbone("resnet18", weights="none")
    assert cache_key(a, test) == cache_key(create_backbone("resnet18", weights="none"), test)  # seeded random init
    assert cache_key(a, test) != cache_key(a, trainval)
    other = create_backbone("resnet18", weights="none")
    other.model.fc.bias.data += 1  # different weights, different key
    other.weights_digest = state_digest(other.model)
    assert cache_key(other, test) != cache_key(a, test)
    a.data_config = dict(a.data_config, crop_pct=1.0)  # different preprocessing, different key
    assert cache_key(a, test) != cache_key(create_backbone("resnet18", weights="none"), test)


def run(job: str, store: Path, data_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = job_env(store, data_root)
    cmd = [sys.executable, str(REPO / "jobs" / f"{job}.py"), f"--cache_dir={store / 'cache'}", "--ray_address=local",
           "--shards=2", "--batch_size=8", *args]
    return subprocess.run(cmd, cwd=store, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.ray
@pytest.mark.slow
def test_extraction_fills_the_cache_and_a_rerun_reads_it_without_ray_or_a_forward(tmp_path, pets_root):
    backbones = "--backbones=[resnet18@none,vit_tiny_patch16_224@none]"
    first = run("extract_features", tmp_path, pets_root, backbones, "--experiment=features")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Started a local Ray" in first.stdout + first.stderr and "computed at" in first.stdout
    entries = plan_extractions([(BackboneSpec("resnet18", "none"), load_pets(pets_root, "test"))],
                               tmp_path / "cache", shards=2)
    assert entries[0].cache_hit
    features, labels = entries[0].entry.load()
    assert features.shape == (18, 512) and labels.tolist() == list(load_pets(pets_root, "test").labels)

    again = run("extract_features", tmp_path, pets_root, backbones, "--experiment=features")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("cache hit") == 4 and "computed at" not in again.stdout
    assert "Started a local Ray" not in again.stdout + again.stderr  # no tasks, so no forward pass anywhere
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["features"], order_by=["attributes.start_time DESC"])
    assert runs.iloc[0]["metrics.resnet18.test.cache_hit"] == 1.0 and runs.iloc[1]["metrics.resnet18.test.cache_hit"] == 0.0
    tasks = mlflow.artifacts.load_dict(f"runs:/{runs.iloc[1]['run_id']}/tasks/resnet18.test.json")
    assert len(tasks) == 2  # each shard task ran with the driver's allocator setting, from its worker's start
    assert all(t["freed_memory_kept"] and "glibc.malloc.mmap_max=0" in t["glibc_tunables"] for t in tasks)


@pytest.mark.ray
@pytest.mark.slow
def test_linear_probe_job_logs_probes_per_backbone_and_the_c4_comparison(tmp_path, pets_root):
    out = run("linear_probe", tmp_path, pets_root, "--backbones=[resnet18@none,vit_tiny_patch16_224@none]",
              "--c_grid=[1.0,100.0]")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["linear_probe"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert sorted(children["tags.mlflow.runName"]) == ["resnet18", "vit_tiny_patch16_224"]
    assert children["metrics.mean_per_class_acc"].between(0, 1).all()
    client = mlflow.MlflowClient()
    assert {"confusion_matrix.png", "per_class_accuracy.csv", "validation_curve.png"} <= {
        a.path for a in client.list_artifacts(children.iloc[0]["run_id"])}
    c4 = {a.path for a in client.list_artifacts(parent["run_id"], "c4")}
    assert len(c4) == 3 and any(p.endswith(".csv") for p in c4)

    drawn = {path: path.stat().st_mtime_ns for path in (tmp_path / "cache" / "probes").rglob("*.png")}
    assert len(drawn) == 4  # each backbone's two figures, kept beside its remembered probe

    again = run("linear_probe", tmp_path, pets_root, "--backbones=[resnet18@none,vit_tiny_patch16_224@none]",
                "--c_grid=[1.0,100.0]")  # every feature cached and every probe remembered: nothing computed
    assert again.returncode == 0 and again.stdout.count("probe read back from the cache") == 2, again.stderr[-2000:]
    assert "Started a local Ray" not in again.stdout + again.stderr
    runs = mlflow.search_runs(experiment_names=["linear_probe"], order_by=["attributes.start_time DESC"])
    newest = runs[runs["tags.mlflow.parentRunId"] == runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]["run_id"]]
    assert sorted(newest["metrics.mean_per_class_acc"]) == sorted(children["metrics.mean_per_class_acc"])
    assert {path: path.stat().st_mtime_ns for path in drawn} == drawn  # logged again, not drawn again
    assert {"confusion_matrix.png", "validation_curve.png"} <= {
        a.path for a in client.list_artifacts(newest.iloc[0]["run_id"])}


def test_a_cache_hit_needs_no_backbone_and_a_changed_weights_file_is_hashed_again(tmp_path, pets_root, monkeypatch):
    """The weights digest is remembered beside the feature cache by the weights file's identity (path, size,
    mtime): planning again builds no model; replacing the file makes the next plan load and hash it again."""
    import torch

    from library.pretrained import backbones

    weights = tmp_path / "resnet18.pth"
    torch.save(create_backbone("resnet18", weights="none").model.state_dict(), weights)
    spec, photos, cache = BackboneSpec("resnet18", str(weights)), load_pets(pets_root, "test"), tmp_path / "cache"
    loads = []
    real = backbones.create_backbone
    monkeypatch.setattr(backbones, "create_backbone", lambda *a, **k: loads.append(a) or real(*a, **k))
    first = plan_extractions([(spec, photos)], cache, shards=2)[0]
    assert len(loads) == 1 and first.meta["weights_digest"] == state_digest(real("resnet18", str(weights)).model)
    again = plan_extractions([(spec, photos)], cache, shards=2)[0]
    assert len(loads) == 1 and again.entry.key == first.entry.key and again.meta == first.meta  # no model built
    plan = ("import sys; from library.pretrained.features import FeatureOptions, cache_root, load_photos, "
            "plan_extractions; from library.pretrained.backbones import BackboneSpec; "
            "from library.cli import parse_job_config; "  # the job's own config checks, the name check among them
            f"opts = parse_job_config(FeatureOptions, ['--backbones=[resnet18@{weights}]', '--data_root={pets_root}', "
            f"'--cache_dir={cache}']); "
            "plan_extractions([(BackboneSpec.parse(opts.backbones[0], check=False), p) for p in load_photos(opts)], "
            "cache_root(opts.cache_dir), 2); print('timm imported' if 'timm' in sys.modules else 'no timm')")
    out = subprocess.run([sys.executable, "-c", plan], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "no timm", out.stdout + out.stderr[-2000:]  # nor any model code of it

    state = torch.load(weights)
    state["fc.bias"] += 1  # other weights in the same file
    torch.save(state, weights)
    changed = plan_extractions([(spec, photos)], cache, shards=2)[0]
    assert len(loads) == 2 and changed.meta["weights_digest"] != first.meta["weights_digest"]
    assert changed.entry.key != first.entry.key


def test_a_worker_loads_a_backbone_once_for_all_its_shards(tmp_path, pets_root):
    from library.pretrained.features import CacheEntry, extract_shard, worker_backbone

    spec, photos = BackboneSpec("resnet18", "none"), load_pets(pets_root, "test")
    entry = CacheEntry(tmp_path, "key", shards=2)
    first, second = (extract_shard(spec, photos, entry, i, batch_size=8) for i in range(2))
    assert worker_backbone.cache_info().hits >= 1 and second["load_s"] < 0.01 and not entry.missing()
