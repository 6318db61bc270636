"""ANN -> SNN conversion (SPEC section 1): a pipeline of named stages over a torch.fx graph.

    trace       deep-copy the model (the original is never touched), eval mode, torch.fx trace
    fold_bn     fold each BatchNorm into the Conv1d/Conv2d feeding only it (other BNs stay affine)
    replace     every activation call site (ReLU; QCFS in a QCFS-trained ANN) -> its own
                SpikingNeuron with the method's dynamics; max pools after the first spiking layer
                -> SpikingPool (lipool | gate | avg)
    check       the part after the first spiking layer ("dynamic") may only use ops the
                time-folded engine supports; anything else is a ConversionError naming the node
    thresholds  the method calibrates theta_l (default: the p-th percentile of each layer's
                post-activation outputs on the calibration batches, SPEC 1.3)
    after       the method's stages that may simulate (SC p, bias / potential calibration)

The part ahead of the first spiking layer ("static": depends on the input only, e.g. the first
conv under direct coding, or an embedding + LSTM encoder) may contain anything; it runs once per
input, analog.
"""
from __future__ import annotations

import copy
import warnings
import math
import operator
from collections.abc import Iterable
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from .config import ConversionConfig, conversion_config, parse_sc_p
from .models.activations import QCFS, activation_of
from .neurons import SCLayer, SpikingNeuron, reset_net
from .pooling import SpikingPool
from .utils import UserError

Tensor = torch.Tensor


class ConversionError(UserError, ValueError):
    """The model (or the calibration data) cannot be converted; the message names the node."""


# ----------------------------------------------------------------------------- op tables

RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
RELU_METHODS = ("relu", "relu_")
MAXPOOL_FUNCTIONS = {F.max_pool1d: 1, F.max_pool2d: 2}
MAXPOOL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2}
BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
CONV_MODULES = (nn.Conv1d, nn.Conv2d)

# ops allowed after the first spiking layer (they act per sample, so the engine may fold time
# into the batch)
DYNAMIC_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d,
                   nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout,
                   nn.Dropout1d, nn.Dropout2d, nn.Identity, SpikingNeuron, SpikingPool)
DYNAMIC_FUNCTIONS = (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub,
                     operator.mul, torch.mul, operator.truediv, torch.div, operator.neg, torch.cat, torch.flatten, operator.getitem,
                     getattr, torch.mean, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                     F.adaptive_avg_pool2d, F.dropout)
DYNAMIC_METHODS = ("view", "reshape", "flatten", "size", "mean", "contiguous", "add", "add_", "sub", "mul",
                   "div", "dim")
# products of two time-varying signals are not linear in the rates: one operand must be static
SCALING_OPS = (operator.mul, torch.mul, operator.truediv, torch.div, "mul", "div")
RESHAPE_METHODS = ("view", "reshape")


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)!s} (node {node.name!r})"
    if node.op == "call_method":
        return f"method .{node.target}() (node {node.name!r})"
    return f"node {node.name!r}"


# ----------------------------------------------------------------------------- stage: trace

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


# ----------------------------------------------------------------------------- stage: fold BN

def fold_bn(gm: fx.GraphModule) -> int:
    """Fold every BatchNorm whose input is a Conv1d/Conv2d output used only by that BN.

    Done in float64, exact to float rounding; returns the number of folded BNs.
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], BN_MODULES):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], CONV_MODULES)):
            continue
        bn, conv = modules[node.target], modules[src.target]
        if (len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1
                or bn.running_mean is None or not bn.track_running_stats):
            continue
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(bn.running_mean, dtype=torch.float64)
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach().double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.detach().double()
        dtype = conv.weight.dtype
        conv.weight = nn.Parameter((w * scale.view(-1, *([1] * (w.dim() - 1)))).to(dtype))
        conv.bias = nn.Parameter((b * scale + shift).to(dtype))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


# ----------------------------------------------------------------------------- stage: replace

def _swap(gm: fx.GraphModule, node: fx.Node, target: str, module: nn.Module) -> fx.Node:
    """Replace ``node`` by a call of ``module`` (registered as ``target``) on its first input."""
    gm.add_submodule(target, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(target, (node.args[0],))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return last[0] if isinstance(last, tuple) else str(last)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A ReLU call site, or a trained activation that converts like one (QCFS)."""
    if node.op == "call_module":
        return type(modules[node.target]) in (nn.ReLU, QCFS)
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    return node.op == "call_method" and node.target in RELU_METHODS


def _maxpool_spec(node: fx.Node, modules: dict[str, nn.Module]) -> Optional[tuple[int, dict]]:
    """(dims, kwargs) of a max-pool call site, or None."""
    if node.op == "call_module" and type(modules[node.target]) in MAXPOOL_MODULES:
        m = modules[node.target]
        if m.return_indices:
            raise ConversionError(f"{_describe(node, modules)}: max pooling with return_indices is not supported")
        return MAXPOOL_MODULES[type(m)], dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                              dilation=m.dilation, ceil_mode=m.ceil_mode)
    if node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS:
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        kw = dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False)
        kw.update(zip(names, node.args[1:]))
        kw.update(node.kwargs)
        if kw.pop("return_indices"):
            raise ConversionError(f"{_describe(node, modules)}: max pooling with return_indices is not supported")
        return MAXPOOL_FUNCTIONS[node.target], kw
    return None


def _dynamic_nodes(gm: fx.GraphModule, spiking: set[fx.Node]) -> set[fx.Node]:
    """Nodes that depend on a spiking layer (these run once per time step)."""
    dyn: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n in spiking or any(a in dyn for a in n.all_input_nodes):
            dyn.add(n)
    return dyn


def _unique(name: str, used: set[str]) -> str:
    out, k = name, 1
    while out in used:
        out, k = f"{name}_{k}", k + 1
    used.add(out)
    return out


def replace(gm: fx.GraphModule, cfg: ConversionConfig, dynamics: str = "if",
            neuron_kwargs: Optional[dict] = None) -> tuple[list[SpikingNeuron], list[SpikingPool]]:
    """Replace activation call sites (ReLU, QCFS) by neurons of ``dynamics`` and the dynamic max pools
    by spiking pools (in place). A QCFS module stays inside its neuron as the ANN-mode activation."""
    modules = dict(gm.named_modules())
    activation_types = tuple(v for v in vars(nn.modules.activation).values()
                             if isinstance(v, type) and issubclass(v, nn.Module) and v is not nn.ReLU
                             and v.__module__ == nn.modules.activation.__name__
                             and v is not nn.MultiheadAttention)
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(modules[n.target], activation_types):
            raise ConversionError(f"{_describe(n, modules)}: only ReLU activations can be converted to "
                                  "spiking neurons")
    relus = [n for n in gm.graph.nodes if _is_relu(n, modules)]
    if not relus:
        raise ConversionError("the model has no ReLU: nothing to convert into spiking neurons")
    used: set[str] = set()
    module_calls: dict[str, int] = {}
    neurons: list[SpikingNeuron] = []
    spiking: set[fx.Node] = set()
    for i, node in enumerate(relus):
        if node.op == "call_module":
            k = module_calls.get(node.target, 0)
            module_calls[node.target] = k + 1
            name = node.target if k == 0 else f"{node.target}_{k}"
        else:
            path = _module_path(node)
            name = f"{path}.{node.name}" if path else node.name
        name = _unique(name, used)
        act = modules[node.target] if node.op == "call_module" and isinstance(modules[node.target], QCFS) else None
        neuron = SpikingNeuron(cfg.neuron, name, dynamics, ann_act=copy.deepcopy(act), **(neuron_kwargs or {}))
        new = _swap(gm, node, f"spiking_layers.n{i}", neuron)
        neurons.append(neuron)
        spiking.add(new)
    dyn = _dynamic_nodes(gm, spiking)
    modules = dict(gm.named_modules())
    pools: list[SpikingPool] = []
    for node in list(gm.graph.nodes):
        if node not in dyn:
            continue
        spec = _maxpool_spec(node, modules)
        if spec is None:
            continue
        dims, kw = spec
        name = node.target if node.op == "call_module" else node.name
        try:
            pool = SpikingPool(cfg.pool.name, dims, name=name, **kw)
        except ValueError as e:
            raise ConversionError(str(e)) from e
        _swap(gm, node, f"spiking_pools.p{len(pools)}", pool)
        pools.append(pool)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return neurons, pools


# ----------------------------------------------------------------------------- stage: check

def _ndim(node: Any) -> Optional[int]:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _is_tensor_node(node: Any) -> bool:
    return isinstance(node, fx.Node) and hasattr(node.meta.get("tensor_meta"), "shape")


def _touches_batch(dim: Any, ndim: Optional[int]) -> bool:
    if dim is None:
        return True
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    for d in dims:
        if not isinstance(d, int):
            return False  # computed at run time; the engine checks reshapes
        if d == 0 or (ndim is not None and d < 0 and d + ndim == 0):
            return True
    return False


def check_dynamic(gm: fx.GraphModule, dynamic: set[fx.Node]) -> None:
    """Every op after the first spiking layer must act per sample (time is folded into the batch)."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node not in dynamic or node.op == "output":
            continue
        where = _describe(node, modules)
        if node.target in SCALING_OPS and node.op != "call_module":
            dyn_args = [a for a in node.all_input_nodes if a in dynamic]
            is_div = node.target in (operator.truediv, torch.div, "div")
            if len(dyn_args) > 1 or (is_div and len(node.args) > 1 and node.args[1] in dynamic):
                raise ConversionError(f"{where}: multiplying or dividing two spiking signals is not supported "
                                      "(one operand must be a constant or depend only on the input)")
        if node.op == "call_module":
            m = modules[node.target]
            if not isinstance(m, DYNAMIC_MODULES):
                raise ConversionError(
                    f"{where} is not supported after the first spiking layer (only ReLU activations and "
                    f"{', '.join(t.__name__ for t in DYNAMIC_MODULES[:-2])}, MaxPool1d/2d)")
            if isinstance(m, BN_MODULES) and m.running_mean is None:
                raise ConversionError(f"{where}: BatchNorm without running statistics cannot be simulated")
            if isinstance(m, nn.Flatten) and _touches_batch(m.start_dim, _ndim(node.args[0])):
                raise ConversionError(f"{where}: flattening the batch dimension is not supported")
        elif node.op == "call_function":
            if node.target not in DYNAMIC_FUNCTIONS:
                raise ConversionError(f"{where} is not supported after the first spiking layer")
            _check_function_dims(node, where)
        elif node.op == "call_method":
            if node.target not in DYNAMIC_METHODS:
                raise ConversionError(f"{where} is not supported after the first spiking layer")
            x = node.args[0]
            if node.target == "flatten":
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                if _touches_batch(start, _ndim(x)):
                    raise ConversionError(f"{where}: flattening the batch dimension is not supported")
            if node.target == "mean":
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                if _touches_batch(dim, _ndim(x)):
                    raise ConversionError(f"{where}: a mean over the batch dimension is not supported")


def _check_function_dims(node: fx.Node, where: str) -> None:
    t, args, kw = node.target, node.args, node.kwargs
    if t is torch.cat:
        dim = args[1] if len(args) > 1 else kw.get("dim", 0)
        tensors = args[0]
        if _touches_batch(dim, _ndim(tensors[0]) if tensors else None):
            raise ConversionError(f"{where}: concatenation along the batch dimension is not supported")
    elif t is torch.flatten:
        start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
        if _touches_batch(start, _ndim(args[0])):
            raise ConversionError(f"{where}: flattening the batch dimension is not supported")
    elif t is torch.mean:
        dim = args[1] if len(args) > 1 else kw.get("dim")
        if _touches_batch(dim, _ndim(args[0])):
            raise ConversionError(f"{where}: a mean over the batch dimension is not supported")
    elif t is operator.getitem and _is_tensor_node(args[0]):
        idx = args[1]
        first = idx[0] if isinstance(idx, tuple) and idx else idx
        if first is Ellipsis and isinstance(idx, tuple):
            explicit = sum(1 for i in idx[1:] if i is not None)
            nd = _ndim(args[0])
            if nd is not None and explicit >= nd:
                raise ConversionError(f"{where}: indexing the batch dimension is not supported")
        elif first != slice(None):
            raise ConversionError(f"{where}: indexing the batch dimension is not supported "
                                  "(use x[:, ...])")


# ----------------------------------------------------------------------------- stage: calibrate

def _batches(calib: Any, limit: int) -> list[Any]:
    """Up to ``limit`` input batches from a tensor, or an iterable of tensors or (x, y) pairs."""
    if isinstance(calib, Tensor):
        items: Iterable = [calib]
    elif isinstance(calib, Iterable) and not isinstance(calib, (str, bytes)):
        items = calib
    else:
        raise ConversionError(f"calibration data must be a tensor or an iterable of batches, "
                              f"got {type(calib).__name__}")
    out = []
    for item in items:
        if len(out) == limit:
            break
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, Tensor):
            raise ConversionError(f"a calibration batch must be a tensor or an (x, y) pair, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            continue
        out.append(x)
    if not out:
        raise ConversionError("the calibration set is empty: give at least one non-empty batch")
    return out


def check_calibration(model: nn.Module, calib: Any, limit: int) -> list[Tensor]:
    """The calibration batches ``convert`` uses (up to ``limit``; an iterator is read once), checked before any
    stage: each a tensor batch (B, ...) of one dtype and rank, finite, of the model's parameter dtype when
    floating, and one the model runs on. Each problem is one :class:`ConversionError` sentence."""
    if isinstance(calib, Tensor):
        items: Iterable = [calib]
    elif isinstance(calib, Iterable) and not isinstance(calib, (str, bytes, dict)):
        items = calib
    else:
        raise ConversionError(f"calibration data must be a tensor batch (B, ...) or an iterable of batches or "
                              f"(x, y) pairs, got {type(calib).__name__}")
    params = list(model.parameters())
    floating = next((p.dtype for p in params if p.is_floating_point()), None)
    out: list[Tensor] = []
    for i, item in enumerate(items):
        x = item[0] if isinstance(item, (tuple, list)) and item else item
        if not isinstance(x, Tensor):
            hint = " (convert it with torch.from_numpy)" if type(x).__module__ == "numpy" else ""
            raise ConversionError(f"calibration batch {i} must be a tensor or an (x, y) pair, got "
                                  f"{type(x).__name__}{hint}")
        if x.dim() == 0:
            raise ConversionError(f"calibration batch {i} is a 0-dim tensor, not a batch (B, ...) of samples")
        if x.shape[0] == 0:
            continue
        if out and (x.dim() != out[0].dim() or x.dtype != out[0].dtype):
            raise ConversionError(f"calibration batch {i} is {x.dtype} of shape {tuple(x.shape)}, but batch 0 is "
                                  f"{out[0].dtype} of shape {tuple(out[0].shape)}: give batches of one dtype and "
                                  "rank")
        if x.dtype == torch.bool or x.is_complex():
            raise ConversionError(f"calibration batch {i} is {x.dtype}; give the model's input (floating point, or "
                                  "integer token ids)")
        if x.is_floating_point() and floating is not None and x.dtype != floating:
            raise ConversionError(f"calibration batch {i} is {x.dtype}, but the model's parameters are {floating}: "
                                  f"convert it with x.to({floating})")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ConversionError(f"calibration batch {i} holds NaN or inf values: the thresholds would be "
                                  "calibrated on them")
        out.append(x)
        if len(out) == limit:                      # an iterator is not read beyond the batches used
            break
    if not out:
        raise ConversionError("the calibration set is empty: give at least one non-empty batch")
    probe = out[0][:2].to(params[0].device) if params else out[0][:2]
    training = {m: m.training for m in model.modules()}
    try:                                           # the model in eval mode, no gradients: nothing of it changes
        model.eval()
        with torch.no_grad():
            model(probe)
    except TypeError:                              # a forward of other arguments: the trace stage names them
        pass
    except (RuntimeError, ValueError, IndexError, NotImplementedError) as e:
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
        raise ConversionError(f"the model cannot run on the calibration data (batch 0: {out[0].dtype}, shape "
                              f"{tuple(out[0].shape)}; a batch (B, ...) of the model's input is expected): "
                              f"{type(e).__name__}: {detail}") from None
    finally:
        for m, mode in training.items():
            m.training = mode
    return out


def _quantile_of_positives(pos: Tensor, n_total: int, p: float) -> Tensor:
    """The p-quantile (linear interpolation, as torch.quantile) of a vector made of ``pos``
    (the positive values) and ``n_total - len(pos)`` zeros."""
    n_zero = n_total - pos.numel()
    rank = p * (n_total - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    frac = rank - lo

    def kth(r: int) -> Tensor:  # r: 0-based rank in the full sorted vector
        if r < n_zero:
            return pos.new_zeros(())
        return torch.kthvalue(pos, r - n_zero + 1).values

    return kth(lo) + frac * (kth(hi) - kth(lo))


class ActivationStats:
    """Streams what percentile calibration needs from each neuron's post-activation outputs."""

    def __init__(self, percentile: float, per_channel: bool):
        self.p, self.per_channel = percentile, per_channel
        self.max: dict[SpikingNeuron, Tensor] = {}
        self.values: dict[SpikingNeuron, list[Tensor]] = {}
        self.count: dict[SpikingNeuron, int] = {}
        self.feat_dims: dict[SpikingNeuron, int] = {}
        self.dtype: dict[SpikingNeuron, torch.dtype] = {}

    def __call__(self, neuron: SpikingNeuron, x: Tensor) -> None:
        a = neuron.forward(x.detach())                     # the ANN activation's output (no hooks re-entered)
        self.feat_dims[neuron], self.dtype[neuron] = x.dim() - 1, x.dtype
        if self.per_channel:
            if a.dim() < 2:
                raise ConversionError(f"layer {neuron.name!r}: per-channel calibration needs a channel dimension")
            a = a.transpose(0, 1).reshape(a.shape[1], -1)                 # (C, B*...)
            if self.p == 1.0:
                m = a.amax(dim=1)
                self.max[neuron] = m if neuron not in self.max else torch.maximum(self.max[neuron], m)
            else:
                self.values.setdefault(neuron, []).append(a.double().cpu())
        else:
            if self.p == 1.0:
                m = a.max()
                self.max[neuron] = m if neuron not in self.max else torch.maximum(self.max[neuron], m)
            else:
                flat = a.flatten()
                self.values.setdefault(neuron, []).append(flat[flat > 0].double().cpu())
                self.count[neuron] = self.count.get(neuron, 0) + flat.numel()

    def theta(self, neuron: SpikingNeuron) -> Tensor:
        """theta_l, in the activations' dtype; (C, 1, ...) per sample when per channel."""
        if neuron not in self.feat_dims:
            raise ConversionError(f"layer {neuron.name!r} was never executed on the calibration data")
        if self.p == 1.0:
            th = self.max[neuron]
        elif self.per_channel:
            v = torch.cat(self.values[neuron], dim=1)                     # (C, N)
            n = v.shape[1]
            rank = self.p * (n - 1)
            lo, hi = math.floor(rank), math.ceil(rank)
            vlo = torch.kthvalue(v, lo + 1, dim=1).values
            vhi = torch.kthvalue(v, hi + 1, dim=1).values
            th = vlo + (rank - lo) * (vhi - vlo)
        else:
            th = _quantile_of_positives(torch.cat(self.values[neuron]), self.count[neuron], self.p)
        if self.per_channel:
            th = th.view(-1, *([1] * (self.feat_dims[neuron] - 1)))      # (C, 1, ...) per sample
        return th.to(self.dtype[neuron])


def percentile_thresholds(ctx: Any) -> dict[SpikingNeuron, Tensor]:
    """theta_l = the ``calib.percentile`` quantile of each layer's post-activation outputs over every
    calibration batch (SPEC 1.3; per layer, or per channel with ``calib.per_channel``)."""
    stats = ActivationStats(ctx.cfg.calib.percentile, ctx.cfg.calib.per_channel)
    ctx.activations(stats)
    return {m: stats.theta(m) for m in ctx.neurons}


def _logits_close(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape:
            return False
        tol = 1e-3 * float(b.abs().max()) + 1e-5
        return bool((a.float() - b.float()).abs().max() <= tol) if a.numel() else True
    return True


def propagate_shapes(gm: fx.GraphModule, pools: list[SpikingPool], x: Tensor, reference: Any,
                     avg_pools: bool) -> None:
    """Run the converted graph as the ANN once, recording shapes (``node.meta['tensor_meta']``) for the
    checks, and compare its output with ``reference`` (the original model's)."""
    from .methods.base import ann_pools

    with ann_pools(pools), torch.no_grad():
        out = ShapeProp(gm).propagate(x)
    if reference is not None and not avg_pools and not _logits_close(out, reference):
        raise ConversionError("the converted graph does not reproduce the model's outputs in ANN mode "
                              "(an in-place op whose input is reused?)")


# ----------------------------------------------------------------------------- the network

class SCState:
    """Spike-confidence settings of a network: which layers, their keep probabilities, E and the reset.

    Owned by the ``SpikingNetwork``; the engine hands each SC layer an ``SCLayer`` per simulation
    (``for_simulation``). ``disabled()`` switches SC off for a block (``derive_sc_p`` measures with it off).
    """

    def __init__(self, layers: list[str], E: int, filtered: bool, p: Optional[dict[str, float]] = None):
        self.layers, self.E, self.filtered = list(layers), int(E), bool(filtered)
        self.p: dict[str, float] = {}
        self.active = bool(self.layers)
        if p:
            self.set_p(p)

    def set_p(self, p: dict[str, float]) -> None:
        """Keep probability p_l of SC layers, name -> p in [0, 1] (any subset of the SC layers)."""
        from .config import ConfigError, parse_sc_p

        unknown = [k for k in p if k not in self.layers]
        if unknown:
            raise ConversionError(f"{unknown} are not spike-confidence layers; SC layers: {self.layers} "
                                  "(enable with sc.enabled, choose with sc.layers)")
        try:
            checked = parse_sc_p(dict(p), where="SC keep probability")
        except ConfigError as e:
            raise ConversionError(str(e)) from e
        self.p.update(checked)

    def disabled(self) -> "_SCOff":
        return _SCOff(self)

    def for_simulation(self, generator: Optional[torch.Generator], device: torch.device) -> dict:
        """name -> SCLayer with its own generator, seeded from ``generator``: draws do not depend on chunking."""
        if not self.active:
            return {}
        missing = [n for n in self.layers if n not in self.p]
        if missing:
            from .simulation import SimulationError

            raise SimulationError(f"spike confidence is enabled but p is not set for layers {missing}: set sc.p, "
                                  "or derive it (msat.measure.derive_sc_p) and call snn.set_sc_p")
        out = {}
        for n in self.layers:
            dev = generator.device if generator is not None else torch.device("cpu")
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=dev))
            g = torch.Generator(device=device)
            g.manual_seed(seed)
            out[n] = SCLayer(self.p[n], self.E, self.filtered, g)
        return out


class _SCOff:
    def __init__(self, state: SCState):
        self.state = state

    def __enter__(self) -> None:
        self.saved, self.state.active = self.state.active, False

    def __exit__(self, *exc: Any) -> None:
        self.state.active = self.saved


class SpikingNetwork(nn.Module):
    """A converted network: the fx graph with spiking neurons and pools, plus its metadata.

    ``forward``/``ann_forward`` run it as the ANN (neurons = their activation, pools = max pool);
    ``msat.simulate`` runs it as the SNN. ``method`` is the configured method; ``sc`` the
    spike-confidence state; ``cost`` what conversion spent (``msat.methods.base.Cost``).
    """

    def __init__(self, gm: fx.GraphModule, neurons: list[SpikingNeuron], pools: list[SpikingPool],
                 cfg: ConversionConfig, dynamic: set[fx.Node], method: Any, ann: str = "relu"):
        super().__init__()
        self.graph_module = gm
        self.cfg = cfg
        self.method = method
        self.ann = ann
        self.cost = None
        self._neurons = neurons
        self._pools = pools
        self._dynamic_names = {n.name for n in dynamic}
        names = [n.name for n in neurons]
        sc = cfg.sc
        layers = (names[-1:] if sc.layers == "last" else names) if sc.enabled else []
        self.sc = SCState(layers, sc.E, sc.reset == "filtered")
        if layers and sc.p is not None:
            self.sc.set_p(parse_sc_p(sc.p, layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.ann_forward(x)

    def ann_forward(self, x: Tensor) -> Tensor:
        """The converted graph as the ANN: equals the original model's output (to float rounding)."""
        return self.graph_module(x)

    def ann_preactivations(self, x: Tensor) -> dict[str, Tensor]:
        """The input of each activation call site (a_l), name -> (B, ...), for the ANN on ``x``."""
        from .methods.base import record_inputs

        out: dict[str, Tensor] = {}
        with record_inputs(self._neurons, lambda m, a: out.__setitem__(m.name, a.detach().clone())), torch.no_grad():
            self.graph_module(x)
        return out

    def neuron_layers(self) -> list[tuple[str, SpikingNeuron]]:
        """(name, neuron) for every spiking layer, in execution order."""
        return [(m.name, m) for m in self._neurons]

    def pool_layers(self) -> list[tuple[str, SpikingPool]]:
        return [(m.name, m) for m in self._pools]

    @property
    def scales(self) -> dict[str, Tensor]:
        """Calibrated theta per spiking layer (0-d, or (C, 1, ...) per channel)."""
        return {m.name: m.theta for m in self._neurons}

    def sc_layers(self) -> list[str]:
        """Names of the layers spike confidence acts on (empty when SC is off)."""
        return list(self.sc.layers)

    def set_sc_p(self, p: dict[str, float]) -> None:
        """Set the SC keep probability p_l of SC layers, name -> p in [0, 1]."""
        self.sc.set_p(p)

    def is_dynamic(self, node: fx.Node) -> bool:
        return node.name in self._dynamic_names

    def reset(self) -> None:
        reset_net(self)


# ----------------------------------------------------------------------------- the pipeline

def dynamic_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes that depend on a spiking layer (they run once per time step)."""
    spiking = {n for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("spiking_layers.")}
    return _dynamic_nodes(gm, spiking)


def convert(model: nn.Module, calib: Any, cfg: Any = None) -> SpikingNetwork:
    """Convert a trained ANN into a ``SpikingNetwork`` with the method ``cfg.method`` (SPEC section 1).

    ``calib``: a tensor batch, or an iterable of batches or (x, y) pairs (up to
    ``cfg.calib.batches`` are used). ``cfg``: a mapping with ``method`` (default ``if_max``) and the
    groups neuron/calib/sc/pool (see ``msat.config``). The model itself is not modified.
    """
    from .methods import get_method
    from .methods.base import CalibContext, Cost, timed

    ccfg = conversion_config(cfg)
    method = get_method(ccfg.method.name)(ccfg)
    if not isinstance(model, nn.Module):
        raise ConversionError(f"convert expects an nn.Module, got {type(model).__name__}")
    calib = check_calibration(model, calib, ccfg.calib.batches)
    ann = activation_of(model)
    if ann not in method.ann:
        need = " or ".join(f"a {a.upper() if a == 'qcfs' else 'ReLU'} ANN" for a in method.ann)
        raise ConversionError(f"method {method.name!r} converts {need}; this model is a "
                              f"{'QCFS' if ann == 'qcfs' else 'ReLU'} ANN "
                              f"({'train it with model.act=qcfs' if 'qcfs' in method.ann else 'use another method'})")
    batches = _batches(calib, ccfg.calib.batches)
    param = next(iter(model.parameters()), None)
    if param is not None:
        batches = [x.to(param.device) for x in batches]
    gm = trace(model)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len([n for n in placeholders if not n.args]) != 1:
        raise ConversionError(f"the model's forward must take exactly one required input, got "
                              f"{[n.name for n in placeholders]}")
    with torch.no_grad():
        reference = gm(batches[0])          # original model on the first batch, before any change
    fold_bn(gm)
    if ann == "qcfs":
        # QCFS's floor is discontinuous: folding BN moves pre-activations by float rounding and flips the
        # few that sit on a quantization step, so the replacement is checked against the folded graph
        with torch.no_grad():
            reference = gm(batches[0])
    neurons, pools = replace(gm, ccfg, method.dynamics, method.neuron_kwargs())
    propagate_shapes(gm, pools, batches[0], reference, ccfg.pool.name == "avg")
    dynamic = dynamic_nodes(gm)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    if not any(isinstance(a, fx.Node) and a in dynamic for a in out_node.all_input_nodes):
        raise ConversionError("the model's output does not depend on any ReLU: nothing would spike")
    check_dynamic(gm, dynamic)
    ctx = CalibContext(gm, neurons, pools, batches, ccfg,
                       Cost(presim_steps=method.presim_steps(), calib_images=sum(int(x.shape[0]) for x in batches)))
    with timed(ctx.cost):
        for m, th in method.thresholds(ctx).items():
            m.set_theta(th)
            if bool((th <= 0).all()):
                warnings.warn(f"layer {m.name!r}: calibrated scale 0 (its ANN activations are all <= 0 on the "
                              "calibration data); it never fires", stacklevel=2)
        snn = SpikingNetwork(gm, neurons, pools, ccfg, dynamic, method, ann)
        method.after_convert(snn, ctx)
    snn.cost = ctx.cost
    return snn


__all__ = ["ConversionError", "SpikingNetwork", "SCState", "convert", "trace", "fold_bn", "replace", "check_dynamic",
           "percentile_thresholds", "ActivationStats", "dynamic_nodes"]
