"""MSAT: multistage adaptive threshold ANN-to-SNN conversion (reference implementation)."""
from .config import ConfigError, ConversionConfig, conversion_config
from .conversion import ConversionError, SpikingNetwork, convert
from .models import create_model, list_models, register_model
from .simulation import Observer, SimulationError, simulate

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_model", "convert", "simulate", "conversion_config",
           "ConversionConfig", "SpikingNetwork", "Observer", "ConfigError", "ConversionError", "SimulationError"]
