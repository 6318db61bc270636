"""M5 raw-waveform CNN (Dai et al. 2017) for 8 kHz speech commands."""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


class M5(nn.Module):
    """Input (B, n_input, 8000). Conv1d(k=80, stride) + 3 Conv1d(k=3) blocks, each BN-ReLU-MaxPool(4);
    global average pool; Linear. Outputs logits."""

    def __init__(self, num_classes: int = 35, n_input: int = 1, stride: int = 4, n_channel: int = 32,
                 act: type[nn.Module] = nn.ReLU):
        super().__init__()
        c = n_channel
        self.features = nn.Sequential(
            nn.Conv1d(n_input, c, kernel_size=80, stride=stride), nn.BatchNorm1d(c), act(), nn.MaxPool1d(4),
            nn.Conv1d(c, c, kernel_size=3), nn.BatchNorm1d(c), act(), nn.MaxPool1d(4),
            nn.Conv1d(c, 2 * c, kernel_size=3), nn.BatchNorm1d(2 * c), act(), nn.MaxPool1d(4),
            nn.Conv1d(2 * c, 2 * c, kernel_size=3), nn.BatchNorm1d(2 * c), act(), nn.MaxPool1d(4),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(2 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))       # (B, 2c, 1); 8000 samples leave length 7 before the pool
        return self.fc(torch.flatten(x, 1))


@register_model
def m5(num_classes: int = 35, **kw) -> nn.Module:
    """M5 for (B, 1, 8000) waveforms; kwargs ``n_input, stride, n_channel, act``."""
    return M5(num_classes=num_classes, **kw)
