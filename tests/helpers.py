"""Helpers shared by several test files."""
from __future__ import annotations

import torch
import torch.nn as nn


def randomize_bn(model: nn.Module, x: torch.Tensor, steps: int = 3) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters; back to eval mode."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.5
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    return model.eval()
