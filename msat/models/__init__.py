"""Model zoo. Importing this package registers every model."""
from .registry import create_model, list_models, register_model
from . import digits  # noqa: F401  (registers digits_cnn)

__all__ = ["create_model", "list_models", "register_model"]
