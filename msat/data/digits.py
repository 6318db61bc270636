"""scikit-learn's bundled 8x8 digits: real data, offline, the default everywhere."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import DataBundle, DatasetError

N_IMAGES, N_CLASSES = 1797, 10        # scikit-learn's digits


def check_split(cfg) -> None:
    """``test_fraction`` must leave at least one image of every class on each side of the stratified split
    (scikit-learn: ``ceil(f * 1797)`` test images, the rest for training); checked before any data is read."""
    f = float(cfg["test_fraction"])
    n_test = math.ceil(f * N_IMAGES) if 0.0 < f < 1.0 else (0 if f <= 0.0 else N_IMAGES)
    if n_test < N_CLASSES or N_IMAGES - n_test < N_CLASSES:
        side = "test" if n_test < N_CLASSES else "training"
        lo, hi = (N_CLASSES - 1) / N_IMAGES, (N_IMAGES - N_CLASSES) / N_IMAGES
        raise DatasetError(f"dataset.test_fraction={f} leaves {min(n_test, N_IMAGES - n_test)} {side} images of "
                           f"digits' {N_IMAGES} (the stratified split needs one per class, {N_CLASSES} on each "
                           f"side): give a fraction above {lo:.4f} and at most {hi:.4f}, e.g. 0.25")


def build_digits(cfg) -> DataBundle:
    """Fixed seeded stratified split; pixels scaled to [0, 1] then standardized with train statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    check_split(cfg)
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
