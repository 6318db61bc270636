"""Model zoo. Importing this package registers every model; ``build_model`` builds any ANN the
suite converts (a registered model, a torchvision classifier, your own class)."""
from .registry import create_model, list_models, register_model
from . import digits, lstm, m5, resnet, vgg  # noqa: F401  (register the models)
from .activations import QCFS, activation_of, apply_activation
from .build import build_model

__all__ = ["create_model", "list_models", "register_model", "build_model", "QCFS", "activation_of",
           "apply_activation"]
