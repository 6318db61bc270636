"""SRP (Hao et al., AAAI 2023, "Reducing ANN-SNN conversion error through residual membrane potential";
code hzc1208/ANN2SNN_SRP).

Per input batch, a pre-simulation of ``tau`` steps (IF neurons, V(-1) = theta/2, soft reset) gives every
neuron a residual potential V(tau); a neuron whose residual is not above ``eps * theta`` (the code's
``v > 1e-3`` in units of theta) is masked: it keeps integrating, but its spikes are not emitted. Then
the potentials are reset to theta/2 and the T steps run with the masks fixed; only those T steps are
counted in the prediction. The latency of a result at T is tau + T (the paper counts tau + T, the
code's tables T: both are reported).

Thresholds follow the ANN: lambda_l of a QCFS-trained ANN (the paper's and the code's setting); on a ReLU
ANN (our extension: the official code needs a QCFS ANN) the max-norm calibration (SPEC 1.3), and the row
label says so.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, MethodConfig, param
from ..neurons import reset_net
from ..simulation import run_steps
from .registry import register_method
from .base import CalibContext, Method
from .qcfs import is_qcfs_ann, lambda_thresholds


@dataclass
class SRPConfig(MethodConfig):
    name: str = param("srp", "the conversion method")
    tau: int = param(4, "pre-simulation steps before the T steps of every batch (latency tau + T)")
    eps: float = param(1e-3, "a neuron stays unmasked when V(tau) > eps * theta (the code's 1e-3)")

    def check(self, where: str = "method") -> None:
        if self.tau < 1:
            raise ConfigError(f"{where}.tau must be >= 1, got {self.tau}")


@register_method
class Srp(Method):
    """SRP: tau pre-simulation steps, a mask from the residual membrane potential, then T masked steps."""

    name = "srp"
    label = "SRP"
    citation = "Hao et al., AAAI 2023"
    params = SRPConfig
    ann = ("qcfs", "relu")
    preset = {"neuron": {"v_init": 0.5}}
    variants = ({}, {"ann": "relu"})             # the paper's QCFS ANN, and the ReLU ANN (our extension)
    on_qcfs = True                               # set by thresholds(): which ANN was converted

    def describe(self) -> str:
        label = f"SRP (tau={self.params.tau})"
        return label if self.on_qcfs else f"{label}, ReLU ANN (our extension)"

    def thresholds(self, ctx: CalibContext) -> dict:
        self.on_qcfs = is_qcfs_ann(ctx.neurons)
        return lambda_thresholds(ctx) if self.on_qcfs else super().thresholds(ctx)

    def presim_steps(self) -> int:
        return self.params.tau

    def presimulate(self, snn, x, chunk: int) -> None:
        run_steps(snn, x, self.params.tau, chunk)
        masks = {m: (m.potential() > self.params.eps).to(m.v.dtype) for _, m in snn.neuron_layers()}
        reset_net(snn)
        for m, mask in masks.items():
            m.mask = mask                                # (B, ...): cleared with the state after the batch
