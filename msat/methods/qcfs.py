"""QCFS (Bu et al., ICLR 2022, "Optimal ANN-SNN conversion for high-accuracy and ultra-low-latency
spiking neural networks"; code putshua/ANN_SNN_QCFS).

The ANN is trained with the quantization-clip-floor-shift activation (``model.act=qcfs``,
``msat.models.activations.QCFS``: L levels, a learnable clipping level lambda_l per layer, max pools
replaced by average pools). Conversion: theta_l = lambda_l, V(-1) = theta_l / 2, IF neurons with
soft reset (fire when V >= theta), output s * theta (the official code's ``IF`` with T > 0:
``mem = 0.5 * thre``, ``spike = (mem - thre >= 0) * thre``, ``mem -= spike``).
"""
from __future__ import annotations

from ..utils import ConversionError
from .registry import register_method
from .base import CalibContext, Method


def is_qcfs_ann(neurons: list) -> bool:
    """Whether every spiking layer replaced a QCFS activation (a QCFS-trained ANN; else a ReLU ANN)."""
    return all(getattr(m.ann_act, "lam", None) is not None for m in neurons)


def lambda_thresholds(ctx: CalibContext) -> dict:
    """theta_l = the trained clipping level lambda_l of each QCFS activation (in the model's dtype)."""
    out = {}
    for m in ctx.neurons:
        lam = getattr(m.ann_act, "lam", None)
        if lam is None:
            raise ConversionError(f"layer {m.name!r} is a ReLU in a QCFS ANN: every activation must be QCFS "
                                  "(train with model.act=qcfs)")
        out[m] = lam.detach().clone()
    return out


@register_method
class Qcfs(Method):
    """QCFS conversion: theta_l = lambda_l, V(-1) = theta_l / 2 (needs a QCFS-trained ANN)."""

    name = "qcfs"
    label = "QCFS"
    citation = "Bu et al., ICLR 2022"
    ann = ("qcfs",)
    preset = {"neuron": {"v_init": 0.5}}

    def thresholds(self, ctx: CalibContext) -> dict:
        return lambda_thresholds(ctx)
