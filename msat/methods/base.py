"""The method interface: what a conversion method declares and the hooks the pipeline calls.

``msat.convert`` runs, for the method ``M`` named by ``cfg.method``::

    trace -> fold BN -> replace (activation call sites -> SpikingNeuron(M.dynamics))
          -> M.thresholds(ctx)        theta_l per spiking layer (default: SPEC 1.3 percentile)
          -> M.after_convert(snn, ctx) stages that may simulate (SC p, bias / potential calibration)

and ``msat.simulate`` calls ``M.presimulate(snn, x, chunk)`` before the T steps of each batch (SRP, COS).
Everything a method spends on calibration is counted in ``ctx.cost`` (seconds, ANN forward passes,
SNN steps) and recorded as ``snn.cost``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..config import ConversionConfig, MethodConfig
from ..measure import derive_sc_p
from ..network import ann_pools, record_inputs
from ..neurons import SpikingNeuron
from ..utils import ConversionError

Tensor = torch.Tensor


@dataclass
class Cost:
    """What a method spends beyond the ANN itself: calibration and pre-simulation."""

    calib_seconds: float = 0.0          # wall time of threshold calibration and the stages after it
    ann_forwards: int = 0               # ANN forward passes over a calibration batch
    sim_steps: int = 0                  # SNN time steps simulated on a calibration batch
    presim_steps: int = 0               # steps simulated before every input batch (count as latency)
    calib_images: int = 0               # images in the calibration batches

    @property
    def forwards(self) -> int:
        """Calibration forwards: ANN passes plus SNN steps (each step costs about one forward)."""
        return self.ann_forwards + self.sim_steps

    def as_dict(self) -> dict:
        return {"calib_seconds": self.calib_seconds, "ann_forwards": self.ann_forwards, "sim_steps": self.sim_steps,
                "forwards": self.forwards, "presim_steps": self.presim_steps, "calib_images": self.calib_images}


@dataclass
class CalibContext:
    """What threshold calibration and the stages after conversion see."""

    gm: Any                              # the converted fx GraphModule
    neurons: list                        # SpikingNeuron, in execution order
    pools: list                          # SpikingPool
    batches: list[Tensor]                # calibration batches (on the model's device)
    cfg: ConversionConfig
    cost: Cost = field(default_factory=Cost)

    def activations(self, fn, batches: list[Tensor] | None = None) -> None:
        """Run the converted graph as the ANN over every calibration batch (or over ``batches``); ``fn(neuron,
        a)`` receives each neuron's input (the ANN pre-activation) in execution order."""
        with record_inputs(self.neurons, fn), ann_pools(self.pools), torch.no_grad():
            for x in self.batches if batches is None else batches:
                self.gm(x)
                self.cost.ann_forwards += 1


class Method:
    """Base class of conversion methods (``if_max`` behaviour: max norm, fixed threshold).

    Subclasses set the class attributes and override the hooks they need; register them with
    ``@register_method``. ``self.cfg`` is the validated ``ConversionConfig``, ``self.params`` its
    ``method`` node (an instance of ``params``).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""            # in tables and plots
    citation: ClassVar[str] = ""
    params: ClassVar[type] = MethodConfig
    preset: ClassVar[dict] = {}          # values of the neuron/calib/sc/pool groups this method sets
    ann: ClassVar[tuple[str, ...]] = ("relu",)   # activations of the ANNs it converts
    dynamics: ClassVar[str] = "if"       # neuron dynamics: "if" (th = k*theta), "msat", "signed"
    # the rows of `make compare-methods`: overrides per row ("ann": which trained ANN, relu | qcfs)
    variants: ClassVar[tuple[dict, ...]] = ({},)
    headline: ClassVar[int] = 1          # how many leading variants a table of each method's defaults shows

    def __init__(self, cfg: ConversionConfig):
        self.cfg = cfg
        self.params = cfg.method

    # ------------------------------------------------------------------ config
    @classmethod
    def run_seeds(cls, params: Any) -> int:
        """How many run seeds (``seed=0..n-1``: calibration order, augmentation) a comparison row of these
        parameters averages over; default 1 (SNN Calibration's official protocol: its ``seeds``)."""
        return 1

    @classmethod
    def fixed_groups(cls, params: Any) -> dict:
        """Values of the neuron/calib/sc/pool groups that the method's parameters fix, applied over the groups
        given (SNN Calibration's official protocol fixes its calibration data); default none."""
        return {}

    @classmethod
    def check_groups(cls, cfg: ConversionConfig) -> None:
        """Constraints across groups (raise ConfigError); called by ``conversion_config``."""

    def describe(self) -> str:
        """The label of this configured method in tables (parameters that change the method included)."""
        return self.label

    # ------------------------------------------------------------------ hooks
    def neuron_kwargs(self) -> dict:
        """Extra arguments of every ``SpikingNeuron`` of this method (SpiCalib: allowance, debt)."""
        return {}

    def thresholds(self, ctx: CalibContext) -> dict:
        """neuron -> theta_l: the p-th percentile of its post-activation outputs (SPEC 1.3)."""
        return percentile_thresholds(ctx)

    def after_convert(self, snn: Any, ctx: CalibContext) -> None:
        """Stages after conversion: spike confidence p_l = 1 - q_l(E) when SC is on and p is not given."""
        sc = self.cfg.sc
        if sc.enabled and sc.p is None:
            p = derive_sc_p(snn, ctx.batches[0], sc.E)
            ctx.cost.sim_steps += sc.E
            ctx.cost.ann_forwards += 1
            snn.sc.set_p(p)

    def presim_steps(self) -> int:
        """Steps simulated before the T steps of every input batch (latency beyond T)."""
        return 0

    def presimulate(self, snn: Any, x: Tensor, chunk: int) -> None:
        """Per input batch, before its T steps (SRP, COS); the default does nothing."""


# ----------------------------------------------------------------------------- percentile calibration (SPEC 1.3)

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


class timed:
    """``with timed(cost): ...`` adds the block's wall time to ``cost.calib_seconds``."""

    def __init__(self, cost: Cost):
        self.cost = cost

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.cost.calib_seconds += time.perf_counter() - self.t0


__all__ = ["Method", "CalibContext", "Cost", "record_inputs", "ann_pools", "timed", "percentile_thresholds",
           "ActivationStats"]
