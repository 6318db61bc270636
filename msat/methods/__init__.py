"""Conversion methods: one registry (``register_method``, ``get_method``, ``list_methods``).

A method is a recipe over the shared pipeline of ``msat.conversion`` (trace, fold BN, replace the
activations by neurons, calibrate the thresholds) and the one engine of ``msat.simulation``. Each
method class declares, in one place: the ANN it converts (``ann``), its neuron dynamics
(``dynamics``, a pure step function of ``msat.neurons``), the preset of the neuron/calib/sc/pool
groups it runs with (``preset``), its parameters (``params``, a dataclass), how the thresholds
are calibrated (``thresholds``), the stages after conversion that may simulate (``after_convert``),
a pre-simulation per input batch (``presimulate``: SRP, COS) and its label in tables and plots. One file per
method family: ``classic.py`` (if_max, robust_norm, vth_scaled, opi, burst), ``msat.py``,
``snn_calib.py``, ``qcfs.py``, ``spicalib.py``, ``srp.py``, ``cos.py``.

The Hydra group ``method=<name>`` (``conf/method/<name>.yaml``) selects a method; its node (the
parameters and the preset) is generated from the class by ``msat.hydra_schema.register``.
"""
from __future__ import annotations

import fnmatch

from ..utils import UnknownNameError
from .base import CalibContext, Method

_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Register a :class:`Method` subclass under ``cls.name`` (a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    if not cls.label:
        raise ValueError(f"method {cls.name!r} has no label")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a shell-style ``pattern``, in registration order."""
    return [n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)]


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown method {name!r}; valid methods: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


from . import classic, msat, snn_calib, qcfs, spicalib, srp, cos  # noqa: E402,F401  (register the methods)

__all__ = ["Method", "CalibContext", "register_method", "list_methods", "get_method"]
