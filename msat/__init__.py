"""MSAT: multistage adaptive threshold ANN-to-SNN conversion (reference implementation)."""
from .config import ConfigError, ConversionConfig, conversion_config
from .conversion import ConversionError, SpikingNetwork, convert
from .data import list_datasets
from .methods import get_method, list_methods, register_method
from .models import create_model, list_models, register_model
from .simulation import Observer, SimulationError, simulate
from .utils import UserError

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "list_methods", "get_method", "register_method",
           "list_datasets", "convert", "simulate", "conversion_config", "ConversionConfig", "SpikingNetwork",
           "Observer", "UserError", "ConfigError", "ConversionError", "SimulationError"]
