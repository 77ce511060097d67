import pytest
import torch
from torch import nn

from library.config import ConfigError
from library.models import Classifier, create_model, first_conv, list_models, model_kwargs


def _images_for(name: str, n: int = 3) -> torch.Tensor:
    """A batch in the shape the model is built for by default: CIFAR's 3×32×32, or MNIST's 1×28×28."""
    kw = model_kwargs(name)
    chans = kw.get("in_chans", 3)
    side = kw.get("image_size", 32 if chans == 3 else 28)
    return torch.rand(n, chans, side, side)


@pytest.mark.parametrize("name", list_models())
def test_every_model_maps_unit_range_images_to_finite_logits(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = _images_for(name)
    logits = model(x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    if isinstance(model, Classifier):  # the global-pool models: a feature map and pooled features
        features = model.forward_features(x)
        assert features.ndim == 4
        assert model.forward_head(features, pre_logits=True).shape == (3, model.num_features)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert model.init_scheme  # every model says how it was initialised


@pytest.mark.parametrize("name", [n for n in list_models() if "in_chans" in model_kwargs(n)])
def test_models_take_other_channel_counts(name):
    size = {"image_size": 28} if "image_size" in model_kwargs(name) else {}  # flatten heads are built for a size
    assert create_model(name, in_chans=1, num_classes=10, **size)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_mish_cnn_has_exactly_the_layers_of_a1():
    model = create_model("mish_cnn")
    body = [type(m) for m in model.body]
    assert body == [nn.Conv2d, nn.Mish, nn.MaxPool2d, nn.Conv2d, nn.Mish, nn.Conv2d, nn.Mish]
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 32, (7, 7)), (32, 64, (3, 3)),
                                                                               (64, 64, (3, 3))]
    pool = model.body[2]
    assert pool.kernel_size == 2 and pool.stride == 2
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and (model.fc.in_features, model.fc.out_features) == (64, 10)


def test_mish_cnn_bn_puts_batchnorm_after_each_bias_free_hidden_conv():
    body = list(create_model("mish_cnn_bn").body)
    kinds = [type(m).__name__ for m in body]
    assert kinds == ["Conv2d", "BatchNorm2d", "Mish", "MaxPool2d", "Conv2d", "BatchNorm2d", "Mish", "Conv2d",
                     "BatchNorm2d", "Mish"]
    assert all(m.bias is None for m in body if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("norm, kind", [("bn", nn.BatchNorm2d), ("gn", nn.GroupNorm), ("ln", nn.GroupNorm)])
def test_mish_cnn_takes_each_normalisation_for_the_batch_size_study(norm, kind):
    body = list(create_model("mish_cnn", norm=norm).body)
    assert [type(m) for m in body][:3] == [nn.Conv2d, kind, nn.Mish]
    if norm == "ln":  # one group: statistics over C×H×W of each image
        assert all(m.num_groups == 1 for m in body if isinstance(m, nn.GroupNorm))


def test_table1_cnn_has_exactly_the_layers_of_seed_001():
    model = create_model("table1_cnn")
    kinds = [type(m).__name__ for m in model][1:]  # after Normalize
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "AvgPool2d"] * 3 + ["Flatten", "Linear", "BatchNorm1d", "ReLU",
                                                                           "Linear"]
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(32, (5, 5), (2, 2)), (32, (5, 5), (2, 2)),
                                                                           (64, (5, 5), (2, 2))]
    assert all(p.kernel_size == 2 and p.stride == 2 and p.padding == 0 for p in model if isinstance(p, nn.AvgPool2d))
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 4 * 4, 64), (64, 10)]


def test_table1_cnn_raw_pipeline_sees_pixel_values():
    model = create_model("table1_cnn", mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(model[0](x), x * 255)


def test_allconv_a7_adds_twenty_plain_5x5_convs_and_no_batchnorm():
    base = create_model("allconv_cnn")
    deep = create_model("allconv_cnn", extra_layers=20, norm="none", init="torch")
    convs = lambda m: [c for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert len(convs(deep)) == len(convs(base)) + 20
    extra = convs(deep)[1:21]
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) and c.stride == (1, 1) for c in extra)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deep.modules())
    assert not any(isinstance(m, nn.Linear) for m in deep.body.modules())  # all-convolutional up to the classifier


def test_allconv_a8_keeps_every_conv_and_adds_no_norm():
    plain = create_model("allconv_cnn", extra_layers=20, norm="none")
    fixed = create_model("allconv_cnn", extra_layers=20, norm="none", residual=True)
    count = lambda m, kind: sum(isinstance(c, kind) for c in m.modules())  # noqa: E731
    assert count(fixed, nn.Conv2d) == count(plain, nn.Conv2d)
    assert count(fixed, nn.BatchNorm2d) == count(fixed, nn.GroupNorm) == 0
    assert "1/√20" in fixed.init_scheme


def test_vit_cifar_is_a_four_block_transformer_on_patches():
    model = create_model("vit_cifar")
    assert len(model.vit.blocks) == 4
    assert model.vit.patch_embed.num_patches == 64 and model.vit.pos_embed.shape[1] == 65  # + the class token
    features = model.forward_features(torch.rand(2, 3, 32, 32))
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)


def test_resnet_cifar_follows_a9():
    model = create_model("resnet_cifar")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert len(shortcuts) == 3 and all(c.stride == (2, 2) for c in shortcuts)
    assert model.forward_features(torch.rand(1, 3, 32, 32)).shape[-2:] == (4, 4)  # the final 4×4 map
    # He init: the std of a conv's weights is sqrt(2 / fan_out)
    c = convs[1]
    fan_out = c.out_channels * c.kernel_size[0] * c.kernel_size[1]
    assert c.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)


@pytest.mark.parametrize("norm", ["bn", "gn", "ln", "none"])
@pytest.mark.parametrize("residual", [True, False])
def test_improved_cnn_family_options(norm, residual):
    model = create_model("improved_cnn", widths=(8, 16), depth=2, kernel=5, norm=norm, act="mish",
                         residual=residual, dropout=0.1)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert first_conv(model).kernel_size == (5, 5)
    assert all((c.bias is None) == (norm != "none") for c in model.modules() if isinstance(c, nn.Conv2d))


@pytest.mark.parametrize("kwargs, match", [({"depthh": 2}, "no option 'depthh'"), ({"norm": "xx"}, "unknown norm"),
                                           ({"kernel": 4}, "odd")])
def test_bad_model_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model("improved_cnn", **kwargs)
    with pytest.raises(ConfigError, match="registered models"):
        create_model("no_such_model")


def test_models_normalise_inside():
    model = create_model("mish_cnn")
    assert isinstance(model, Classifier)
    x = torch.rand(2, 3, 32, 32)
    expected = (x - torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(x), expected)
