"""cluster.yaml against the cluster-config schema and validator shipped in the ray package."""
import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

from conftest import REPO


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_matches_rays_schema(config):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(fillout_defaults(copy.deepcopy(config)))  # Ray's own checks on top of the schema


def test_cluster_has_a_cpu_head_and_autoscaling_spot_gpu_workers(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no trials on the head
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert len(workers) == 1 and workers[0]["min_workers"] == 0 and workers[0]["max_workers"] >= 1
    assert workers[0]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"


def test_mlflow_and_shared_storage_reach_the_jobs(config):
    head_start = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in head_start and "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head_start
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in " ".join(config["worker_start_ray_commands"])
    for start in (head_start, " ".join(config["worker_start_ray_commands"])):
        assert "CV_STORAGE_PATH=/mnt/shared/" in start and "CV_DATA_ROOT=/mnt/shared/" in start
    assert any("pip install" in c and "cv-campaigns" in c for c in config["setup_commands"])
