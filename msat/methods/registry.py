"""The one method registry: ``register_method`` (a class decorator), ``get_method``, ``list_methods``.

Name validation lives here: an unknown name lists the registered ones.
"""
from __future__ import annotations

import fnmatch

from ..utils import UnknownNameError
from .base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Register a :class:`Method` subclass under ``cls.name`` (a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
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


__all__ = ["register_method", "list_methods", "get_method"]
