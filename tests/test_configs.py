"""Every config group option composes under convert_eval.yaml; experiment and sweep files say what they claim."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from msat.config import conversion_config
from msat.evaluate import check_config, conversion_cfg

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("dataset", "model", "neuron", "sc", "calib", "pool", "sim", "logger", "paths", "experiment", "sweep")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_eval(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("convert_eval", overrides=list(overrides), return_hydra_config=hydra)


def test_required_group_options_exist():
    assert set(options("neuron")) >= {"fixed", "scaled", "msat", "dtt", "det", "burst"}
    assert set(options("sc")) >= {"off", "on", "filtered"}
    assert set(options("calib")) >= {"default", "authors"}
    assert set(options("pool")) >= {"lipool", "gate", "avg"}
    assert set(options("sim")) >= {"default", "smoke"}
    assert set(options("sweep")) >= {"grid", "optuna"}


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose_eval(f"{group}={option}")
    assert OmegaConf.to_container(cfg, resolve=True)                      # every interpolation resolves
    conversion_config(conversion_cfg(cfg))                                # neuron/calib/sc/pool are valid
    if group == "experiment":
        assert cfg.name == option                                        # runs are identified by name
        check_config(cfg)                                                # T, report_T, SC E <= T ...


@pytest.mark.parametrize("launcher", ["local", "slurm", "joblib", "submitit_slurm"])
def test_launchers_compose(launcher):
    cfg = compose_eval(f"hydra/launcher={launcher}", hydra=True)
    assert "Launcher" in cfg.hydra.launcher._target_


def test_neuron_options_mean_what_the_paper_says():
    n = {o: compose_eval(f"neuron={o}").neuron for o in options("neuron")}
    assert (n["fixed"].threshold, n["fixed"].k, n["fixed"].gamma) == ("fixed", 1.0, 1)
    assert (n["scaled"].threshold, n["scaled"].k) == ("fixed", 0.2)
    assert (n["burst"].threshold, n["burst"].gamma) == ("fixed", 5)
    assert (n["msat"].threshold, n["msat"].use_dtt, n["msat"].use_det) == ("msat", True, True)
    assert (n["dtt"].use_dtt, n["dtt"].use_det) == (True, False)
    assert (n["det"].use_dtt, n["det"].use_det) == (False, True)
    assert (n["msat"].alpha, n["msat"].tau_mp, n["msat"].tau_rd, n["msat"].C) == (0.03, 1.0, 1.0, 5.0)
    sc = {o: compose_eval(f"sc={o}").sc for o in options("sc")}
    assert not sc["off"].enabled and sc["on"].enabled and sc["on"].reset == "emitted"
    assert sc["filtered"].enabled and sc["filtered"].reset == "filtered" and sc["on"].layers == "last"
    cal = compose_eval("calib=authors").calib
    assert (cal.batch_size, cal.transform, cal.shuffle) == (512, "crop_flip", True)
    cal = compose_eval().calib
    assert (cal.batch_size, cal.transform, cal.shuffle, cal.percentile) == (512, "test", False, 1.0)


# paper Table 2 / the authors' README
HYPER = {"vgg16": (0.03, 1.0, 1.0), "resnet20": (0.3, 0.5, 0.5), "resnet34": (1.0, 0.5, 0.5)}


@pytest.mark.parametrize("exp", options("experiment"))
def test_experiments_use_per_model_msat_hyperparameters(exp):
    cfg = compose_eval(f"experiment={exp}")
    n = cfg.neuron
    if n.threshold == "msat" and cfg.model.name in HYPER:
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


def test_sweeps():
    grid = compose_eval("sweep=grid", hydra=True)
    assert str(grid.hydra.mode) == "RunMode.MULTIRUN"
    params = grid.hydra.sweeper.params
    assert set(params) == {f"neuron.{k}" for k in ("alpha", "k_a", "k_i", "C", "tau_mp", "tau_rd")}
    assert all(len(str(v).split(",")) >= 2 for v in params.values())
    opt = compose_eval("sweep=optuna", hydra=True)
    assert opt.hydra.sweeper.direction == "maximize" and opt.objective_T == 32 and opt.T >= 32
    assert set(opt.hydra.sweeper.params) == set(params)
