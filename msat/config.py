"""Conversion config: typed dataclasses with help text, spec defaults, strict validation.

``conversion_config(cfg)`` takes a mapping (dict or OmegaConf ``DictConfig``, possibly a whole
Hydra config) and reads its groups ``neuron``, ``calib``, ``sc`` and ``pool``; missing keys take
the spec's defaults (SPEC sections 1-2); an unknown key or value raises ``ConfigError`` listing
the valid ones. Other top-level keys are ignored.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .utils import UserError, to_plain


class ConfigError(UserError, ValueError):
    """An unknown or invalid conversion config key or value."""


def _f(default: Any, help: str, choices: tuple = ()) -> Any:
    """A dataclass field with help text (and the valid choices, checked by ``_validate``)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class NeuronConfig:
    """Spiking neuron (SPEC section 2)."""

    threshold: str = _f("fixed", "fixed: th = k*theta; msat: multistage adaptive threshold (DTT + DET)",
                        ("fixed", "msat"))
    use_dtt: bool = _f(True, "msat: include the dynamic tracking threshold term")
    use_det: bool = _f(True, "msat: include the dynamic evoked threshold term")
    alpha: float = _f(0.03, "msat: slope of DTT in d = V(t-1) - mean V(0..t-1)")
    k_a: float = _f(1.0, "msat: softplus amplitude in DTT")
    k_i: float = _f(1.0, "msat: softplus width in DTT (> 0)")
    C: float = _f(5.0, "msat: input scale in DET = tau_rd*exp(-z/C) (> 0)")
    tau_mp: float = _f(1.0, "msat: weight of DTT")
    tau_rd: float = _f(1.0, "msat: weight of DET")
    units: str = _f("normalized", "normalized: the neuron sees z/theta (base threshold 1, V_T=-1); "
                    "raw: potentials in activation units (V_T=-theta)", ("normalized", "raw"))
    gamma: int = _f(1, "max spikes per step (1: IF; > 1: burst spikes)")
    reset: str = _f("soft", "soft: subtract th*s; hard: V=0 after a spike", ("soft", "hard"))
    v_init: float = _f(0.0, "initial potential V(-1) in units of theta")
    k: float = _f(1.0, "fixed: threshold factor, th = k*theta (> 0)")


@dataclass
class CalibConfig:
    """Threshold calibration, data-based normalization (SPEC 1.3)."""

    percentile: float = _f(1.0, "theta = this quantile of the post-ReLU activations, in (0, 1]; 1 = max")
    per_channel: bool = _f(False, "one theta per channel (dim 1) instead of per layer")
    batches: int = _f(1, "number of calibration batches used (>= 1)")
    batch_size: int = _f(512, "calibration batch size (used by whoever builds the calibration loader)")
    transform: str = _f("test", "transform of the training images used for calibration (loader side)",
                        ("test", "train", "crop_flip"))
    shuffle: bool = _f(False, "false: the first images of the split; true: the seeded loader's order "
                       "(loader side)")


@dataclass
class SCConfig:
    """Spike confidence (SPEC section 2)."""

    enabled: bool = _f(False, "drop spikes with probability 1 - p_l for t < E on the SC layers")
    E: int = _f(16, "SC acts on steps t < E (>= 0)")
    reset: str = _f("emitted", "emitted: every fired spike resets (authors' code); filtered: only "
                    "kept spikes reset (paper Eq. 20)", ("emitted", "filtered"))
    layers: str = _f("last", "SC layers: the last spiking layer or all of them", ("last", "all"))
    p: Any = _f(None, "keep probability: null (derive with msat.measure.derive_sc_p), a float, "
                "a list (one per SC layer) or a mapping layer name -> float")


@dataclass
class ConversionConfig:
    """Everything ``msat.convert`` needs besides the model and the calibration data."""

    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    sc: SCConfig = field(default_factory=SCConfig)
    pool: str = "lipool"


POOL_CHOICES = ("lipool", "gate", "avg")
_GROUPS = {"neuron": NeuronConfig, "calib": CalibConfig, "sc": SCConfig}
# a Hydra group option may carry its own label under ``name``; it is accepted and ignored
_LABEL_KEY = "name"


def _coerce(group: str, key: str, value: Any, typ: Any) -> Any:
    where = f"{group}.{key}"
    if typ in (bool, "bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if typ in (int, "int"):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if typ in (float, "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if typ in (str, "str"):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _build(group: str, cls: type, raw: Any) -> Any:
    raw = to_plain(raw)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config group {group!r} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields) - {_LABEL_KEY})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {group!r}; valid keys: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        v = _coerce(group, name, raw[name], f.type)
        choices = f.metadata.get("choices", ())
        if choices and v not in choices:
            raise ConfigError(f"invalid value {v!r} for {group}.{name}; valid values: {', '.join(choices)}")
        values[name] = v
    return cls(**values)


def _check_prob(where: str, p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ConfigError(f"{where} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _validate(cfg: ConversionConfig) -> None:
    n, c, s = cfg.neuron, cfg.calib, cfg.sc
    positive = {"neuron.k": n.k, "neuron.k_i": n.k_i, "neuron.C": n.C}
    for where, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{where} must be > 0, got {v}")
    if n.gamma < 1:
        raise ConfigError(f"neuron.gamma must be >= 1, got {n.gamma}")
    if not 0.0 < c.percentile <= 1.0:
        raise ConfigError(f"calib.percentile must be in (0, 1], got {c.percentile}")
    if c.batches < 1:
        raise ConfigError(f"calib.batches must be >= 1, got {c.batches}")
    if c.batch_size < 1:
        raise ConfigError(f"calib.batch_size must be >= 1, got {c.batch_size}")
    if s.E < 0:
        raise ConfigError(f"sc.E must be >= 0, got {s.E}")
    p = s.p
    if isinstance(p, Mapping):
        s.p = {str(k): _check_prob(f"sc.p[{k!r}]", v) for k, v in p.items()}
    elif isinstance(p, (list, tuple)):
        s.p = [_check_prob(f"sc.p[{i}]", v) for i, v in enumerate(p)]
    elif p is not None:
        s.p = _check_prob("sc.p", p)
    if cfg.pool not in POOL_CHOICES:
        raise ConfigError(f"invalid value {cfg.pool!r} for pool; valid values: {', '.join(POOL_CHOICES)}")


def _pool_name(raw: Any) -> str:
    raw = to_plain(raw)
    if raw is None:
        return "lipool"
    if isinstance(raw, Mapping):
        extra = sorted(set(raw) - {"name"})
        if extra or "name" not in raw:
            raise ConfigError(f"pool must be a string or a mapping with the single key 'name', got keys {sorted(raw)}")
        raw = raw["name"]
    if not isinstance(raw, str):
        raise ConfigError(f"pool must be one of {', '.join(POOL_CHOICES)}, got {raw!r}")
    return raw


def conversion_config(cfg: Any = None) -> ConversionConfig:
    """Build a validated ``ConversionConfig`` from a mapping with groups neuron/calib/sc/pool.

    ``None`` or an empty mapping gives the spec defaults; an existing ``ConversionConfig`` is
    re-validated and returned as a copy.
    """
    if isinstance(cfg, ConversionConfig):
        cfg = dataclasses.asdict(cfg)
    cfg = to_plain(cfg)
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"conversion config must be a mapping, got {type(cfg).__name__}")
    out = ConversionConfig(
        neuron=_build("neuron", NeuronConfig, cfg.get("neuron")),
        calib=_build("calib", CalibConfig, cfg.get("calib")),
        sc=_build("sc", SCConfig, cfg.get("sc")),
        pool=_pool_name(cfg.get("pool")),
    )
    _validate(out)
    return out


def config_help() -> str:
    """Every key with its default and help text, one line each (for docs and ``--help``)."""
    lines = []
    for group, cls in _GROUPS.items():
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices") or ()
            extra = f" [{'|'.join(choices)}]" if choices else ""
            lines.append(f"{group}.{f.name} = {f.default!r}{extra}: {f.metadata.get('help', '')}")
    lines.append(f"pool = 'lipool' [{'|'.join(POOL_CHOICES)}]: max pooling under spikes (SPEC 1.4)")
    return "\n".join(lines)


__all__ = ["ConfigError", "ConversionConfig", "NeuronConfig", "CalibConfig", "SCConfig",
           "conversion_config", "config_help", "POOL_CHOICES"]
