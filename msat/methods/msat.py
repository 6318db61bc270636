"""MSAT (He et al., Neural Computing and Applications 2024): the multistage adaptive threshold
(SPEC section 2), its DTT-only and DET-only ablations, and spike confidence on the last layer."""
from __future__ import annotations

from .registry import register_method
from .base import Method


@register_method
class Msat(Method):
    """th(t) = theta_l * sigmoid(DTT + DET); neuron.* holds the hyper-parameters (VGG16 defaults)."""

    name = "msat"
    label = "MSAT"
    citation = "He et al., NCA 2024"
    ann = ("relu", "qcfs")      # the paper converts ReLU ANNs; a QCFS-trained ANN converts the same way
    dynamics = "msat"
    variants = ({}, {"ann": "qcfs"})

    def describe(self) -> str:
        n, sc = self.cfg.neuron, self.cfg.sc
        label = {(True, True): "MSAT", (True, False): "MSAT, DTT only", (False, True): "MSAT, DET only"}.get(
            (n.use_dtt, n.use_det), "MSAT (no DTT, no DET)")
        if sc.enabled:
            label += " + SC" + (" (filtered)" if sc.reset == "filtered" else "")
        return label


@register_method
class MsatDtt(Msat):
    """MSAT ablation: the dynamic tracking threshold only (paper Fig. 5)."""

    name = "msat_dtt"
    label = "MSAT, DTT only"
    preset = {"neuron": {"use_det": False}}
    variants = ({},)


@register_method
class MsatDet(Msat):
    """MSAT ablation: the dynamic evoked threshold only (paper Fig. 5)."""

    name = "msat_det"
    label = "MSAT, DET only"
    preset = {"neuron": {"use_dtt": False}}
    variants = ({},)


@register_method
class MsatSc(Msat):
    """MSAT + spike confidence on the last spiking layer for t < E; p_l = 1 - q_l(E) is derived on the
    calibration batch. A dropped spike's charge is lost (``emitted``, the authors' code)."""

    name = "msat_sc"
    label = "MSAT + SC"
    preset = {"sc": {"enabled": True}}
    variants = ({},)


@register_method
class MsatScFiltered(Msat):
    """MSAT + spike confidence where a dropped spike keeps its charge (``filtered``, paper Eq. 20)."""

    name = "msat_sc_filtered"
    label = "MSAT + SC (filtered)"
    preset = {"sc": {"enabled": True, "reset": "filtered"}}
    variants = ({},)
