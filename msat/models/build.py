"""One function builds the ANN from (model config, data bundle, checkpoint), for training and evaluation.

Sources (``msat.config.ModelConfig``):

- a registered model: ``model=<name>`` (``msat.list_models()``), kwargs to its factory;
- any torchvision classifier: ``model=torchvision model.arch=resnet18 [model.weights=DEFAULT]``;
- your own class: ``model=custom model._target_=pkg.module.Net model.kwargs.width=64`` (Hydra's
  instantiate; ``num_classes`` is passed when the callable takes it).

Then ``model.act`` (relu | qcfs) sets the trained activation (``msat.models.activations``).

Keyword arguments merge in one order: the dataset's ``model_kwargs`` (e.g. IMDB's ``vocab_size``),
then ``model.kwargs``. The spec of what was built (``model_spec``) is saved with the checkpoint;
building against a checkpoint rebuilds exactly that spec and refuses a config that differs.
"""
from __future__ import annotations

import importlib
import inspect
import json
import weakref
from typing import Any, Callable, Mapping, Optional

import torch
import torch.hub
import torch.nn as nn

from ..config import ConfigError, ModelConfig, from_mapping
from ..utils import ConversionError, UserError, to_plain
from .activations import QCFS, apply_activation
from .graph import is_activation, trace
from .registry import _REGISTRY, create_model, list_models

SPEC_KEYS = ("name", "kwargs", "act", "act_L", "arch", "weights", "_target_")

# model -> the number of classes build_model built it for (what check_input expects of its output)
_BUILT_FOR: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def model_spec(model_cfg: Any, data_kwargs: Optional[Mapping] = None) -> dict:
    """The validated, plain description of the model to build (kwargs merged: data, then config)."""
    mc = from_mapping(ModelConfig, model_cfg, "model")
    check_model_name(mc)
    kwargs = {**dict(data_kwargs or {}), **dict(mc.kwargs)}
    if mc.width is not None:
        if kwargs.get("width", mc.width) != mc.width:
            raise UserError(f"model.width={mc.width} and model.kwargs.width={kwargs['width']} differ: set one")
        kwargs["width"] = mc.width
    return {"name": mc.name, "kwargs": kwargs, "act": mc.act, "act_L": mc.act_L, "arch": mc.arch,
            "weights": mc.weights, "_target_": mc._target_}


def check_model_name(mc: ModelConfig) -> None:
    """A registered model's name must be known (a torchvision ``arch`` or a custom ``_target_`` names itself)."""
    if mc.arch is None and mc._target_ is None and mc.name not in _REGISTRY:
        raise ConfigError(f"unknown model {mc.name!r}; valid models: {', '.join(list_models())} "
                          "(or model=torchvision model.arch=..., model=custom model._target_=...)")


def _import(path: str) -> Callable:
    """The object at the import path ``path`` (``pkg.module.Name``); a module or attribute that is not there is one
    :class:`UserError` naming the part that is missing."""
    parts = path.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise UserError(f"model._target_={path!r} is not an import path (pkg.module.Name of your nn.Module class "
                        "or factory)")
    obj, i = None, len(parts) - 1
    for i in range(len(parts) - 1, 0, -1):                # the longest prefix that is a module
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
            break
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise UserError(f"model._target_={path!r}: importing {name} failed: {e}") from None
        except Exception as e:  # the module's own code fails
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UserError(f"model._target_={path!r}: importing {name} failed ({type(e).__name__}: {first})") \
                from None
    if obj is None:
        raise UserError(f"model._target_={path!r}: there is no module {parts[0]!r} (not installed, or not on the "
                        "Python path of the launch directory)")
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            raise UserError(f"model._target_={path!r}: {'.'.join(parts[:j])} has no attribute {parts[j]!r}")
        obj = getattr(obj, parts[j])
    if not callable(obj):
        raise UserError(f"model._target_={path!r} is a {type(obj).__name__}, not a class or factory")
    return obj


def _call(factory: Callable, what: str, kwargs: dict, num_classes: int) -> nn.Module:
    """``factory(**kwargs)`` (+ num_classes if it takes one); unknown arguments name the valid ones."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    params = sig.parameters if sig is not None else {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if sig is not None and not var_kw:
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            raise UserError(f"{what} has no argument {', '.join(unknown)}; valid: {', '.join(valid)}")
    if "num_classes" in params or var_kw:
        kwargs = {"num_classes": num_classes, **kwargs}
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise UserError(f"{what}: {e}") from e
    if not isinstance(model, nn.Module):
        raise UserError(f"{what} returned {type(model).__name__}, not an nn.Module")
    return model


def _torchvision(arch: str, weights: Optional[str], num_classes: int, kwargs: dict) -> nn.Module:
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if arch not in names:
        raise UserError(f"unknown torchvision classification model {arch!r}; valid: {', '.join(names)}")
    if weights is None:
        return _call(lambda **kw: tvm.get_model(arch, weights=None, **kw), f"torchvision {arch}", kwargs,
                     num_classes)
    try:
        w = tvm.get_model_weights(arch)[weights] if weights != "DEFAULT" else tvm.get_model_weights(arch).DEFAULT
    except KeyError as e:
        valid = [m.name for m in tvm.get_model_weights(arch)]
        raise UserError(f"torchvision {arch} has no weights {weights!r}; valid: DEFAULT, {', '.join(valid)}") from e
    try:
        model = tvm.get_model(arch, weights=w, **kwargs)
    except TypeError as e:
        raise UserError(f"torchvision {arch}: {e}") from e
    except Exception as e:  # no internet, corrupt cache
        raise UserError(f"torchvision {arch} weights {w.name} could not be loaded ({type(e).__name__}: {e}); "
                        f"place {w.url.rsplit('/', 1)[-1]} in {torch.hub.get_dir()}/checkpoints/ or set "
                        "model.weights=null") from e
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1][1].out_features != num_classes:      # a new classifier for other classes
        name, old = linears[-1]
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def build_from_spec(spec: Mapping, num_classes: int) -> nn.Module:
    """The model described by ``spec`` (see :func:`model_spec`), with its activation applied."""
    kwargs = dict(spec["kwargs"])
    if spec.get("_target_"):
        model = _call(_import(str(spec["_target_"])), f"model {spec['_target_']}", kwargs, num_classes)
    elif spec.get("arch"):
        model = _torchvision(str(spec["arch"]), spec.get("weights"), num_classes, kwargs)
    else:
        name = spec["name"]
        if name not in _REGISTRY:
            raise UserError(f"unknown model {name!r}; valid models: {', '.join(list_models())} "
                            "(or model=torchvision model.arch=..., model=custom model._target_=...)")
        model = _call(lambda **kw: create_model(name, **kw), f"model {name!r}", kwargs, num_classes)
    return apply_activation(model, spec.get("act", "relu"), int(spec.get("act_L", 4)))


def build_model(model_cfg: Any, num_classes: int, data_kwargs: Optional[Mapping] = None,
                ckpt: Optional[Mapping] = None) -> tuple[nn.Module, dict]:
    """The ANN for ``model_cfg`` and the spec it was built from.

    With ``ckpt`` (a checkpoint dict of ``train_ann.py``), the checkpoint's ``model_spec`` is rebuilt;
    a config whose spec differs is refused, naming the keys. A bare state dict has no spec: the
    config's is used. Weights are not loaded here (``msat.checkpoint.load_model_weights``).
    """
    spec = model_spec(to_plain(model_cfg), data_kwargs)
    saved = ckpt.get("model_spec") if isinstance(ckpt, Mapping) else None
    if saved:
        diff = [k for k in SPEC_KEYS if k != "kwargs" and saved.get(k) != spec.get(k)]
        diff += [f"kwargs.{k}" for k in sorted(set(saved["kwargs"]) | set(spec["kwargs"]))
                 if saved["kwargs"].get(k) != spec["kwargs"].get(k)]
        if diff:
            shown = "; ".join(f"model.{k}: checkpoint {_get(saved, k)!r}, config {_get(spec, k)!r}" for k in diff)
            raise UserError(f"the checkpoint was trained with another model than this config builds ({shown}); "
                            "drop the overrides or point ckpt= at the matching checkpoint")
        spec = dict(saved)
    model = build_from_spec(spec, num_classes)
    _BUILT_FOR[model] = int(num_classes)
    return model, spec


def _get(spec: Mapping, dotted: str) -> Any:
    node: Any = spec
    for k in dotted.split("."):
        node = node.get(k) if isinstance(node, Mapping) else None
    return node




_SITES: dict = {}      # (spec, classes) -> activation sites: the jobs of a multirun check one model once


def activation_sites(spec: Mapping, num_classes: int) -> int:
    """Build the model on the meta device (no memory, no weights, no download) and count its activation
    call sites: checks the model's arguments before any data is read."""
    key = json.dumps([spec, num_classes], sort_keys=True, default=str)
    if key not in _SITES:
        _SITES[key] = _count_sites(spec, num_classes)
    return _SITES[key]


def _count_sites(spec: Mapping, num_classes: int) -> int:
    meta = {**spec, "weights": None}
    with torch.device("meta"):
        model = build_from_spec(meta, num_classes)
    try:
        gm = trace(model)
    except ConversionError:                       # not traceable: conversion says so later
        return sum(isinstance(m, (nn.ReLU, QCFS)) for m in model.modules())
    modules = dict(gm.named_modules())
    return sum(is_activation(n, modules) for n in gm.graph.nodes)


def check_input(model: nn.Module, x: torch.Tensor, spec: Mapping, dataset: str,
                num_classes: Optional[int] = None) -> None:
    """One forward of ``x`` (a batch of the dataset): the model must accept it and return one tensor of logits
    ``(batch, num_classes)`` (``num_classes``: default the classes :func:`build_model` built it for). A clear
    error instead of a deep traceback, or of accuracies computed from the wrong outputs."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # a shape mismatch, a wrong dtype, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model {spec['name']!r} does not accept the input of dataset {dataset!r} (one sample of "
                        f"shape {tuple(x.shape[1:])}, {x.dtype}): {type(e).__name__}: {first}; choose a model for "
                        "this dataset (model=...)") from None
    finally:
        model.train(was_training)
    check_output(out, x.shape[0], num_classes if num_classes is not None else _BUILT_FOR.get(model), spec, dataset)


def check_output(out: Any, batch: int, num_classes: Optional[int], spec: Mapping, dataset: str) -> None:
    """``out`` must be one tensor ``(batch, num_classes)``: the logits training and conversion read."""
    want = f"({batch}, {num_classes if num_classes is not None else 'classes'})"
    head = f"model {spec['name']!r} returns"
    if not isinstance(out, torch.Tensor):
        kind = f"a {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, (tuple, list, dict)) else "")
        raise UserError(f"{head} {kind}, not one tensor of logits {want} for a batch of {batch} of dataset "
                        f"{dataset!r}; make forward() return the logits only")
    if out.dim() != 2 or out.shape[0] != batch or (num_classes is not None and out.shape[1] != num_classes):
        classes = f"; dataset {dataset!r} has {num_classes} classes" if num_classes is not None else ""
        raise UserError(f"{head} shape {tuple(out.shape)} for a batch of {batch}, not the logits {want}{classes}; "
                        "build it for the dataset's classes (num_classes) and return (batch, classes)")
    if not out.is_floating_point():
        raise UserError(f"{head} {out.dtype} values, not floating-point logits {want}")


__all__ = ["build_model", "build_from_spec", "model_spec", "check_model_name", "activation_sites", "check_input", "check_output"]
