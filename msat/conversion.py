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
import dataclasses
import operator
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from .config import (CONVERSION_GROUPS, CalibConfig, ConfigError, ConversionConfig, EvalConfig, NeuronConfig,
                     PoolConfig, SCConfig, from_mapping, to_plain)
from .methods import get_method
from .methods.base import ActivationStats, CalibContext, Cost, percentile_thresholds, timed
from .models.activations import QCFS, activation_of
from .models.graph import is_activation, trace
from .network import SCState, SpikingNetwork, ann_pools
from .neurons import SpikingNeuron
from .pooling import SpikingPool
from .utils import ConversionError

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- op tables

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


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)!s} (node {node.name!r})"
    if node.op == "call_method":
        return f"method .{node.target}() (node {node.name!r})"
    return f"node {node.name!r}"


# ----------------------------------------------------------------------------- stage: trace (msat.models.graph)

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


def _activation_sites(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """The call sites to replace (ReLU, QCFS); any other activation module is refused."""
    activation_types = tuple(v for v in vars(nn.modules.activation).values()
                             if isinstance(v, type) and issubclass(v, nn.Module) and v is not nn.ReLU
                             and v.__module__ == nn.modules.activation.__name__
                             and v is not nn.MultiheadAttention)
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(modules[n.target], activation_types):
            raise ConversionError(f"{_describe(n, modules)}: only ReLU activations can be converted to "
                                  "spiking neurons")
    relus = [n for n in gm.graph.nodes if is_activation(n, modules)]
    if not relus:
        raise ConversionError("the model has no ReLU: nothing to convert into spiking neurons")
    return relus


def _replace_activations(gm: fx.GraphModule, neuron_cfg: Any, dynamics: str,
                         neuron_kwargs: dict) -> tuple[list[SpikingNeuron], set[fx.Node]]:
    """Each activation call site -> its own ``SpikingNeuron``, named after the module (or node) it replaces."""
    modules = dict(gm.named_modules())
    used: set[str] = set()
    module_calls: dict[str, int] = {}
    neurons: list[SpikingNeuron] = []
    spiking: set[fx.Node] = set()
    for i, node in enumerate(_activation_sites(gm, modules)):
        if node.op == "call_module":
            k = module_calls.get(node.target, 0)
            module_calls[node.target] = k + 1
            name = node.target if k == 0 else f"{node.target}_{k}"
        else:
            path = _module_path(node)
            name = f"{path}.{node.name}" if path else node.name
        name = _unique(name, used)
        act = modules[node.target] if node.op == "call_module" and isinstance(modules[node.target], QCFS) else None
        neuron = SpikingNeuron(neuron_cfg, name, dynamics, ann_act=copy.deepcopy(act), **neuron_kwargs)
        spiking.add(_swap(gm, node, f"spiking_layers.n{i}", neuron))
        neurons.append(neuron)
    return neurons, spiking


def _replace_pools(gm: fx.GraphModule, dyn: set[fx.Node], pool_name: str) -> list[SpikingPool]:
    """Each max pool after the first spiking layer -> a ``SpikingPool`` of kind ``pool_name``."""
    modules = dict(gm.named_modules())
    pools: list[SpikingPool] = []
    for node in list(gm.graph.nodes):
        spec = _maxpool_spec(node, modules) if node in dyn else None
        if spec is None:
            continue
        dims, kw = spec
        name = node.target if node.op == "call_module" else node.name
        try:
            pool = SpikingPool(pool_name, dims, name=name, **kw)
        except ValueError as e:
            raise ConversionError(str(e)) from e
        _swap(gm, node, f"spiking_pools.p{len(pools)}", pool)
        pools.append(pool)
    return pools


def replace(gm: fx.GraphModule, cfg: ConversionConfig, dynamics: str = "if",
            neuron_kwargs: Optional[dict] = None) -> tuple[list[SpikingNeuron], list[SpikingPool]]:
    """Replace activation call sites (ReLU, QCFS) by neurons of ``dynamics`` and the dynamic max pools
    by spiking pools (in place). A QCFS module stays inside its neuron as the ANN-mode activation."""
    neurons, spiking = _replace_activations(gm, cfg.neuron, dynamics, neuron_kwargs or {})
    pools = _replace_pools(gm, _dynamic_nodes(gm, spiking), cfg.pool.name)
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

def _calibration_items(calib: Any) -> Iterable:
    """The batches of ``calib``: one tensor, or an iterable of tensors or (x, y) pairs."""
    if isinstance(calib, Tensor):
        return [calib]
    if isinstance(calib, Iterable) and not isinstance(calib, (str, bytes, dict)):
        return calib
    raise ConversionError(f"calibration data must be a tensor batch (B, ...) or an iterable of batches or "
                          f"(x, y) pairs, got {type(calib).__name__}")


def _check_batch(i: int, x: Any, first: Optional[Tensor], floating: Optional[torch.dtype]) -> None:
    """Calibration batch ``i`` (not empty): a tensor batch like batch 0 (``first``), of the parameters' dtype."""
    if x.dim() != 0 and x.shape[0] == 0:
        return
    if first is not None and (x.dim() != first.dim() or x.dtype != first.dtype):
        raise ConversionError(f"calibration batch {i} is {x.dtype} of shape {tuple(x.shape)}, but batch 0 is "
                              f"{first.dtype} of shape {tuple(first.shape)}: give batches of one dtype and rank")
    if x.dtype == torch.bool or x.is_complex():
        raise ConversionError(f"calibration batch {i} is {x.dtype}; give the model's input (floating point, or "
                              "integer token ids)")
    if x.is_floating_point() and floating is not None and x.dtype != floating:
        raise ConversionError(f"calibration batch {i} is {x.dtype}, but the model's parameters are {floating}: "
                              f"convert it with x.to({floating})")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ConversionError(f"calibration batch {i} holds NaN or inf values: the thresholds would be "
                              "calibrated on them")


def _probe(model: nn.Module, first: Tensor) -> None:
    """One forward of two samples of batch 0, the model in eval mode without gradients (nothing of it changes)."""
    params = list(model.parameters())
    probe = first[:2].to(params[0].device) if params else first[:2]
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    except TypeError:                              # a forward of other arguments: the trace stage names them
        pass
    except (RuntimeError, ValueError, IndexError, NotImplementedError) as e:
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
        raise ConversionError(f"the model cannot run on the calibration data (batch 0: {first.dtype}, shape "
                              f"{tuple(first.shape)}; a batch (B, ...) of the model's input is expected): "
                              f"{type(e).__name__}: {detail}") from None
    finally:
        for m, mode in training.items():
            m.training = mode


def check_calibration(model: nn.Module, calib: Any, limit: int) -> list[Tensor]:
    """The calibration batches ``convert`` uses (up to ``limit`` non-empty ones; an iterator is read once),
    checked before any stage: each a tensor batch (B, ...) of one dtype and rank, finite, of the model's
    parameter dtype when floating, and one the model runs on. Each problem is one :class:`ConversionError`
    sentence."""
    floating = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    out: list[Tensor] = []
    for i, item in enumerate(_calibration_items(calib)):
        x = item[0] if isinstance(item, (tuple, list)) and item else item
        if not isinstance(x, Tensor):
            hint = " (convert it with torch.from_numpy)" if type(x).__module__ == "numpy" else ""
            raise ConversionError(f"calibration batch {i} must be a tensor or an (x, y) pair, got "
                                  f"{type(x).__name__}{hint}")
        if x.dim() == 0:
            raise ConversionError(f"calibration batch {i} is a 0-dim tensor, not a batch (B, ...) of samples")
        _check_batch(i, x, out[0] if out else None, floating)
        if x.shape[0] > 0:
            out.append(x)
        if len(out) == limit:                      # an iterator is not read beyond the batches used
            break
    if not out:
        raise ConversionError("the calibration set is empty: give at least one non-empty batch")
    _probe(model, out[0])
    return out


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
    with ann_pools(pools), torch.no_grad():
        out = ShapeProp(gm).propagate(x)
    if reference is not None and not avg_pools and not _logits_close(out, reference):
        raise ConversionError("the converted graph does not reproduce the model's outputs in ANN mode "
                              "(an in-place op whose input is reused?)")


# ----------------------------------------------------------------------------- the pipeline

def dynamic_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes that depend on a spiking layer (they run once per time step)."""
    spiking = {n for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("spiking_layers.")}
    return _dynamic_nodes(gm, spiking)


def _deep_merge(base: Mapping, top: Mapping) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def conversion_config(cfg: Any = None, T: Optional[int] = None) -> ConversionConfig:
    """A validated ``ConversionConfig`` from a mapping with ``method`` (a name, or a mapping with
    ``name`` and the method's parameters; default ``if_max``) and the groups neuron/calib/sc/pool.

    Merge order: the dataclass defaults, then the method's preset (``Method.preset``), then the
    groups given, then what the method's parameters fix (``Method.fixed_groups``). ``T``: the simulation length, for the method parameters whose default depends on it
    (SNN Calibration's ``calib_T``, SpiCalib's ``allowance``). Other keys are ignored, so a whole run
    config can be passed; ``pool`` may be a string. ``None`` gives the defaults; a ``ConversionConfig``
    is re-validated; an ``EvalConfig`` (a checked run config) gives its typed groups as they are.
    """
    typed: dict = {}
    if isinstance(cfg, EvalConfig):          # a checked run config: its groups (the preset composed in) are typed
        typed = {g: getattr(cfg, g) for g in CONVERSION_GROUPS}
        cfg = {"method": cfg.method}
    if isinstance(cfg, ConversionConfig):
        cfg = dataclasses.asdict(cfg)
    cfg = to_plain(cfg)
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"conversion config must be a mapping, got {type(cfg).__name__}")
    node = cfg.get("method")
    node = {"name": node} if isinstance(node, str) else dict(node or {})
    method = get_method(str(node.get("name", "if_max")))
    node["name"] = method.name
    params = from_mapping(method.params, node, "method").resolve(T if isinstance(T, int) and T > 0 else None)
    groups = {g: to_plain(cfg.get(g)) for g in CONVERSION_GROUPS if cfg.get(g) is not None}
    if isinstance(groups.get("pool"), str):
        groups["pool"] = {"name": groups["pool"]}
    fixed = method.fixed_groups(params)
    merged = _deep_merge(_deep_merge(method.preset, groups), fixed)

    def group(g: str, cls: type) -> Any:
        if g in typed and g not in fixed:
            return typed[g]
        return from_mapping(cls, _deep_merge(dataclasses.asdict(typed[g]), fixed[g]) if g in typed else merged.get(g), g)

    out = ConversionConfig(method=params, **{g: group(g, cls) for g, cls in
                                             (("neuron", NeuronConfig), ("calib", CalibConfig),
                                              ("sc", SCConfig), ("pool", PoolConfig))})
    method.check_groups(out)
    return out


def _check_ann(method: Any, model: nn.Module) -> str:
    """The model's activation (relu | qcfs), which the method must convert."""
    ann = activation_of(model)
    if ann not in method.ann:
        need = " or ".join(f"a {a.upper() if a == 'qcfs' else 'ReLU'} ANN" for a in method.ann)
        raise ConversionError(f"method {method.name!r} converts {need}; this model is a "
                              f"{'QCFS' if ann == 'qcfs' else 'ReLU'} ANN "
                              f"({'train it with model.act=qcfs' if 'qcfs' in method.ann else 'use another method'})")
    return ann


def _trace_and_fold(model: nn.Module, x: Tensor, ann: str) -> tuple[fx.GraphModule, Any]:
    """Stages trace and fold BN; returns the graph and the reference output on ``x`` its ANN mode must match."""
    gm = trace(model)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len([n for n in placeholders if not n.args]) != 1:
        raise ConversionError(f"the model's forward must take exactly one required input, got "
                              f"{[n.name for n in placeholders]}")
    with torch.no_grad():
        reference = gm(x)                   # original model on the first batch, before any change
    fold_bn(gm)
    if ann == "qcfs":
        # QCFS's floor is discontinuous: folding BN moves pre-activations by float rounding and flips the
        # few that sit on a quantization step, so the replacement is checked against the folded graph
        with torch.no_grad():
            reference = gm(x)
    return gm, reference


def _checked_dynamic(gm: fx.GraphModule) -> set[fx.Node]:
    """Stage check: the dynamic nodes, which the output must depend on and which use only supported ops."""
    dynamic = dynamic_nodes(gm)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    if not any(isinstance(a, fx.Node) and a in dynamic for a in out_node.all_input_nodes):
        raise ConversionError("the model's output does not depend on any ReLU: nothing would spike")
    check_dynamic(gm, dynamic)
    return dynamic


def _calibrate(method: Any, ctx: CalibContext, dynamic: set[fx.Node], ann: str) -> SpikingNetwork:
    """Stages thresholds and after: the method's theta_l per layer, then its stages that may simulate."""
    with timed(ctx.cost):
        for m, th in method.thresholds(ctx).items():
            m.set_theta(th)
            if bool((th <= 0).all()):
                warnings.warn(f"layer {m.name!r}: calibrated scale 0 (its ANN activations are all <= 0 on the "
                              "calibration data); it never fires", stacklevel=3)
        snn = SpikingNetwork(ctx.gm, ctx.neurons, ctx.pools, ctx.cfg, dynamic, method, ann)
        method.after_convert(snn, ctx)
    snn.cost = ctx.cost
    return snn


def convert(model: nn.Module, calib: Any, cfg: Any = None, T: Optional[int] = None) -> SpikingNetwork:
    """Convert a trained ANN into a ``SpikingNetwork`` with the method ``cfg.method`` (SPEC section 1).

    ``calib``: a tensor batch, or an iterable of batches or (x, y) pairs (up to
    ``cfg.calib.batches`` are used). ``cfg``: a validated ``ConversionConfig`` (used as it is), or a
    mapping with ``method`` (default ``if_max``) and the groups neuron/calib/sc/pool, validated by
    :func:`conversion_config` with ``T`` (see there). The model itself is not modified.
    """
    ccfg = cfg if isinstance(cfg, ConversionConfig) else conversion_config(cfg, T)
    method = get_method(ccfg.method.name)(ccfg)
    if not isinstance(model, nn.Module):
        raise ConversionError(f"convert expects an nn.Module, got {type(model).__name__}")
    batches = check_calibration(model, calib, ccfg.calib.batches)
    ann = _check_ann(method, model)
    param = next(iter(model.parameters()), None)
    if param is not None:
        batches = [x.to(param.device) for x in batches]
    gm, reference = _trace_and_fold(model, batches[0], ann)
    neurons, pools = replace(gm, ccfg, method.dynamics, method.neuron_kwargs())
    propagate_shapes(gm, pools, batches[0], reference, ccfg.pool.name == "avg")
    dynamic = _checked_dynamic(gm)
    cost = Cost(presim_steps=method.presim_steps(), calib_images=sum(int(x.shape[0]) for x in batches))
    return _calibrate(method, CalibContext(gm, neurons, pools, batches, ccfg, cost), dynamic, ann)


__all__ = ["ConversionError", "SpikingNetwork", "SCState", "convert", "conversion_config", "trace", "fold_bn", "replace", "check_dynamic",
           "percentile_thresholds", "ActivationStats", "dynamic_nodes"]
