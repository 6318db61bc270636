"""COS (Hao, Ding, Bu, Huang, Yu, ICLR 2023, "Bridging the gap between ANNs and SNNs by calibrating offset
spikes"; code hzc1208/ANN2SNN_COS: ``modules.py`` ``MPLayer``, ``NetworkFunction.py``, ``main.py``).

On a QCFS ANN (theta_l = lambda_l, IF neurons with soft reset, V(-1) = theta_l / 2 as for QCFS) every input
batch is first pre-simulated for ``rho`` steps, layer by layer in execution order: layer l runs its rho
steps on the input that the layers before it, already calibrated, produce, starting from V(-1) = theta/2.
In units of theta_l, with ``u(t) = z(t) / theta_l``::

    V_pre(t) = V(t-1) + u(t),   s(t) = [V_pre(t) >= 1],   V(t) = V_pre(t) - s(t),   N = sum_t s(t)

and from the residual potential V(rho) it sets the neuron's initial potential (m = ``margin`` = 1e-3)::

    one spike too many (V(rho) < 0 and N > 0):  V(-1) = 1/2 - max(1, min_{s(t)=1} V_pre(t) - (1 - m))
    one spike too few  (V(rho) >= 1):           V(-1) = 1/2 + max(1, (1 + m) - max_{s(t)=0} V_pre(t))
    otherwise:                                  V(-1) = 1/2

(a max over no step is -1000, the code's sentinel: a neuron that fired at every step and still holds
V(rho) >= 1 starts at 1001.5 + m and keeps firing). Layer l then runs its rho steps again from the new
V(-1), and that output is what layer l+1 pre-simulates on. Finally every potential is reset to its new
V(-1) and the T steps run from step 0 on the same input; only those T steps are counted, so the latency
of a result at T is rho + T (the code's tables count T; both are reported, as for SRP).

Where we follow the code rather than the paper: we could read only the paper's abstract, so everything
above is the code's ``MPLayer.forward``, and these details are the code's, not checked against the
paper's equations: the offset is read from V(rho) alone (no comparison with the ANN); a down shift needs
a spike in the rho steps (``snn_rate > 1e-3``); the shift distance is theta, or more where moving the
crossing step m * theta past the threshold needs more (the code's 0.999 / 1.001); one round per layer
(the code's ``for opt_epoch in range(1)``: its branches for further rounds read masks it never computes,
so the "iterative property" of the abstract reduces to the layer-by-layer order); the offsets are per
sample and neuron and computed anew for every test batch; the T steps replay the rho pre-simulated input
steps (the code's ``xx[t]``, t < sim_len, after the pre-simulation of ``xx[t]``, t < presim_len).

Mechanics (same numbers up to rounding; exact on the toy network of ``tests/test_cos.py``): the code runs
each layer over all its steps before the next one; our engine runs the rho steps as one chunk, in which
each layer does the same, and stores V(-1)/theta - ``neuron.v_init`` as the neuron's ``v0`` (one value per
sample and neuron: (B, ...)), which the next batch's pre-simulation replaces. Potentials are in activation
units (``v * theta_l``) where the code divides the input by theta_l. The rule needs IF neurons with
threshold theta and soft reset (``check_groups``). On a ReLU ANN (our extension; the code needs a QCFS ANN)
the thresholds are the max-norm calibration (SPEC 1.3) and the rule is the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import ConfigError, ConversionConfig, EngineOptions, MethodConfig, param
from ..neurons import SpikingNeuron, reset_net
from ..simulation import run_steps
from .registry import register_method
from .base import CalibContext, Method
from .qcfs import is_qcfs_ann, lambda_thresholds

Tensor = torch.Tensor
SENTINEL = 1000.0                     # the code's "no such step" value of the min / max V_pre


@dataclass
class COSConfig(MethodConfig):
    name: str = param("cos", "the conversion method")
    rho: int = param(4, "pre-simulation steps before the T steps of every batch (the code's presim_len; "
                     "latency rho + T)")
    margin: float = param(1e-3, "m: a shifted crossing step lands m * theta below / above the threshold "
                          "(the code's 0.999 / 1.001)")

    def check(self, where: str = "method") -> None:
        if self.rho < 1:
            raise ConfigError(f"{where}.rho must be >= 1, got {self.rho}")
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError(f"{where}.margin must be in [0, 1), got {self.margin}")


def cos_start(u: Tensor, v_init: float = 0.5, margin: float = 1e-3) -> Tensor:
    """COS's initial potential V(-1) / theta from ``u`` (rho, B, ...), a neuron's pre-simulation input in
    units of theta (threshold 1, soft reset, starting from ``v_init``); returns (B, ...). Pure."""
    v = torch.full_like(u[0], v_init)
    n = torch.zeros_like(v)
    lo = torch.full_like(v, SENTINEL)               # min V_pre over the steps that fired
    hi = torch.full_like(v, -SENTINEL)              # max V_pre over the steps that did not
    for t in range(u.shape[0]):
        v = v + u[t]                                # V_pre(t)
        s = v >= 1.0
        lo = torch.where(s, torch.minimum(lo, v), lo)
        hi = torch.where(s, hi, torch.maximum(hi, v))
        n = n + s.to(v.dtype)
        v = v - s.to(v.dtype)                       # V(t)
    down = torch.clamp(lo - (1.0 - margin), min=1.0)
    up = torch.clamp((1.0 + margin) - hi, min=1.0)
    start = torch.full_like(v, v_init)
    start = torch.where((v < 0) & (n > 0), start - down, start)
    return torch.where(v >= 1.0, start + up, start)


class calibrating_starts:
    """Context manager: while it is open, each neuron's ``run_chunk`` first sets its ``v0`` from COS's rule
    on the chunk's input (the whole pre-simulation, from t = 0), then runs the chunk from it, so the next
    layer pre-simulates on the calibrated output (the code's layer-by-layer order)."""

    def __init__(self, neurons: list[SpikingNeuron], rho: int, margin: float):
        self.neurons, self.rho, self.margin = neurons, rho, margin

    def __enter__(self) -> "calibrating_starts":
        for m in self.neurons:
            m.run_chunk = self._wrap(m, m.run_chunk)         # an instance attribute shadows the method
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in self.neurons:
            m.__dict__.pop("run_chunk", None)

    def _wrap(self, m: SpikingNeuron, run: Callable) -> Callable:
        def run_chunk(z: Tensor, steps: int, batch: int, static: bool = False, **kw: Any):
            if m.t != 0 or steps != self.rho:
                raise RuntimeError(f"COS: layer {m.name!r} must pre-simulate its {self.rho} steps in one chunk")
            zs = z.view(1 if static else steps, batch, *z.shape[1:])                  # (rho or 1, B, ...)
            if m.i_bias is not None:
                zs = zs + m.i_bias
            theta = m.theta.to(m.state_dtype(z))
            inv = 1.0 / torch.where(theta > 0, theta, torch.full_like(theta, torch.inf))  # theta 0: never fires
            u = (zs * inv).expand(steps, *zs.shape[1:])                                # (rho, B, ...)
            v_init = m.cfg.v_init
            m.set_v0(cos_start(u, v_init, self.margin) - v_init)                        # (B, ...), units of theta
            return run(z, steps, batch, static=static, **kw)

        return run_chunk


@register_method
class Cos(Method):
    """COS: rho pre-simulation steps per batch set each neuron's initial potential from its residual
    potential (one spike too many: shift down; one too few: shift up), layer by layer; then T steps."""

    name = "cos"
    label = "COS"
    citation = "Hao et al., ICLR 2023"
    params = COSConfig
    ann = ("qcfs", "relu")
    preset = {"neuron": {"v_init": 0.5}}
    variants = ({}, {"ann": "relu"})             # the code's QCFS ANN, and the ReLU ANN (our extension)
    on_qcfs = True                               # set by thresholds(): which ANN was converted

    @classmethod
    def check_groups(cls, cfg: ConversionConfig) -> None:
        n = cfg.neuron
        if n.gamma != 1 or n.reset != "soft" or n.k != 1.0:
            raise ConfigError("method=cos shifts the potential of IF neurons with threshold theta and soft reset: it "
                              f"needs neuron.gamma=1, neuron.reset=soft, neuron.k=1 (got {n.gamma}, {n.reset}, {n.k})")

    def describe(self) -> str:
        label = f"COS (rho={self.params.rho})"
        return label if self.on_qcfs else f"{label}, ReLU ANN (our extension)"

    def thresholds(self, ctx: CalibContext) -> dict:
        self.on_qcfs = is_qcfs_ann(ctx.neurons)
        return lambda_thresholds(ctx) if self.on_qcfs else super().thresholds(ctx)

    def presim_steps(self) -> int:
        return self.params.rho

    def presimulate(self, snn: Any, x: Tensor, chunk: int) -> None:
        """The rho pre-simulation steps (one chunk, no CUDA graph) set each neuron's ``v0`` = V(-1)/theta - v_init
        for this batch; the state is then reset, so the T steps start from those potentials."""
        rho = self.params.rho
        neurons = [m for _, m in snn.neuron_layers()]
        for m in neurons:
            m.set_v0(None)                      # the previous batch's offsets
        reset_net(snn)
        opts = EngineOptions(cuda_graphs=False, chunk_bytes=0)
        with calibrating_starts(neurons, rho, self.params.margin):
            run_steps(snn, x, rho, rho, return_output=False, opts=opts)
        reset_net(snn)
