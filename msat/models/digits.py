"""A small conv net for scikit-learn's 8x8 digits: the offline default."""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x2, MaxPool, Conv-BN-ReLU, MaxPool, Linear-ReLU, Linear.  Input (B, 1, 8, 8)."""

    def __init__(self, num_classes: int = 10, width: int = 32, act: type[nn.Module] = nn.ReLU,
                 pool: str = "max"):
        super().__init__()
        Pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pool]
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), act(),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), act(),
            Pool(2),                                                  # 8x8 -> 4x4
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), act(),
            Pool(2),                                                  # 4x4 -> 2x2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * w * 4, 128), act(), nn.Dropout(0.2), nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def digits_cnn(num_classes: int = 10, **kw) -> nn.Module:
    return DigitsCNN(num_classes=num_classes, **kw)
