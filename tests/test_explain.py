"""C1/C2/E1/E2: top-k, feature maps, class activation maps and saliency, on registry and timm models; the
inspect job end to end."""
import subprocess
import sys

import mlflow
import pytest
import torch

from conftest import REPO, job_env
from library.pretrained.backbones import create_backbone
from library.explain import blend, class_activation_map, early_middle_late, saliency_map, top_k
from library.models import create_model


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"resnet_cifar": create_model("resnet_cifar", widths=(16, 32)),  # A9's CIFAR ResNet, narrow
            "resnet18": create_backbone("resnet18", weights="none").model}


@pytest.mark.parametrize("name, size", [("resnet_cifar", 32), ("resnet18", 96)])
def test_cam_and_saliency_are_input_sized_unit_range_maps(models, name, size):
    model = models[name].train()
    x = torch.rand(3, 3, size, size)
    for compute in (class_activation_map, saliency_map):
        heat = compute(model, x)
        assert heat.shape == (3, size, size)
        assert heat.min() >= 0 and heat.max() <= 1
        assert torch.allclose(heat.flatten(1).amax(1), torch.ones(3)) and torch.allclose(heat.flatten(1).amin(1), torch.zeros(3))
    for compute in (class_activation_map, saliency_map, lambda m, images: top_k(m, images)):
        model.train()
        compute(model, x)
        assert model.training  # the mode is restored
        model.eval()
        compute(model, x)
        assert not model.training


def test_cam_of_a_chosen_class_is_that_class_weights_over_the_feature_map(models):
    model = models["resnet_cifar"].eval()
    x = torch.rand(1, 3, 32, 32)
    features = model.forward_features(x).detach()  # 1×C×H×W
    raw = torch.einsum("chw,c->hw", features[0], model.fc.weight[4])  # Σ_c w[4, c] F_c, by hand
    expected = torch.nn.functional.interpolate(raw[None, None], size=(32, 32), mode="bilinear")[0, 0]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert torch.allclose(class_activation_map(model, x, torch.tensor([4]))[0], expected, atol=1e-5)


def test_cam_refuses_a_transformer():
    vit = create_backbone("vit_tiny_patch16_224", weights="none").model
    with pytest.raises(ValueError, match="global pooling"):
        class_activation_map(vit, torch.rand(1, 3, 224, 224))


def test_top_k_and_feature_maps(models):
    model = models["resnet18"]
    results = top_k(model, torch.rand(2, 3, 64, 64), k=4)
    assert len(results) == 2 and all(len(r.indices) == 4 for r in results)
    assert all(r.probabilities == sorted(r.probabilities, reverse=True) and sum(r.probabilities) <= 1 + 1e-6
               for r in results)
    maps = early_middle_late(model, torch.rand(1, 3, 64, 64), per_stage=5)
    assert list(maps) == ["early", "middle", "late"] and all(len(v) == 5 for v in maps.values())
    assert all(0 <= m.min() and m.max() <= 1 for items in maps.values() for _, m in items)
    assert maps["early"][0][1].shape[-1] > maps["late"][0][1].shape[-1]  # resolution falls with depth
    image, heat = torch.rand(3, 8, 8), torch.rand(8, 8)
    mixed = blend(image, heat, alpha=0.0)
    assert torch.allclose(mixed, image)


def test_inspect_job_logs_its_figures(tmp_path):
    env = job_env(tmp_path)
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "inspect_pretrained.py"), "--smoke-test"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["inspect_pretrained_smoke"]).iloc[0]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])}
    assert {"top_k.png", "top_k.csv", "feature_maps.png", "cam.png", "saliency.png"} <= artifacts
    assert run["metrics.last_layer_input_width"] == 1280

