"""Model zoo. Importing this package registers every model."""
from .registry import create_model, list_models, register_model
from . import digits, lstm, m5, resnet, vgg  # noqa: F401  (register the models)

__all__ = ["create_model", "list_models", "register_model"]
