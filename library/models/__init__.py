"""The model registry. Importing this package registers every model; all take [0, 1] images."""
from . import airbench, allconv, cnn, mnist, resnet, vit  # noqa: F401  (registration side effect)
from .layers import Classifier, Normalize, first_conv, init_weights
from .registry import create_model, list_models, model_hints, model_kwargs, register_model
from .scratch import Conv2d, conv2d
from .scratch_pool import MaxPool2d, max_pool2d

__all__ = [
    "Classifier", "Conv2d", "MaxPool2d", "Normalize", "conv2d", "create_model", "first_conv", "init_weights",
    "list_models", "max_pool2d", "model_hints", "model_kwargs", "register_model",
]
