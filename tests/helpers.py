"""Helpers shared by several test files."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir

CONF = Path(__file__).resolve().parents[1] / "conf"


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


def train_digits(d: Path, epochs: int = 1) -> Path:
    """A digits_cnn checkpoint of a few short epochs in ``d`` (train_ann.py's code path, in process); its path."""
    from msat.training import train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train_ann", overrides=[f"paths.ckpt_dir={d}", f"paths.output_dir={d}", "logger=none",
                                              f"train.epochs={epochs}", "train.batch_size=64", "train.progress=false"])
    train(cfg, run_dir=d / "train")
    return d / "digits_digits_cnn.pt"
