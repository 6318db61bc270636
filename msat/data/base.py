"""The data contract shared by every dataset family."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from ..utils import UserError


class DatasetUnavailableError(UserError, RuntimeError):
    """A dataset is missing and cannot be downloaded; the message says how to provide it."""


class DatasetError(UserError, ValueError):
    """Data that is there but wrong (a malformed file, labels out of range, a config that does not fit it)."""


@dataclass
class DataBundle:
    name: str
    train: Dataset            # training split, training transform
    test: Dataset             # test split, test transform
    calib: Dataset            # training split, test transform (threshold calibration); see cfg calib_transform
    num_classes: int
    input_shape: tuple        # per-sample shape, e.g. (1, 8, 8)
    model_kwargs: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)


def build_loader(ds: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A deterministic DataLoader: the shuffle order depends only on ``seed``."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                      num_workers=num_workers, drop_last=drop_last,
                      persistent_workers=num_workers > 0)


def dataset_root(cfg) -> str:
    """The configured ``root``, with ``~`` expanded."""
    root = cfg["root"]
    if not root:
        raise DatasetError(f"dataset {cfg['name']!r}: config key 'root' is empty")
    return os.path.expanduser(str(root))


def unavailable(name: str, root: str, how: str, cause: BaseException | None = None) -> DatasetUnavailableError:
    """The one error for a missing dataset: which dataset, where it was looked for, how to provide it."""
    msg = f"dataset {name!r} is not available under root {root!r}. {how}"
    if cause is not None:
        msg += f" (cause: {type(cause).__name__}: {cause})"
    return DatasetUnavailableError(msg)
