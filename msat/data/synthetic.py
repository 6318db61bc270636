"""Small, seeded, learnable stand-ins for the internet datasets (tests and smoke runs).

Each class has a fixed smooth pattern (images, waveforms) or a set of marker tokens (text); samples
are the class signal plus noise, so a model trained for a few steps beats chance.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .base import DataBundle, DatasetError


def check_sizes(cfg) -> None:
    """Both splits of a synthetic dataset hold at least one sample (``n_train``, ``n_test``)."""
    for key in ("n_train", "n_test"):
        if int(cfg[key]) < 1:
            split = "training" if key == "n_train" else "test"
            raise DatasetError(f"dataset.{key}={cfg[key]}: the {split} split of {cfg['name']} would be empty; "
                               "give at least 1")


def _generator(cfg, offset: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(cfg["seed"]) + offset)
    return g


def _labels(n: int, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """Balanced labels in a seeded random order, (n,) int64."""
    return torch.arange(n, dtype=torch.int64).remainder(num_classes)[torch.randperm(n, generator=g)]


def _images(cfg, size: int, channels: int = 3, model_kwargs: dict | None = None) -> DataBundle:
    check_sizes(cfg)
    c, k = int(cfg["num_classes"]), int(cfg["pattern_size"])
    g = _generator(cfg)
    # one low-resolution pattern per class, upsampled so that crops and pooling keep the signal
    patterns = F.interpolate(torch.randn(c, channels, k, k, generator=g), size=(size, size), mode="bilinear",
                             align_corners=False)                    # (C, channels, size, size)
    noise = float(cfg["noise"])

    def split(n: int, offset: int) -> TensorDataset:
        gs = _generator(cfg, offset)
        y = _labels(n, c, gs)
        x = patterns[y] + noise * torch.randn(n, channels, size, size, generator=gs)  # (n, channels, size, size)
        return TensorDataset(x, y)

    train = split(int(cfg["n_train"]), 1)
    return DataBundle(name=cfg["name"], train=train, test=split(int(cfg["n_test"]), 2), calib=train,
                      num_classes=c, input_shape=(channels, size, size), model_kwargs=dict(model_kwargs or {}))


def build_synthetic_digits(cfg) -> DataBundle:
    """(1, 8, 8) images (the shape of scikit-learn's digits), class pattern + Gaussian noise."""
    return _images(cfg, 8, channels=1)


def build_synthetic_fashion(cfg) -> DataBundle:
    """(1, 28, 28) images (or ``pad_to`` square), class pattern + noise: fashion_mnist's shape for smoke runs."""
    return _images(cfg, int(cfg["pad_to"] or 28), channels=1, model_kwargs={"in_channels": 1})


def build_synthetic_cifar(cfg) -> DataBundle:
    """(3, 32, 32) images, class pattern + Gaussian noise."""
    return _images(cfg, 32)


def build_synthetic_imagenet(cfg) -> DataBundle:
    """(3, 224, 224) images, class pattern + Gaussian noise (keep n_train small)."""
    return _images(cfg, 224)


def build_synthetic_speech(cfg) -> DataBundle:
    """(1, num_samples) waveforms: a class-specific tone (random phase and gain) plus noise."""
    check_sizes(cfg)
    c, n_samp = int(cfg["num_classes"]), int(cfg["num_samples"])
    sr, noise = float(cfg["sample_rate"]), float(cfg["noise"])
    freqs = 200.0 + 3000.0 * torch.arange(c, dtype=torch.float32) / max(c - 1, 1)   # (C,) Hz, below Nyquist
    t = torch.arange(n_samp, dtype=torch.float32) / sr                               # (S,)

    def split(n: int, offset: int) -> TensorDataset:
        g = _generator(cfg, offset)
        y = _labels(n, c, g)
        phase = 2 * math.pi * torch.rand(n, 1, generator=g)
        gain = 0.5 + torch.rand(n, 1, generator=g)
        x = gain * torch.sin(2 * math.pi * freqs[y, None] * t + phase)               # (n, S)
        x = x + noise * torch.randn(n, n_samp, generator=g)
        return TensorDataset(x.unsqueeze(1), y)                                      # (n, 1, S)

    train = split(int(cfg["n_train"]), 1)
    return DataBundle(name=cfg["name"], train=train, test=split(int(cfg["n_test"]), 2), calib=train,
                      num_classes=c, input_shape=(1, n_samp))


def build_synthetic_imdb(cfg, artifacts: dict | None = None) -> DataBundle:
    """Token-id sequences (max_len,) over a fake vocabulary ``<pad>, <unk>, w2, w3, ...``: random
    filler tokens of random length with ``markers`` tokens specific to the class mixed in."""
    check_sizes(cfg)
    c, words = int(cfg["num_classes"]), int(cfg["vocab_size"])
    max_len, n_mark = int(cfg["max_len"]), int(cfg["markers"])
    vocab = list((artifacts or {}).get("vocab") or [])
    vocab = vocab or ["<pad>", "<unk>"] + [f"w{i}" for i in range(2, words + 2)]
    v = len(vocab)
    if v < 2 + c * n_mark + 1:
        raise DatasetError(f"synthetic_imdb: vocab_size={words} too small for {c} classes x {n_mark} markers")
    # class k owns token ids 2 + k*n_mark ... 2 + (k+1)*n_mark - 1; the rest are filler
    filler_lo = 2 + c * n_mark

    def split(n: int, offset: int) -> TensorDataset:
        g = _generator(cfg, offset)
        y = _labels(n, c, g)
        lengths = torch.randint(max_len // 2, max_len + 1, (n,), generator=g)
        x = torch.randint(filler_lo, v, (n, max_len), generator=g)                 # (n, L) filler
        marks = 2 + y[:, None] * n_mark + torch.randint(n_mark, (n, max_len), generator=g)
        use = torch.rand(n, max_len, generator=g) < float(cfg["marker_rate"])
        x = torch.where(use, marks, x)
        x[torch.arange(max_len)[None, :] >= lengths[:, None]] = 0                   # padding at the end
        return TensorDataset(x, y)

    train = split(int(cfg["n_train"]), 1)
    return DataBundle(name=cfg["name"], train=train, test=split(int(cfg["n_test"]), 2), calib=train,
                      num_classes=c, input_shape=(max_len,), model_kwargs={"vocab_size": v},
                      artifacts={"vocab": vocab})
