"""Hydra's ConfigStore entries, generated from the dataclasses of ``msat.config`` and the method registry.

``register()`` (called by the entry points and the tests before composing) stores:

- ``convert_eval_schema`` / ``train_ann_schema``: the root schemas (``EvalConfig``,
  ``TrainRunConfig``): every group's fields, types and defaults; the YAML roots list them first;
- the resolvers ``${msat_run_id:}`` (``msat.runs.run_id``), which names fresh run directories, and
  ``${msat_default:${a},d}`` (``a``, or ``d`` where ``a`` is null: dataset-specific training defaults);
- ``dataset_schema/<class name>``: each dataset family's dataclass (``msat.data.schemas``), which
  ``conf/dataset/<name>.yaml`` lists first (its keys, types and defaults);
- the group ``method``: one option per registered method (``method=<name>``), in the global package:
  ``{method: <its params dataclass, typed>, <its preset of the neuron/calib/sc/pool groups>}``. There
  is no ``conf/method/`` directory: a method file (``msat.methods``) is all a new method needs.

A method's preset lands after the neuron/calib/sc/pool group options and before an experiment
file and the command line, so ``method=msat neuron.alpha=0.3`` overrides the preset.
"""
from __future__ import annotations

import dataclasses

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .config import EvalConfig, TrainRunConfig
from .data import dataset_schemas
from .methods import get_method, list_methods
from .runs import run_id

_DONE: set = set()


def method_node(name: str) -> dict:
    """The config node of method ``name``: its parameters (typed) and its preset of groups."""
    cls = get_method(name)
    params = dataclasses.replace(cls.params(), name=name)
    return {"method": params, **{g: dict(v) for g, v in cls.preset.items()}}


def register() -> None:
    """Store the schemas and the method group in Hydra's ConfigStore (idempotent; a method registered
    after an earlier call is stored by the next one)."""
    if not OmegaConf.has_resolver("msat_run_id"):     # a fresh run directory name (msat.runs.run_id)
        OmegaConf.register_new_resolver("msat_run_id", run_id, use_cache=True)
    if not OmegaConf.has_resolver("msat_default"):    # ${msat_default:${a},d}: a, or d where a is null
        OmegaConf.register_new_resolver("msat_default", lambda value, default: default if value is None else value)
    cs = ConfigStore.instance()
    if "schemas" not in _DONE:
        cs.store(name="convert_eval_schema", node=EvalConfig)
        cs.store(name="train_ann_schema", node=TrainRunConfig)
        for schema in dataset_schemas():
            cs.store(group="dataset_schema", name=schema.__name__, node=schema)
        _DONE.add("schemas")
    for name in list_methods():
        if name not in _DONE:
            cs.store(group="method", name=name, node=method_node(name), package="_global_")
            _DONE.add(name)


__all__ = ["register", "method_node"]
