"""scikit-learn's bundled 8x8 digits: real data, offline, the default everywhere."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import DataBundle


def build_digits(cfg) -> DataBundle:
    """Fixed seeded stratified split; pixels scaled to [0, 1] then standardized with train statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=float(cfg["test_fraction"]),
                                          random_state=int(cfg["split_seed"]), stratify=y)
    mean, std = float(xtr.mean()), float(xtr.std())
    t = lambda a: torch.from_numpy((a - mean) / std).unsqueeze(1)  # (N, 1, 8, 8)
    train = TensorDataset(t(xtr), torch.from_numpy(ytr))
    test = TensorDataset(t(xte), torch.from_numpy(yte))
    return DataBundle(name="digits", train=train, test=test, calib=train, num_classes=10,
                      input_shape=(1, 8, 8))
