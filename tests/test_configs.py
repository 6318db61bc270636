"""Configs: one schema per group (the dataclasses of msat.config), YAML holding only what differs, every
option composing, methods one-to-one with the generated method group, experiment files saying what they claim, and
the conversion config recorded as composed."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from msat import config as C
from msat.config import ConfigError, from_mapping
from msat.conversion import conversion_config
from msat.evaluate import check_config
from msat.methods import get_method, list_methods
from msat.utils import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("dataset", "model", "method", "calib", "pool", "sim", "logger", "paths", "experiment", "sweep")
SCHEMAS = {"calib": C.CalibConfig, "pool": C.PoolConfig, "sim": C.SimConfig, "logger": C.LoggerConfig,
           "train": C.TrainConfig, "paths": C.PathsConfig, "model": C.ModelConfig}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_eval(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("convert_eval", overrides=list(overrides), return_hydra_config=hydra)


def test_required_group_options_exist():
    assert not options("method")                                       # no YAML: generated from the registry
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        generated = GlobalHydra.instance().config_loader().get_group_options("method")
    assert sorted(generated) == sorted(list_methods())                 # one option per registered method
    assert set(options("calib")) >= {"default", "authors", "authors_vgg16", "authors_imagenet"}
    assert set(options("pool")) >= {"lipool", "gate", "avg"}
    assert set(options("sim")) >= {"default", "smoke"}
    assert set(options("sweep")) >= {"grid", "optuna"}
    assert set(options("preset")) >= {"raw_units", "msat_resnet20", "msat_resnet34"}


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g) if (g, o) != ("model", "custom")])
def test_every_option_composes(group, option):
    cfg = compose_eval(f"{group}={option}")
    assert OmegaConf.to_container(cfg, resolve=True)                      # every interpolation resolves
    ecfg, ccfg = check_config(cfg)                                       # every group validates
    if group == "experiment":
        assert cfg.name == option                                        # runs are labelled by name


@pytest.mark.parametrize("group, schema", SCHEMAS.items())
def test_yaml_holds_only_what_differs_from_the_schema(group, schema):
    """No group option repeats a default of its dataclass: the dataclass is the one source of defaults."""
    for f in (CONF / group).glob("*.yaml"):
        node = yaml.safe_load(f.read_text()) or {}
        defaults = dataclasses.asdict(schema())
        for parent in node.pop("defaults", []):                  # an option extending another differs from it
            if parent != "_self_":
                defaults.update(yaml.safe_load((CONF / group / f"{parent}.yaml").read_text()) or {})
        same = [k for k, v in node.items() if k in defaults and defaults[k] == v and k != "name"]  # name: identity
        assert not same, f"{f.name} repeats the defaults of {same}"


def test_roots_are_defaults_lists_over_the_schemas():
    for root, schema in (("convert_eval", "convert_eval_schema"), ("train_ann", "train_ann_schema")):
        node = yaml.safe_load((CONF / f"{root}.yaml").read_text())
        assert node["defaults"][0] == schema and set(node) == {"defaults", "hydra"}


@pytest.mark.parametrize("name", list_methods())
def test_method_group_is_generated_and_composes_to_the_library_preset(name):
    """``method=<name>`` (Hydra, the group generated from the registry: no YAML file) and ``{"method": name}``
    (the library) give the same conversion config."""
    assert not (CONF / "method" / f"{name}.yaml").exists()
    cfg = compose_eval(f"method={name}")
    hydra_side = dataclasses.asdict(conversion_config(cfg, T=cfg.T))
    library = dataclasses.asdict(conversion_config({"method": name}, T=cfg.T))
    assert hydra_side == library
    assert cfg.method.name == name and get_method(name).label


def test_method_overrides_apply_on_top_and_are_validated():
    cfg = compose_eval("method=msat_dtt", "neuron.alpha=0.3", "pool=gate")
    ccfg = conversion_config(cfg)
    assert (ccfg.neuron.use_det, ccfg.neuron.alpha, ccfg.pool.name) == (False, 0.3, "gate")
    ccfg = conversion_config({"method": "robust_norm", "calib": {"percentile": 0.9999}})
    assert ccfg.calib.percentile == 0.9999
    with pytest.raises(ConfigError, match="unknown key method.tau; valid keys of method: name"):
        conversion_config({"method": {"name": "msat", "tau": 3}})
    with pytest.raises(UserError, match="unknown method 'lif'; valid methods: if_max, robust_norm"):
        conversion_config({"method": "lif"})


def test_from_mapping_is_the_one_validator():
    with pytest.raises(ConfigError, match="unknown key neuron.tresh; valid keys of neuron: use_dtt"):
        conversion_config({"neuron": {"tresh": 1}})
    with pytest.raises(ConfigError, match="calib.percentile must be in"):
        conversion_config({"calib": {"percentile": 0.0}})
    with pytest.raises(ConfigError, match="valid values: lipool, gate, avg"):
        conversion_config({"pool": "max"})
    with pytest.raises(ConfigError, match="neuron.gamma must be an integer, got 1.5"):
        conversion_config({"neuron": {"gamma": 1.5}})
    with pytest.raises(ConfigError, match="sim.chunk must be >= 1, got 0"):
        from_mapping(C.SimConfig, {"chunk": 0}, "sim")
    with pytest.raises(ConfigError, match="report_T must be a list, got 512"):
        from_mapping(C.EvalConfig, {"report_T": 512})
    with pytest.raises(ConfigError, match="seed must be an integer, got 'abc'"):
        from_mapping(C.EvalConfig, {"seed": "abc"})
    cfg = conversion_config({"pool": {"name": "gate"}, "calib": {"batch_size": 200, "transform": "train"},
                             "model": {"name": "x"}})               # other top-level keys are ignored
    assert cfg.pool.name == "gate" and cfg.calib.batch_size == 200
    d = conversion_config(None)
    assert (d.method.name, d.neuron.k, d.neuron.units, d.neuron.reset, d.sc.E, d.pool.name) == \
        ("if_max", 1.0, "normalized", "soft", 16, "lipool")
    assert (d.neuron.alpha, d.neuron.C, d.neuron.tau_mp, d.neuron.tau_rd) == (0.03, 5.0, 1.0, 1.0)
    assert conversion_config(OmegaConf.create({"method": "msat", "neuron": {"alpha": 0.3},
                                               "sc": {"enabled": True, "p": [0.9]}})).sc.p == [0.9]
    assert "neuron.alpha = 0.03" in C.config_help()


@pytest.mark.parametrize("launcher", ["local", "slurm", "joblib", "submitit_slurm"])
def test_launchers_compose(launcher):
    cfg = compose_eval(f"hydra/launcher={launcher}", hydra=True)
    assert "Launcher" in cfg.hydra.launcher._target_


def test_method_presets_mean_what_the_papers_say():
    c = {m: conversion_config({"method": m}, T=64) for m in list_methods()}
    assert (c["if_max"].neuron.k, c["if_max"].neuron.gamma, c["if_max"].calib.percentile) == (1.0, 1, 1.0)
    assert c["robust_norm"].calib.percentile == 0.999
    assert c["vth_scaled"].neuron.k == 0.2
    assert c["opi"].neuron.v_init == 0.5
    assert (c["burst"].neuron.gamma, c["burst"].pool.name) == (5, "lipool")
    assert get_method("msat").dynamics == "msat" and get_method("if_max").dynamics == "if"
    assert (c["msat_dtt"].neuron.use_dtt, c["msat_dtt"].neuron.use_det) == (True, False)
    assert (c["msat_det"].neuron.use_dtt, c["msat_det"].neuron.use_det) == (False, True)
    assert c["msat_sc"].sc.enabled and c["msat_sc"].sc.reset == "emitted" and c["msat_sc"].sc.layers == "last"
    assert c["msat_sc_filtered"].sc.reset == "filtered" and not c["msat"].sc.enabled
    cal = compose_eval("calib=authors").calib
    assert (cal.batch_size, cal.transform, cal.shuffle) == (512, "crop_flip", True)
    assert compose_eval("calib=authors_vgg16").calib.batch_size == 200
    cal = compose_eval().calib
    assert (cal.batch_size, cal.transform, cal.shuffle, cal.percentile) == (512, "test", False, 1.0)


# paper Table 2 / the authors' README
HYPER = {"vgg16": (0.03, 1.0, 1.0), "resnet20": (0.3, 0.5, 0.5), "resnet34": (1.0, 0.5, 0.5)}


@pytest.mark.parametrize("exp", options("experiment"))
def test_experiments_use_per_model_msat_hyperparameters(exp):
    cfg = compose_eval(f"experiment={exp}")
    n = cfg.neuron
    if get_method(cfg.method.name).dynamics == "msat" and cfg.model.name in HYPER:
        assert (n.alpha, n.tau_mp, n.tau_rd) == HYPER[cfg.model.name]
        assert (n.k_a, n.k_i, n.C) == (1.0, 1.0, 5.0)
        assert n.units == ("normalized" if exp.endswith("_normalized") else "raw")
    if cfg.model.name == "vgg16" and cfg.calib.transform == "crop_flip":
        assert cfg.calib.batch_size == 200                              # the authors' VGG16 runs
    if exp.endswith("_normalized"):
        twin = compose_eval(f"experiment={exp[:-len('_normalized')]}")
        a, b = OmegaConf.to_container(cfg), OmegaConf.to_container(twin)
        a["name"] = b["name"]
        a["neuron"]["units"] = b["neuron"]["units"]
        assert a == b                                                    # only the units differ


def test_no_block_is_copied_across_experiment_files():
    """Shared blocks live in base files: no experiment sets MSAT hyper-parameters, units or calibration keys."""
    for f in (CONF / "experiment").glob("*.yaml"):
        node = yaml.safe_load(f.read_text())
        assert not set(node.get("neuron") or {}) - {"units"}, f.name
        assert "calib" not in node, f.name
        if "units" in (node.get("neuron") or {}):
            assert f.stem.endswith("_normalized"), f.name                 # raw units come from /preset/raw_units


@pytest.mark.parametrize("exp", options("experiment"))
def test_recorded_conversion_config_equals_the_composed_one(exp):
    """What ``msat.convert`` receives (and metrics.json records as method.conversion) is exactly the
    composed neuron/calib/sc/pool blocks: nothing is stripped or re-defaulted on the way."""
    cfg = compose_eval(f"experiment={exp}")
    _, ccfg = check_config(cfg)
    composed = OmegaConf.to_container(cfg, resolve=True)
    recorded = dataclasses.asdict(ccfg)
    for group in ("neuron", "calib", "sc", "pool"):
        assert recorded[group] == composed[group], (exp, group)
    assert recorded["method"]["name"] == composed["method"]["name"]


def test_sweeps():
    grid = compose_eval("sweep=grid", hydra=True)
    assert str(grid.hydra.mode) == "RunMode.MULTIRUN" and grid.method.name == "msat"
    params = grid.hydra.sweeper.params
    assert set(params) == {f"neuron.{k}" for k in ("alpha", "k_a", "k_i", "C", "tau_mp", "tau_rd")}
    assert all(len(str(v).split(",")) >= 2 for v in params.values())
    opt = compose_eval("sweep=optuna", hydra=True)
    assert opt.hydra.sweeper.direction == "maximize" and opt.objective_T == 32 and opt.T >= 32
    assert set(opt.hydra.sweeper.params) == set(params)


def test_run_directories_are_unique():
    a, b = compose_eval(hydra=True), compose_eval(hydra=True)
    assert a.hydra.run.dir != b.hydra.run.dir                         # two runs started in the same second


def test_dataset_yaml_holds_only_what_differs_from_its_family_schema():
    from msat.data import _BUILDERS

    for f in (CONF / "dataset").glob("*.yaml"):
        node = yaml.safe_load(f.read_text())
        parents = [p for p in node.pop("defaults") if p != "_self_"]
        schema = _BUILDERS[node["name"]][1]
        defaults = dataclasses.asdict(schema())
        same = [k for k, v in node.items() if k != "name" and defaults.get(k, object()) == v]
        assert not same, f"{f.name} repeats the defaults of {same}"
        # its family's schema first, or another dataset option that lists it
        assert parents == [{"/dataset_schema@_here_": schema.__name__}] or all(isinstance(p, str) for p in parents)
