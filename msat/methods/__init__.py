"""Conversion methods: one registry (``register_method``, ``get_method``, ``list_methods``).

A method is a recipe over the shared pipeline of ``msat.conversion`` (trace, fold BN, replace the
activations by neurons, calibrate the thresholds) and the one engine of ``msat.simulation``. Each
method class declares, in one place: the ANN it converts (``ann``), its neuron dynamics
(``dynamics``, a pure step function of ``msat.neurons``), the preset of the neuron/calib/sc/pool
groups it runs with (``preset``), its parameters (``params``, a dataclass), how the thresholds
are calibrated (``thresholds``), the stages after conversion that may simulate (``after_convert``),
a pre-simulation per input batch (``presimulate``: SRP, COS) and its label in tables and plots.

**A method is one file.** Importing this package imports every module of it (``pkgutil``
discovery), and every module of the namespace package ``msat_methods`` wherever it is on the path
(your own methods, outside this repository); each registers its classes with ``@register_method``.
The Hydra group ``method=<name>`` is generated from the registry (``msat.hydra_schema``): a new file
``msat/methods/<family>.py`` (or ``msat_methods/<family>.py``) is the only edit a new method needs.
Bundled families: ``classic.py`` (if_max, robust_norm, vth_scaled, opi, burst), ``msat.py``,
``snn_calib.py``, ``qcfs.py``, ``spicalib.py``, ``srp.py``, ``cos.py``.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import CalibContext, Method
from .registry import get_method, list_methods, register_method

# modules that are not method families
_INFRASTRUCTURE = ("base", "registry")
# the order of the bundled families in tables (``list_methods``); any other module follows, by name
BUNDLED_ORDER = ("classic", "msat", "snn_calib", "qcfs", "spicalib", "srp", "cos")
# the namespace package searched for methods outside this repository
PLUGIN_PACKAGE = "msat_methods"


def _family_key(name: str) -> tuple[int, str]:
    return (BUNDLED_ORDER.index(name) if name in BUNDLED_ORDER else len(BUNDLED_ORDER), name)


def _discover() -> None:
    """Import every method module of this package, then those of ``msat_methods`` (if any is on the path)."""
    own = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in _INFRASTRUCTURE]
    for name in sorted(own, key=_family_key):
        importlib.import_module(f"{__name__}.{name}")
    try:
        plugins = importlib.import_module(PLUGIN_PACKAGE)
    except ModuleNotFoundError as e:
        if e.name != PLUGIN_PACKAGE:
            raise
        return
    for m in sorted(pkgutil.iter_modules(plugins.__path__), key=lambda m: m.name):
        importlib.import_module(f"{PLUGIN_PACKAGE}.{m.name}")


_discover()

__all__ = ["Method", "CalibContext", "register_method", "list_methods", "get_method", "BUNDLED_ORDER",
           "PLUGIN_PACKAGE"]
