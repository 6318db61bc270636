"""VGG for CIFAR in the authors' layout: 13 x (Conv3x3 -> BN -> ReLU), 5 pools, one Linear."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..utils import UserError
from .registry import register_model

# Channel counts; "M" is a 2x2 pooling layer (max or avg).
CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
_POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class VGG(nn.Module):
    """Input (B, 3, 32, 32); five 2x2 pools leave (B, 512, 1, 1) for the classifier."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3,
                 pool: str = "max", act: type[nn.Module] = nn.ReLU, bias: bool = True, width: int = 64):
        super().__init__()
        if pool not in _POOLS:
            raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(_POOLS)}")
        if width < 1 or width % 8:
            raise UserError(f"vgg16: width (channels of the first stage) must be a positive multiple of 8, got {width}")
        scale = width / 64                    # every stage scales with the first (64 in the paper)
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(_POOLS[pool](2, 2))
            else:
                c_out = int(int(v) * scale)
                layers += [nn.Conv2d(c, c_out, 3, padding=1, bias=bias), nn.BatchNorm2d(c_out), act()]
                c = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)                  # (B, 512, 1, 1) for 32x32 inputs
        return self.classifier(torch.flatten(x, 1))


@register_model
def vgg16(num_classes: int = 10, pool: str = "max", act: type[nn.Module] = nn.ReLU, **kw) -> nn.Module:
    """VGG16 for 32x32 inputs (~15 M parameters for 10 classes at ``width=64``); ``pool`` is ``max`` or ``avg``;
    ``width`` is the first stage's channels (the others scale with it: 64-128-256-512-512 at 64)."""
    return VGG(CFGS["vgg16"], num_classes=num_classes, pool=pool, act=act, **kw)
