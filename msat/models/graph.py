"""torch.fx tracing of a model and its activation call sites (the first stage of conversion, SPEC 1).

Here, below the conversion pipeline, because the model builder counts a model's activation call sites
(``msat.models.build.activation_sites``) with the same tracer and the same notion of "activation" that
conversion replaces.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..utils import ConversionError
from .activations import QCFS

RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
RELU_METHODS = ("relu", "relu_")


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping trained activations (QCFS) as single call sites."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QCFS) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Deep-copy ``model`` in eval mode and trace it with torch.fx."""
    if not isinstance(model, nn.Module):
        raise ConversionError(f"convert expects an nn.Module, got {type(model).__name__}")
    m = copy.deepcopy(model).eval()
    try:
        gm = fx.GraphModule(m, _Tracer().trace(m), type(m).__name__)
    except Exception as e:  # fx raises many types (TraceError, TypeError, ...)
        raise ConversionError(f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {e}. "
                              "Data-dependent control flow in forward() is not supported.") from e
    gm.eval()
    return gm


def is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A ReLU call site, or a trained activation that converts like one (QCFS)."""
    if node.op == "call_module":
        return type(modules[node.target]) in (nn.ReLU, QCFS)
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    return node.op == "call_method" and node.target in RELU_METHODS


__all__ = ["trace", "is_activation", "RELU_FUNCTIONS", "RELU_METHODS"]
