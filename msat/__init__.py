"""MSAT: multistage adaptive threshold ANN-to-SNN conversion (reference implementation)."""
from .config import ConfigError, ConversionConfig
from .conversion import SpikingNetwork, conversion_config, convert
from .data import list_datasets
from .methods import get_method, list_methods, register_method
from .models import create_model, list_models, register_model
from .simulation import Observer, simulate
from .utils import VERSION as __version__
from .utils import ConversionError, SimulationError, UserError

__all__ = ["create_model", "list_models", "register_model", "list_methods", "get_method", "register_method",
           "list_datasets", "convert", "simulate", "conversion_config", "ConversionConfig", "SpikingNetwork",
           "Observer", "UserError", "ConfigError", "ConversionError", "SimulationError"]
