"""Datasets: ``build_data(cfg) -> DataBundle``; one builder per dataset family."""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Callable

from ..config import from_mapping
from ..utils import UnknownNameError, to_plain
from . import schemas as S
from .base import DataBundle, DatasetError, DatasetUnavailableError, build_loader
from .digits import build_digits
from .base import dataset_root
from .fashion import build_fashion_mnist, locate
from .imdb import build_imdb
from .speech import build_speech_commands
from .synthetic import (build_synthetic_cifar, build_synthetic_digits, build_synthetic_fashion, build_synthetic_imagenet,
                        build_synthetic_imdb, build_synthetic_speech)
from .vision import Cutout, build_cifar, build_imagenet

# name -> (builder, the schema of its config node)
_BUILDERS: dict[str, tuple[Callable[..., DataBundle], type]] = {
    "digits": (build_digits, S.DigitsConfig),
    "fashion_mnist": (build_fashion_mnist, S.FashionMNISTConfig),
    "cifar10": (build_cifar, S.CifarConfig),
    "cifar100": (build_cifar, S.CifarConfig),
    "imagenet": (build_imagenet, S.ImageNetConfig),
    "imdb": (build_imdb, S.IMDBConfig),
    "speech_commands": (build_speech_commands, S.SpeechConfig),
    "synthetic_digits": (build_synthetic_digits, S.SyntheticImagesConfig),
    "synthetic_fashion_mnist": (build_synthetic_fashion, S.SyntheticFashionConfig),
    "synthetic_cifar": (build_synthetic_cifar, S.SyntheticImagesConfig),
    "synthetic_cifar100": (build_synthetic_cifar, S.SyntheticImagesConfig),
    "synthetic_imagenet": (build_synthetic_imagenet, S.SyntheticImagesConfig),
    "synthetic_imdb": (build_synthetic_imdb, S.SyntheticIMDBConfig),
    "synthetic_speech": (build_synthetic_speech, S.SyntheticSpeechConfig),
}


def list_datasets() -> list[str]:
    """Names accepted by ``build_data`` (``cfg.name``), sorted."""
    return sorted(_BUILDERS)


def dataset_schemas() -> list[type]:
    """The schema of every dataset family (one per builder, in registration order)."""
    return list(dict.fromkeys(schema for _, schema in _BUILDERS.values()))


def dataset_config(cfg) -> dict:
    """The dataset node checked against its family's schema (``msat.data.schemas``), as a complete dict."""
    name = to_plain(cfg)["name"] if cfg is not None else None
    if name not in _BUILDERS:
        raise UnknownNameError(f"unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}")
    return dataclasses.asdict(from_mapping(_BUILDERS[name][1], cfg, "dataset"))


def build_data(cfg, artifacts: dict | None = None, calib_transform: str = "test") -> DataBundle:
    """Build the dataset named by ``cfg.name``; an unknown name lists the valid ones.

    ``artifacts`` (a checkpoint's ``artifacts``) makes evaluation reuse the training vocabulary (IMDB).
    ``calib_transform`` (``calib.transform``: test | train | crop_flip) is the transform of the
    training images in ``bundle.calib``, where the dataset has augmentations (vision datasets).
    """
    cfg = dataset_config(cfg)
    builder = _BUILDERS[cfg["name"]][0]
    params = inspect.signature(builder).parameters
    kwargs = {}
    if artifacts and "artifacts" in params:
        kwargs["artifacts"] = artifacts
    if "calib_transform" in params:
        kwargs["calib_transform"] = calib_transform
    return builder(cfg, **kwargs)


def _files_present(cfg: dict) -> bool:
    """Whether the files a real dataset reads are where its builder looks (no data is read; synthetic and
    bundled datasets always are; Fashion-MNIST is located, unpacking Debian's files once)."""
    name = cfg["name"]
    if name in ("cifar10", "cifar100"):
        return os.path.isdir(os.path.join(dataset_root(cfg), {"cifar10": "cifar-10-batches-py",
                                                               "cifar100": "cifar-100-python"}[name]))
    if name == "imagenet":
        return all(os.path.isdir(os.path.join(dataset_root(cfg), s)) for s in ("train", "val"))
    if name == "speech_commands":
        return os.path.isdir(os.path.join(dataset_root(cfg), "SpeechCommands", "speech_commands_v0.02"))
    if name == "imdb":
        return all(os.path.isfile(os.path.join(dataset_root(cfg), f"{s}.jsonl")) for s in ("train", "test"))
    if name == "fashion_mnist":
        locate(cfg)                 # the one unavailable-dataset error when absent; the files checked when there
    return True


def check_available(cfg) -> None:
    """Refuse, before any job starts, a dataset whose files are absent (and ``download`` is off): the builder's
    own :class:`DatasetUnavailableError` line (how to get the data). A cheap probe: no data is loaded."""
    cfg = dataset_config(cfg)
    if not cfg.get("download") and not _files_present(cfg):
        _BUILDERS[cfg["name"]][0](cfg)      # raises the builder's message, which says where and how to get the files


__all__ = ["Cutout", "DataBundle", "DatasetError", "DatasetUnavailableError", "build_data", "build_loader", "check_available",
           "dataset_config", "dataset_schemas", "list_datasets"]
