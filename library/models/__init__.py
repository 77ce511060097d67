"""The model registry. Importing this package registers every model; all take [0, 1] images."""
from . import cnn, resnet  # noqa: F401  (registration side effect)
from .layers import Classifier, Normalize, first_conv, init_weights
from .registry import create_model, list_models, model_kwargs, register_model

__all__ = ["Classifier", "Normalize", "create_model", "first_conv", "init_weights", "list_models", "model_kwargs",
           "register_model"]
