"""Datasets: ``build_data(cfg) -> DataBundle``; one builder per dataset family."""
from __future__ import annotations

import inspect
from typing import Callable

from ..utils import UnknownNameError
from .base import DataBundle, DatasetUnavailableError, build_loader
from .digits import build_digits
from .imdb import build_imdb
from .speech import build_speech_commands
from .synthetic import (build_synthetic_cifar, build_synthetic_imagenet, build_synthetic_imdb,
                        build_synthetic_speech)
from .vision import Cutout, build_cifar, build_imagenet

_BUILDERS: dict[str, Callable[..., DataBundle]] = {
    "digits": build_digits,
    "cifar10": build_cifar,
    "cifar100": build_cifar,
    "imagenet": build_imagenet,
    "imdb": build_imdb,
    "speech_commands": build_speech_commands,
    "synthetic_cifar": build_synthetic_cifar,
    "synthetic_imagenet": build_synthetic_imagenet,
    "synthetic_imdb": build_synthetic_imdb,
    "synthetic_speech": build_synthetic_speech,
}


def list_datasets() -> list[str]:
    """Names accepted by ``build_data`` (``cfg.name``), sorted."""
    return sorted(_BUILDERS)


def build_data(cfg, artifacts: dict | None = None) -> DataBundle:
    """Build the dataset named by ``cfg.name``; an unknown name lists the valid ones.

    ``artifacts`` (a checkpoint's ``artifacts``) makes evaluation reuse the training vocabulary (IMDB).
    """
    name = cfg["name"]
    if name not in _BUILDERS:
        raise UnknownNameError(f"unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}")
    builder = _BUILDERS[name]
    if artifacts and "artifacts" in inspect.signature(builder).parameters:
        return builder(cfg, artifacts=artifacts)
    return builder(cfg)


__all__ = ["Cutout", "DataBundle", "DatasetUnavailableError", "build_data", "build_loader", "list_datasets"]
