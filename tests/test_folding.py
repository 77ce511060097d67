"""BatchNorm folded into its convolution for inference: the same features from fewer passes, timm's
BatchNormAct2d keeping its activation, the caller's model untouched, and no folding where registration order
is not the data flow."""
import torch
from torch import nn

from library.pretrained.backbones import create_backbone
from library.pretrained.folding import fold_batchnorm, folded_for_inference


def _trained_statistics(model: nn.Module) -> nn.Module:
    """Random running statistics and affine maps: a fresh model's (mean 0, var 1, identity) would fold to nothing."""
    generator = torch.Generator().manual_seed(0)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
        bn.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def test_folded_timm_backbones_compute_the_same_features_and_leave_the_model_as_it_was():
    x = torch.randn(2, 3, 96, 96)
    for name, pairs in (("resnet18", 20), ("tf_efficientnet_lite0", 49)):  # BatchNorm2d; BatchNormAct2d, Conv2dSame too
        model = _trained_statistics(create_backbone(name, weights="none").model)
        batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        folded, count = fold_batchnorm(model)
        assert count == pairs and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batchnorms  # a copy was folded
        with torch.no_grad():
            expected, got = model.forward_features(x), folded.forward_features(x)
        assert torch.allclose(got, expected, atol=1e-4 * float(expected.abs().max()))
        assert folded_for_inference(model, x) is not model


class _NormFirst(nn.Module):
    """A convolution registered before the BatchNorm that, in its forward, comes first."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward_features(self, x):
        return self.conv(self.bn(x))


def test_a_pair_that_registration_order_gets_wrong_is_not_folded():
    model = _trained_statistics(_NormFirst())
    assert fold_batchnorm(model)[1] == 1  # the heuristic pairs them
    assert folded_for_inference(model, torch.randn(2, 4, 8, 8)) is model  # the check on a sample refuses it
