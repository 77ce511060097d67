"""The airbench-class family (issue 14's first part): the whitening stem whitens, the network builds from the
registry at airbench94's size, its options are searchable like any model's, and training fits the stem first."""
import math

import pytest
import torch

from library.config import ConfigError
from library.data import ImageData, ImageSet
from library.models import create_model
from library.models.airbench import WhiteningStem, patch_second_moments
from library.search.space import SearchSpace
from library.train.loop import train
from library.train.recipe import TrainConfig


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Images whose neighbouring pixels and channels are strongly correlated, as photos are: nothing like white."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 8, 8, generator=g)
    base = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    tint = torch.rand(n, 3, 1, 1, generator=g)
    return (0.7 * base + 0.2 * tint + 0.1 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)


def test_the_whitening_stem_whitens_the_training_patches():
    images = smooth_images(200)
    raw = patch_second_moments(images, 2)
    off_diagonal = raw - torch.diag(torch.diag(raw))
    assert off_diagonal.abs().max() > 0.1  # the patches are far from white to begin with
    stem = WhiteningStem(3, kernel=2, eps=1e-9)
    stem.fit(images)
    with torch.no_grad():
        out = stem.conv.weight[:12].flatten(1).double()  # the whitening half (the other is its negative)
    moments = out @ raw @ out.T  # E[(Wp)(Wp)ᵀ] over the same patches
    torch.testing.assert_close(moments, torch.eye(12, dtype=torch.float64), atol=2e-3, rtol=0)
    assert torch.equal(stem.conv.weight[12:], -stem.conv.weight[:12])
    assert not stem.conv.weight.requires_grad and stem.conv.bias.requires_grad


def test_airbench_cnn_builds_at_airbench94s_size_and_takes_other_widths():
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("airbench_cnn")
    with FlopCounterMode(display=False) as flops:
        logits = model(torch.rand(1, 3, 32, 32))
    assert logits.shape == (1, 10)
    assert flops.get_total_flops() / 1e6 == pytest.approx(236, rel=0.01)  # airbench94's 236 MFLOPs per image
    small = create_model("airbench_cnn", width1=16, width2=32, width3=48, in_chans=1)
    assert small(torch.rand(2, 1, 28, 28)).shape == (2, 10) and small.num_features == 48
    with pytest.raises(ConfigError, match="widths"):
        create_model("airbench_cnn", width2=0)


def test_its_options_are_searched_and_validated_like_any_models():
    base = TrainConfig(model="airbench_cnn")
    space = SearchSpace({"width1": [32, 64], "width2": [128, 256], "bn_momentum": (0.2, 0.6),
                         "logit_scale": (0.05, 0.2, "log"), "lr": (1e-3, 1e-2, "log")}, base)
    cfg = space.apply({"width1": 32, "width2": 128, "bn_momentum": 0.3, "logit_scale": 0.1, "lr": 2e-3})
    assert cfg.model_kw == {"width1": 32, "width2": 128, "bn_momentum": 0.3, "logit_scale": 0.1}
    with pytest.raises(ConfigError, match="unknown search-space key 'width'"):  # w, 2w, 4w is not this family's
        SearchSpace({"width": [32]}, base)
    with pytest.raises(ConfigError, match="width3"):
        SearchSpace({"width3": [0, 64]}, base)


def test_training_fits_the_stem_from_the_training_images_first():
    images = (smooth_images(96, seed=1) * 255).to(torch.uint8)
    labels = torch.arange(96) % 10
    split = ImageSet(images, labels)
    data = ImageData("smooth", split, ImageSet(images[:32], labels[:32]), ImageSet(images[:32], labels[:32]),
                     classes=tuple(str(k) for k in range(10)))
    cfg = TrainConfig(model="airbench_cnn", model_kw={"width1": 8, "width2": 16, "width3": 16}, epochs=1,
                      batch_size=32, warmup_epochs=0.5, crop="none", flip=False)
    result = train(cfg, data)
    assert math.isfinite(result.history[0]["train_loss"])
    fitted = WhiteningStem(3)
    fitted.fit(result.model.normalize(images[:5000].float() / 255))
    torch.testing.assert_close(result.model.body[0].conv.weight, fitted.conv.weight)  # fitted, and never trained
