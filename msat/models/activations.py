"""Trainable activations that conversion methods need in the ANN: QCFS (Bu et al., ICLR 2022).

``QCFS(L)``: the quantization-clip-floor-shift activation ``h(x) = lambda * floor(clip(x/lambda, 0, 1)
* L + 1/2) / L`` with a learnable per-layer clipping level ``lambda`` (one scalar) and a straight-through
floor (its gradient is the identity), as in the official code (putshua/ANN_SNN_QCFS, ``IF`` with
``T=0``: ``x / thresh``, ``clamp(0, 1)``, ``myfloor(x * L + 0.5) / L``, ``* thresh``; lambda starts at 8).

``apply_activation(model, "qcfs", L)`` replaces every ``nn.ReLU`` module by a fresh ``QCFS(L)`` and
every max pool by the average pool of the same window, as QCFS does for its VGG.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..utils import UserError

ACTIVATIONS = ("relu", "qcfs")


class _FloorSTE(torch.autograd.Function):
    """floor in the forward pass, identity in the backward pass (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation with L levels and a learnable clipping level ``lam``."""

    def __init__(self, L: int = 4, lam: float = 8.0):
        super().__init__()
        if int(L) < 1:
            raise ValueError(f"QCFS needs L >= 1, got {L}")
        self.L = int(L)
        self.lam = nn.Parameter(torch.tensor(float(lam)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.clamp(x / self.lam, 0.0, 1.0)
        return _FloorSTE.apply(u * self.L + 0.5) / self.L * self.lam

    def extra_repr(self) -> str:
        return f"L={self.L}, lam={float(self.lam.detach()):.4g}"


def _swap_modules(module: nn.Module, L: int) -> int:
    n = 0
    for name, child in module.named_children():
        if type(child) is nn.ReLU:
            setattr(module, name, QCFS(L))
            n += 1
        elif isinstance(child, (nn.MaxPool1d, nn.MaxPool2d)):
            if child.dilation not in (1, (1,), (1, 1)) or child.return_indices:
                raise UserError(f"model.act=qcfs: max pool {name!r} has dilation or return_indices; "
                                "it cannot become an average pool")
            avg = nn.AvgPool1d if isinstance(child, nn.MaxPool1d) else nn.AvgPool2d
            setattr(module, name, avg(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode))
        else:
            n += _swap_modules(child, L)
    return n


def apply_activation(model: nn.Module, act: str, L: int = 4) -> nn.Module:
    """Make ``model`` train (and convert) with activation ``act`` (in place; returned)."""
    if act not in ACTIVATIONS:
        raise UserError(f"unknown activation {act!r}; valid: {', '.join(ACTIVATIONS)}")
    if act == "relu":
        return model
    if _swap_modules(model, L) == 0:
        raise UserError(f"model.act={act}: {type(model).__name__} has no nn.ReLU module to replace")
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # not traceable: conversion reports it later
        return model
    functional = [n.name for n in gm.graph.nodes
                  if (n.op == "call_function" and n.target in (F.relu, torch.relu, torch.relu_, F.relu_))
                  or (n.op == "call_method" and n.target in ("relu", "relu_"))
                  or (n.op == "call_function" and n.target in (F.max_pool1d, F.max_pool2d))]
    if functional:
        raise UserError(f"model.act={act}: {type(model).__name__} calls ReLU or max pooling as functions "
                        f"({', '.join(functional)}); use nn.ReLU / nn.MaxPool modules so they can be replaced")
    return model


def activation_of(model: nn.Module) -> str:
    """The trained activation of ``model``: ``qcfs`` if it holds QCFS modules, else ``relu``."""
    return "qcfs" if any(isinstance(m, QCFS) for m in model.modules()) else "relu"


__all__ = ["QCFS", "apply_activation", "activation_of", "ACTIVATIONS"]
