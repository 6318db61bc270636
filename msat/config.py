"""Config schemas: typed dataclasses, the one source of defaults, types, choices and help.

Every config group the suite reads (``neuron``, ``calib``, ``sc``, ``pool``, ``sim``, ``train``,
``model``, ``logger``, ``paths``) and the two run configs (``EvalConfig`` behind
``convert_eval.py``, ``TrainRunConfig`` behind ``train_ann.py``) are dataclasses here.
``msat.hydra_schema.register()`` stores them in Hydra's ConfigStore as the roots' schemas, so
the YAML files under ``conf/`` hold only what differs from these defaults.

One validator, :func:`from_mapping`, turns a plain mapping (a dict, an OmegaConf node, a whole
Hydra config) into the dataclass: unknown keys, values of the wrong type and values outside a
field's choices or range raise :class:`ConfigError` in one line that lists the valid keys or
values. ``msat.convert``, ``convert_eval.py`` and ``train_ann.py`` all go through it.

This module imports neither Hydra nor OmegaConf (the library core runs without them).
"""
import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .utils import UserError, to_plain


class ConfigError(UserError, ValueError):
    """An unknown or invalid config key or value (one line, listing the valid ones)."""


def param(default: Any, help: str, choices: tuple = ()) -> Any:
    """A dataclass field with help text and, for strings, the valid choices."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, "choices": choices})
    return field(default=default, metadata={"help": help, "choices": choices})


# ----------------------------------------------------------------------------- the validator

def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t).replace("typing.", ""))


def _coerce(where: str, value: Any, typ: Any) -> Any:
    """``value`` checked against the type hint ``typ`` (bool, int, float, str, Optional, List, Dict, Any,
    a dataclass); ints are accepted for floats, integral floats for ints."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(where, value, inner[0])
        return value
    if value is None:
        raise ConfigError(f"{where} must not be null (expected {_type_name(typ)})")
    if dataclasses.is_dataclass(typ):
        return from_mapping(typ, value, where)
    if origin in (list, List, Sequence) or typ is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (dict, Dict, Mapping) or typ is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(f"{where}.{k}", v, item) for k, v in value.items()}
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_mapping(cls: type, raw: Any = None, where: str = "") -> Any:
    """Build the dataclass ``cls`` from ``raw`` (a mapping, an OmegaConf node, or None for the defaults),
    checking every key, type, choice and range; an instance of ``cls`` was built here (checked) and is
    returned as it is.

    ``where`` is the dotted prefix used in messages (``"neuron"`` gives ``neuron.alpha must be ...``).
    """
    if isinstance(raw, cls):
        return raw                       # validated already: typed configs flow down, checked once
    raw = to_plain(raw)
    if raw is None:
        raw = {}
    label = where or cls.__name__
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{label} must be a mapping of {', '.join(field_names(cls))}, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in raw if k not in fields)
    if unknown:
        keys = "key" if len(unknown) == 1 else "keys"
        raise ConfigError(f"unknown {keys} {', '.join(f'{where}.{k}' if where else k for k in unknown)}; "
                          f"valid keys of {label}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = f"{where}.{name}" if where else name
        v = _coerce(key, raw[name], hints[name])
        choices = f.metadata.get("choices", ())
        if choices and v is not None and v not in choices:
            raise ConfigError(f"invalid value {v!r} for {key}; valid values: {', '.join(map(str, choices))}")
        values[name] = v
    out = cls(**values)
    check = getattr(out, "check", None)
    if check is not None:
        check(where)
    return out


def _positive(where: str, **values: float) -> None:
    for k, v in values.items():
        if v is not None and v <= 0:
            raise ConfigError(f"{where}.{k} must be > 0, got {v}")


def _at_least(where: str, bound: int, **values: Optional[int]) -> None:
    for k, v in values.items():
        if v is not None and v < bound:
            raise ConfigError(f"{where}.{k} must be >= {bound}, got {v}")


def _w(where: str) -> str:
    return where or "config"


SEED_MAX = 2**32 - 1       # every seed a run derives (per batch, per loader, NumPy's, Optuna's) stays in range


def check_seed(seed: int, where: str = "") -> None:
    """A run's ``seed``: 0 <= seed <= 2**32 - 1 (torch, NumPy and the per-batch seeds derived from it take it)."""
    key = f"{where}.seed" if where else "seed"
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{key}={seed} is outside 0..{SEED_MAX} (2**32 - 1): give a non-negative integer seed "
                          "below 2**32")


def check_run_name(name: str) -> None:
    """``name`` labels the run and is one folder under ``paths.output_dir/convert_eval``: one path component."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"name={name!r} is not a plain run name: it is a folder under paths.output_dir/"
                          "convert_eval, so it must be non-empty, not '.' or '..', and contain no '/' (to write "
                          "elsewhere set paths.output_dir or hydra.run.dir)")


# ----------------------------------------------------------------------------- conversion groups

@dataclass
class NeuronConfig:
    """Spiking neuron parameters (SPEC section 2). The dynamics (fixed threshold, MSAT, signed
    spikes) belong to the method; the MSAT defaults are VGG16's (paper Table 2)."""

    use_dtt: bool = param(True, "msat: include the dynamic tracking threshold term")
    use_det: bool = param(True, "msat: include the dynamic evoked threshold term")
    alpha: float = param(0.03, "msat: slope of DTT in d = V(t-1) - mean V(0..t-1)")
    k_a: float = param(1.0, "msat: softplus amplitude in DTT")
    k_i: float = param(1.0, "msat: softplus width in DTT (> 0)")
    C: float = param(5.0, "msat: input scale in DET = tau_rd*exp(-z/C) (> 0)")
    tau_mp: float = param(1.0, "msat: weight of DTT")
    tau_rd: float = param(1.0, "msat: weight of DET")
    units: str = param("normalized", "normalized: the neuron sees z/theta (base threshold 1, V_T=-1); "
                    "raw: potentials in activation units (V_T=-theta)", ("normalized", "raw"))
    gamma: int = param(1, "max spikes per step (1: IF; > 1: burst spikes)")
    reset: str = param("soft", "soft: subtract th*s; hard: V=0 after a spike", ("soft", "hard"))
    v_init: float = param(0.0, "initial potential V(-1) in units of theta")
    k: float = param(1.0, "fixed threshold factor: th = k*theta (> 0)")

    def check(self, where: str = "neuron") -> None:
        _positive(_w(where), k=self.k, k_i=self.k_i, C=self.C)
        _at_least(_w(where), 1, gamma=self.gamma)


@dataclass
class CalibConfig:
    """Threshold calibration, data-based normalization (SPEC 1.3), and the batch it reads."""

    percentile: float = param(1.0, "theta = this quantile of the post-ReLU activations, in (0, 1]; 1 = max")
    per_channel: bool = param(False, "one theta per channel (dim 1) instead of per layer")
    batches: int = param(1, "number of calibration batches used (>= 1)")
    batch_size: int = param(512, "images per calibration batch (convert_eval's loader)")
    transform: str = param("test", "transform of the training images used for calibration",
                        ("test", "train", "crop_flip"))
    shuffle: bool = param(False, "false: the first images of the training split; true: the seeded loader's order")

    def check(self, where: str = "calib") -> None:
        if not 0.0 < self.percentile <= 1.0:
            raise ConfigError(f"{_w(where)}.percentile must be in (0, 1], got {self.percentile}")
        _at_least(_w(where), 1, batches=self.batches, batch_size=self.batch_size)


@dataclass
class SCConfig:
    """Spike confidence (SPEC section 2)."""

    enabled: bool = param(False, "drop spikes with probability 1 - p_l for t < E on the SC layers")
    E: int = param(16, "SC acts on steps t < E (>= 0); also the step of the per-layer statistics")
    reset: str = param("emitted", "emitted: every fired spike resets (authors' code); filtered: only kept "
                    "spikes reset (paper Eq. 20)", ("emitted", "filtered"))
    layers: str = param("last", "SC layers: the last spiking layer or all of them", ("last", "all"))
    p: Any = param(None, "keep probability: null (derived: p_l = 1 - q_l(E) on the calibration batch), a "
                "number, a list (one per SC layer) or a mapping layer name -> number")

    def check(self, where: str = "sc") -> None:
        _at_least(_w(where), 0, E=self.E)
        self.p = parse_sc_p(self.p, where=f"{_w(where)}.p")


POOL_CHOICES = ("lipool", "gate", "avg")


@dataclass
class PoolConfig:
    """Max pooling under spikes (SPEC 1.4)."""

    name: str = param("lipool", "lipool: lateral inhibition; gate: the most active input; avg: average pooling "
                   "(an ANN trained with it)", POOL_CHOICES)


def parse_sc_p(p: Any, layers: Optional[Sequence[str]] = None, where: str = "sc.p") -> Any:
    """The one parser of ``sc.p``: null, a number, a list (one per SC layer) or a mapping name -> p,
    each in [0, 1]. With ``layers`` (the SC layers, in order) returns a dict name -> p (null stays
    None: derive it); without, returns the checked value."""
    p = to_plain(p)

    def prob(key: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ConfigError(f"{key} must be a probability in [0, 1], got {v!r}")
        return float(v)

    if p is None:
        out: Any = None
    elif isinstance(p, Mapping):
        out = {str(k): prob(f"{where}[{k!r}]", v) for k, v in p.items()}
    elif isinstance(p, Sequence) and not isinstance(p, str):
        out = [prob(f"{where}[{i}]", v) for i, v in enumerate(p)]
    else:
        out = prob(where, p)
    if layers is None or out is None:
        return out
    layers = list(layers)
    if isinstance(out, float):
        return {n: out for n in layers}
    if isinstance(out, list):
        if len(out) != len(layers):
            raise ConfigError(f"{where} lists {len(out)} values for {len(layers)} SC layers {layers}")
        return dict(zip(layers, out))
    unknown, missing = [k for k in out if k not in layers], [n for n in layers if n not in out]
    if unknown or missing:
        raise ConfigError(f"{where} names unknown layers {unknown} / lacks layers {missing}; SC layers: {layers}")
    return {n: out[n] for n in layers}


@dataclass
class MethodConfig:
    """The ``method`` node: the method's name and its own parameters (each method extends this)."""

    name: str = param("if_max", "the conversion method (msat.methods.list_methods())")

    def check(self, where: str = "method") -> None:
        """Range checks of a method's parameters (methods override)."""

    def resolve(self, T: Optional[int]) -> "MethodConfig":
        """The parameters with defaults that depend on the simulation length T filled in (methods override)."""
        return self


@dataclass
class ConversionConfig:
    """Everything ``msat.convert`` needs besides the model and the calibration data."""

    method: Any = field(default_factory=MethodConfig)
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    sc: SCConfig = field(default_factory=SCConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)


CONVERSION_GROUPS = ("neuron", "calib", "sc", "pool")


# ----------------------------------------------------------------------------- run groups

PRECISIONS = ("fp32", "tf32", "bf16")
CPU_CHUNK_BYTES = 16 << 20          # EngineOptions.chunk_bytes on CPU when unset


@dataclass
class EngineOptions:
    """How the simulation engine runs (never what it computes, up to floating-point rounding): the
    ``options`` of ``msat.simulate`` and the ``sim.*`` keys of the same names (``SimConfig`` is one).
    ``None`` picks the device's fast path (:meth:`resolve`):

    - ``fused``: each neuron step as one compiled kernel (``msat.neurons.fused_step``); default on CUDA;
    - ``precision``: ``fp32``; ``tf32`` (CUDA: TF32 convolutions and matmuls; on CPU the same as fp32);
      ``bf16`` (convolutions and linear layers under bf16 autocast; membrane state stays fp32);
    - ``cuda_graphs``: replay each full chunk after the first as one CUDA graph (default on CUDA);
    - ``channels_last``: NHWC activations for 4-D inputs (default on; on CPU oneDNN's convolutions then skip
      their NCHW reorders: measured 1.2-1.4x faster on VGG16, see ``benchmarks/bench_sim.py``);
    - ``chunk_bytes``: cap the folded chunk so that no activation of a chunk exceeds this many bytes (default
      on CPU 16 MiB: glibc then reuses freed chunk buffers instead of mapping them anew each chunk; 0: off).
    """

    precision: str = param("fp32", "fp32; tf32 (CUDA: TF32 convolutions); bf16 (convolutions in bf16 autocast, "
                           "membrane state in fp32)", PRECISIONS)
    fused: Optional[bool] = param(None, "one compiled kernel per neuron layer and step (null: on CUDA only)")
    cuda_graphs: Optional[bool] = param(None, "replay full chunks as CUDA graphs (null: on CUDA)")
    channels_last: Optional[bool] = param(None, "NHWC activations for 4-D inputs (null: on)")
    chunk_bytes: Optional[int] = param(None, "cap a chunk so no folded activation exceeds this many bytes "
                                       "(null: 16 MiB on CPU, none on CUDA; 0: no cap)")

    def engine(self) -> "EngineOptions":
        """These options alone (a ``SimConfig`` without its other keys)."""
        return EngineOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EngineOptions)})

    def resolve(self, device: Any) -> "EngineOptions":
        """The options for ``device`` (a ``torch.device`` or its name), every ``None`` replaced by the device's
        default; options already resolved come back equal."""
        cuda = getattr(device, "type", str(device).split(":")[0]) == "cuda"
        return EngineOptions(
            precision=self.precision,
            fused=cuda if self.fused is None else bool(self.fused),
            cuda_graphs=cuda and (True if self.cuda_graphs is None else bool(self.cuda_graphs)),
            channels_last=True if self.channels_last is None else bool(self.channels_last),
            chunk_bytes=(0 if cuda else CPU_CHUNK_BYTES) if self.chunk_bytes is None else self.chunk_bytes)

    def check(self, where: str = "sim") -> None:
        _at_least(_w(where), 0, chunk_bytes=self.chunk_bytes)


@dataclass
class _SimBatches:
    batch_size: int = param(128, "test images per batch")
    chunk: int = param(32, "time steps folded into one batch for stateless layers")
    progress: bool = param(True, "progress (rank 0): a bar on a terminal, otherwise a log line every 10 % with "
                           "the rate and the time left")


@dataclass
class _SimRun:
    tune_malloc: bool = param(True, "CPU: also raise glibc's mmap threshold in this process "
                           "(msat.simulation.tune_cpu_allocator; measured faster for MSAT, see README Speed)")
    checkpoint_every: int = param(50, "write eval_state[.rankN].pt every this many batches (0: never)")
    stop_after_batches: Optional[int] = param(None, "test hook: stop (like a kill) after this many batches")


@dataclass
class SimConfig(_SimRun, EngineOptions, _SimBatches):
    """Simulation of the test split (convert_eval): batches, the engine's options (an :class:`EngineOptions`:
    ``sim.precision``, ``sim.fused``, ...) and the run's own keys, in that order (a dataclass takes its bases'
    fields from the last base to the first)."""

    def check(self, where: str = "sim") -> None:
        _at_least(_w(where), 1, batch_size=self.batch_size, chunk=self.chunk, stop_after_batches=self.stop_after_batches)
        _at_least(_w(where), 0, checkpoint_every=self.checkpoint_every)
        EngineOptions.check(self, where)


@dataclass
class TrainConfig:
    """ANN training: the SGD + cosine recipe of SPEC section 4."""

    epochs: int = param(300, "training epochs (conf/train/default.yaml takes the dataset's own `epochs`)")
    batch_size: int = param(128, "global batch size; divided across DDP processes")
    eval_batch_size: int = param(128, "test batch size")
    lr: float = param(0.1, "base learning rate (> 0)")
    momentum: float = param(0.9, "SGD momentum (>= 0)")
    weight_decay: float = param(5e-4, "weight decay (>= 0)")
    nesterov: bool = param(False, "Nesterov momentum")
    label_smoothing: float = param(0.0, "label smoothing in [0, 1)")
    warmup_epochs: int = param(0, "linear warm-up epochs before the cosine decay")
    num_workers: int = param(0, "DataLoader workers")
    amp: bool = param(True, "float16 autocast + GradScaler (CUDA only)")
    channels_last: bool = param(True, "channels-last memory format for 4-D inputs (CUDA only)")
    deterministic: bool = param(False, "deterministic cuDNN kernels (slower on GPU)")
    progress: bool = param(True, "progress bars on a terminal, otherwise a log line every 10 % of an epoch longer "
                           "than 30 s")
    resume: bool = param(False, "continue from the _last.pt beside ckpt_path (fresh start if absent)")
    ckpt_path: Optional[str] = param(None, "null: ${paths.ckpt_dir}/${dataset.name}_${model.name}.pt")
    max_steps_per_epoch: Optional[int] = param(None, "cap training batches per epoch (smoke runs)")
    max_eval_batches: Optional[int] = param(None, "cap test batches per evaluation (smoke runs)")
    stop_after_epochs: Optional[int] = param(None, "stop after this many epochs in this invocation (resume later)")
    lambda_lr: Optional[float] = param(None, "QCFS: learning rate of the clipping levels lambda (null: lr)")

    def check(self, where: str = "train") -> None:
        w = _w(where)
        _at_least(w, 1, epochs=self.epochs, batch_size=self.batch_size, eval_batch_size=self.eval_batch_size,
                  max_steps_per_epoch=self.max_steps_per_epoch, max_eval_batches=self.max_eval_batches,
                  stop_after_epochs=self.stop_after_epochs)
        _positive(w, lr=self.lr, lambda_lr=self.lambda_lr)
        _at_least(w, 0, num_workers=self.num_workers)
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError(f"{w}.momentum and {w}.weight_decay must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{w}.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"{w}.warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")


@dataclass
class ModelConfig:
    """The ANN: a registered model (``name``), any torchvision classifier (``arch``) or your own
    class (``_target_``, built with Hydra's instantiate), and its activation."""

    name: str = param("digits_cnn", "registered model name (msat.list_models()), or the label of a "
                   "torchvision / custom model in checkpoint names and tables")
    kwargs: Dict[str, Any] = param({}, "keyword arguments of the model's constructor")
    width: Optional[int] = param(None, "channels of the first stage (resnet20: 16, vgg16: 64 as in the paper); "
                                 "null: the model's default; same as kwargs.width")
    act: str = param("relu", "activation trained in the ANN: relu, or qcfs (Bu et al. 2022; max pools "
                  "become average pools)", ("relu", "qcfs"))
    act_L: int = param(4, "qcfs: quantization levels L")
    arch: Optional[str] = param(None, "torchvision: a classification model of torchvision.models (e.g. resnet18)")
    weights: Optional[str] = param(None, "torchvision: a weights name (e.g. DEFAULT, IMAGENET1K_V1); null: random init")
    _target_: Optional[str] = param(None, "custom: import path of your nn.Module class or factory (pkg.module.Net)")

    def check(self, where: str = "model") -> None:
        _at_least(_w(where), 1, act_L=self.act_L, width=self.width)
        if self.arch is not None and self._target_ is not None:
            raise ConfigError(f"{_w(where)}: set arch (torchvision) or _target_ (custom), not both")


@dataclass
class LoggerConfig:
    """Run logging: local JSONL/CSV files always, Weights & Biases when ``backend: wandb``."""

    backend: str = param("wandb", "wandb | none (local files only)", ("wandb", "none"))
    mode: str = param("offline", "W&B mode", ("offline", "online", "disabled"))
    project: str = param("msat", "W&B project")
    entity: Optional[str] = param(None, "W&B entity")
    group: Optional[str] = param(None, "W&B group")
    tags: List[str] = param([], "W&B tags")
    run_name: Optional[str] = param(None, "W&B run name")
    job_type: Optional[str] = param(None, "W&B job type")
    notes: Optional[str] = param(None, "W&B notes")
    init_timeout: float = param(30.0, "seconds to wait for an online W&B server before falling back to offline")
    verbose: bool = param(False, "show W&B's own console lines (default: one summary line)")


@dataclass
class PathsConfig:
    """The single source of paths (relative to the launch directory; environment variables move them)."""

    root_dir: str = "${oc.env:MSAT_ROOT,.}"
    data_dir: str = "${oc.env:MSAT_DATA_DIR,${paths.root_dir}/data}"
    ckpt_dir: str = "${oc.env:MSAT_CKPT_DIR,${paths.root_dir}/checkpoints}"
    output_dir: str = "${paths.root_dir}/outputs"
    results_dir: str = "${paths.root_dir}/results"


@dataclass
class EvalConfig:
    """``convert_eval.py``: convert a trained ANN, simulate the test split to T, measure, write."""

    dataset: Any = param(None, "the dataset node (conf/dataset/)")
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = param(None, "the method node (method=<name>: generated from the registry, msat.methods)")
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    sc: SCConfig = field(default_factory=SCConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    name: str = param("convert_eval", "run label (experiment files set the table cell they reproduce)")
    T: int = param(256, "simulation length; one simulation to T serves every reported T")
    report_T: Optional[List[int]] = param(None, "steps shown in the summary; null: 1, 4, 8, ..., 256 up to T (and T)")
    lossless_tol: float = param(0.0, "steps_to_lossless: first t with acc >= ann_acc - lossless_tol (fraction)")
    seed: int = param(0, "seed of everything random in the run (calibration order, SC draws)")
    ckpt: Optional[str] = param(None, "null: ${paths.ckpt_dir}/${dataset.name}_${model.name}.pt (train_ann.py's)")
    device: str = param("auto", "auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK)")
    objective_T: Optional[int] = param(None, "sweeps: the task returns the accuracy at this T")
    skip_done: bool = param(False, "reuse a run directory that holds metrics.json of the same config")
    resume: bool = param(False, "continue from the run directory's eval_state*.pt (hydra.run.dir=<that dir>)")

    def check(self, where: str = "") -> None:
        check_run_name(self.name)
        check_seed(self.seed, where)
        if self.T < 1:
            raise ConfigError(f"T must be a positive integer (the number of time steps), got {self.T}")
        if self.report_T is not None:
            bad = [t for t in self.report_T if not 1 <= t <= self.T]
            if bad:
                raise ConfigError(f"report_T {bad} outside 1..T={self.T}: every reported T must be in 1..T")
        if not 0.0 <= self.lossless_tol <= 1.0:
            raise ConfigError(f"lossless_tol is an accuracy difference in [0, 1], got {self.lossless_tol}")
        if self.objective_T is not None and not 1 <= self.objective_T <= self.T:
            raise ConfigError(f"objective_T={self.objective_T} outside 1..T={self.T}")


@dataclass
class TrainRunConfig:
    """``train_ann.py``: train the ANN that is converted."""

    dataset: Any = param(None, "the dataset node (conf/dataset/)")
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = param(0, "seed of initialization, data order and augmentation")
    device: str = param("auto", "auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK)")

    def check(self, where: str = "") -> None:
        check_seed(self.seed, where)


def config_help(cls: type = EvalConfig, prefix: str = "") -> str:
    """Every key with its default, choices and help text, one line each."""
    lines = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            lines.append(config_help(hint, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices") or ()
        extra = f" [{'|'.join(choices)}]" if choices else ""
        lines.append(f"{key} = {default!r}{extra}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


__all__ = ["ConfigError", "from_mapping", "config_help", "parse_sc_p", "ConversionConfig",
           "NeuronConfig", "CalibConfig", "SCConfig", "PoolConfig", "MethodConfig", "SimConfig", "TrainConfig",
           "ModelConfig", "LoggerConfig", "PathsConfig", "EvalConfig", "TrainRunConfig", "POOL_CHOICES",
           "CONVERSION_GROUPS", "check_seed", "check_run_name", "SEED_MAX", "EngineOptions", "PRECISIONS"]
