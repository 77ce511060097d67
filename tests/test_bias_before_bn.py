"""A10a: a bias before BatchNorm changes neither the output nor the other gradients, and gets no gradient."""
import pytest

from library.train.bias_before_bn import bias_before_bn_check


@pytest.mark.parametrize("model", ["mish_cnn_bn", "allconv_cnn", "improved_cnn"])
def test_bias_before_batchnorm_is_cancelled(model):
    check = bias_before_bn_check(model, batch=8)
    assert check["biases_added"] >= 3
    assert check["max_abs_logit_diff"] <= 1e-10 * max(1.0, check["max_abs_logit"])
    assert check["max_abs_grad_diff"] <= 1e-10 * max(1.0, check["max_abs_grad"])
    assert check["max_abs_bias_grad"] <= 1e-10


def test_a_model_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="no bias-free conv"):
        bias_before_bn_check("mish_cnn")
