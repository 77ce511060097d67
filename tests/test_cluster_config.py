"""cluster.yaml against the cluster-config schema and validator shipped in the ray package."""
import copy
import json
import re
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
    assert "MLFLOW_TRACKING_URI" not in " ".join(config["worker_start_ray_commands"])  # the driver logs, on the head
    for start in (head_start, " ".join(config["worker_start_ray_commands"])):
        assert "CV_STORAGE_PATH=/mnt/shared/" in start and "CV_DATA_ROOT=/mnt/shared/" in start
    assert any("pip install" in c and "cv-campaigns" in c for c in config["setup_commands"])


def _flag(command: str, flag: str) -> str | None:
    found = re.search(rf"{flag}[= ](\S+)", command)
    return found.group(1) if found else None


def test_no_unauthenticated_service_listens_beyond_loopback(config):
    """MLflow and the dashboard bind the head's loopback (users come through SSH forwarding); the nodes' security
    group opens Ray's fixed ports to its own members only and SSH to one address range, nothing to the world."""
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not any("0.0.0.0" in c for c in commands)
    [mlflow_server] = [c for c in commands if "mlflow server --" in c]
    assert _flag(mlflow_server, "--host") == "127.0.0.1"
    [head] = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    assert _flag(head, "--dashboard-host") == "127.0.0.1"

    for node_type in config["available_node_types"].values():  # never the launcher's wide-open default group
        assert node_type["node_config"]["SecurityGroupIds"] == ["sg-REPLACE_ME"]
    rules = json.loads((REPO / "cluster-security-group.json").read_text())
    opened = set()
    for rule in rules:
        assert rule["IpProtocol"] == "tcp" and not rule.get("Ipv6Ranges")
        if rule["FromPort"] == 22:
            assert [r["CidrIp"] for r in rule["IpRanges"]] == ["YOUR_IP/32"]
            continue
        assert not rule.get("IpRanges") and [g["GroupId"] for g in rule["UserIdGroupPairs"]] == ["sg-REPLACE_ME"]
        opened |= set(range(rule["FromPort"], rule["ToPort"] + 1))
    assert not {5000, 8265, 10001} & opened  # MLflow, the dashboard, Ray's client server: loopback only
    for command in [head] + [c for c in config["worker_start_ray_commands"] if "ray start" in c]:
        ports = {int(p) for p in re.findall(r"--(?:port|[a-z-]+-port)=(\d+)", command)}
        low, high = int(_flag(command, "--min-worker-port")), int(_flag(command, "--max-worker-port"))
        assert ports - {low, high} <= opened and set(range(low, high + 1)) <= opened, ports - opened
