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

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..config import ConversionConfig, MethodConfig

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

    def activations(self, fn) -> None:
        """Run the converted graph as the ANN over every calibration batch; ``fn(neuron, a)`` receives each
        neuron's input (the ANN pre-activation) in execution order."""
        with record_inputs(self.neurons, fn), ann_pools(self.pools), torch.no_grad():
            for x in self.batches:
                self.gm(x)
                self.cost.ann_forwards += 1


class record_inputs:
    """Context manager: forward pre-hooks that hand each neuron's ANN-mode input to ``fn(neuron, x)``."""

    def __init__(self, neurons: list, fn):
        self.neurons, self.fn, self.handles = neurons, fn, []

    def __enter__(self) -> "record_inputs":
        for m in self.neurons:
            self.handles.append(m.register_forward_pre_hook(lambda mod, args: self.fn(mod, args[0])))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class ann_pools:
    """Context manager: pools replaced by average pooling run as average pools in ANN mode (calibration)."""

    def __init__(self, pools: list):
        self.pools = pools

    def __enter__(self) -> None:
        for p in self.pools:
            p.ann_equivalent = True

    def __exit__(self, *exc: Any) -> None:
        for p in self.pools:
            p.ann_equivalent = False


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

    def __init__(self, cfg: ConversionConfig):
        self.cfg = cfg
        self.params = cfg.method

    # ------------------------------------------------------------------ config
    @classmethod
    def check_config(cls, cfg: ConversionConfig) -> None:
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
        from ..conversion import percentile_thresholds

        return percentile_thresholds(ctx)

    def after_convert(self, snn: Any, ctx: CalibContext) -> None:
        """Stages after conversion: spike confidence p_l = 1 - q_l(E) when SC is on and p is not given."""
        from ..measure import derive_sc_p

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


class timed:
    """``with timed(cost): ...`` adds the block's wall time to ``cost.calib_seconds``."""

    def __init__(self, cost: Cost):
        self.cost = cost

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.cost.calib_seconds += time.perf_counter() - self.t0


__all__ = ["Method", "CalibContext", "Cost", "record_inputs", "ann_pools", "timed"]
