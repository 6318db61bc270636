"""One model registry: ``@register_model``, ``create_model(name, ...)``, ``list_models()``."""
from __future__ import annotations

import fnmatch
from typing import Callable

import torch.nn as nn

from ..utils import UnknownNameError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)
