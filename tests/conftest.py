"""Shared fixtures: keep this file minimal."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from msat.hydra_schema import register

register()          # the schemas and method nodes every compose() of conf/ needs
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def load_group_cfg(group: str, option: str, data_dir: str | Path, overrides: tuple[str, ...] = ()) -> DictConfig:
    """The resolved ``cfg.<group>`` for ``<group>=<option>`` with ``paths.data_dir=data_dir``.

    Uses Hydra's compose API on ``conf/train_ann.yaml`` when that root exists, otherwise loads the
    group file with OmegaConf and resolves it against a small ``paths`` node. ``overrides`` are
    Hydra-style ``key=value`` strings relative to the group (e.g. ``num_classes=3``).
    """
    data_dir = str(data_dir)
    if (CONF_DIR / "train_ann.yaml").exists():
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train_ann", overrides=[f"{group}={option}", f"paths.data_dir={data_dir}"]
                          + [f"{group}.{o}" for o in overrides])
    else:
        node = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
        cfg = OmegaConf.merge({"paths": {"data_dir": data_dir}}, {group: node},
                              OmegaConf.from_dotlist([f"{group}.{o}" for o in overrides]))
    return OmegaConf.create(OmegaConf.to_container(cfg[group], resolve=True))


@pytest.fixture
def group_cfg():
    """``group_cfg(group, option, data_dir, overrides=())`` -> the resolved config node."""
    return load_group_cfg
