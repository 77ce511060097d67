"""Class maximisation (D8) and feature inversion (D9) on a small registry CNN."""
import pytest
import torch

from library.models import create_model
from library.adversarial.synthesis import early_middle_late_layers, invert_features, maximise_class


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("mish_cnn", num_classes=10).train()  # train mode: the functions must restore it


def test_class_maximisation_raises_the_class_probability_and_keeps_the_pixel_range(model):
    start = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    images = maximise_class(model, start, [3, 7], steps=30, lr=0.05, jitter=2)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1 and model.training
    with torch.no_grad():
        before = model.eval()(start).log_softmax(1)[0]
        after = model(images).log_softmax(1)
    assert after[0, 3] > before[3] + 0.2 and after[1, 7] > before[7] + 0.2  # a random net saturates soon


def test_inversion_picks_three_layers_in_forward_order_and_closes_in_on_the_image(model):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    layers = early_middle_late_layers(model, image)
    assert len(layers) == 3 and len(set(layers)) == 3 and model.training
    _, at_start = invert_features(model, image, layers, steps=0)
    images, distances = invert_features(model, image, layers, steps=40)
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1 and model.training
    assert all(d < 0.5 * d0 for d, d0 in zip(distances, at_start))


def test_inverting_an_unknown_layer_is_a_clear_error(model):
    with pytest.raises(ValueError, match="no module named nope"):
        invert_features(model, torch.rand(1, 3, 32, 32), ["nope"], steps=1)
