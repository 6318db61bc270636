"""The classic rate-coding conversions: max norm, robust norm, a scaled threshold, optimal initial
potential and burst spikes. All run integrate-and-fire neurons with th = k * theta_l."""
from __future__ import annotations

from .registry import register_method
from .base import Method


@register_method
class IfMax(Method):
    """Max norm (Diehl et al. 2015; Rueckauer et al. 2017): theta_l = the layer's maximum activation on
    the calibration batch, IF neurons with soft reset (reset by subtraction)."""

    name = "if_max"
    label = "IF, max norm"
    citation = "Diehl et al., IJCNN 2015; Rueckauer et al., Front. Neurosci. 2017"


@register_method
class RobustNorm(Method):
    """Robust normalization (Rueckauer et al. 2017): theta_l = the 99.9th percentile of the layer's
    activations (``calib.percentile=0.9999`` gives their 99.99 variant)."""

    name = "robust_norm"
    label = "IF, robust norm"
    citation = "Rueckauer et al., Front. Neurosci. 2017"
    preset = {"calib": {"percentile": 0.999}}
    variants = ({}, {"calib.percentile": 0.9999})

    def describe(self) -> str:
        return f"{self.label} (p={100 * self.cfg.calib.percentile:g})"


@register_method
class VthScaled(Method):
    """A fixed threshold k * theta_l below the layer scale: the MSAT paper's "0.2 Vth" baseline."""

    name = "vth_scaled"
    label = "IF, 0.2 Vth"
    citation = "He et al., NCA 2024 (Fig. 5)"
    preset = {"neuron": {"k": 0.2}}

    def describe(self) -> str:
        return f"IF, {self.cfg.neuron.k:g} Vth"


@register_method
class Opi(Method):
    """Optimal initial potential (Bu et al., AAAI 2022): V(-1) = theta_l / 2, which centres the
    quantization error of the rate code; max-norm thresholds."""

    name = "opi"
    label = "IF, OPI (v0 = theta/2)"
    citation = "Bu et al., AAAI 2022"
    preset = {"neuron": {"v_init": 0.5}}


@register_method
class Burst(Method):
    """Burst spikes (Li & Zeng, IJCAI 2022): up to gamma = 5 spikes per step, with lateral-inhibition
    pooling; the MSAT paper's Table 8 baseline."""

    name = "burst"
    label = "burst spikes (gamma 5)"
    citation = "Li & Zeng, IJCAI 2022"
    preset = {"neuron": {"gamma": 5}, "pool": {"name": "lipool"}}
    # with max-norm thresholds a neuron's input rarely exceeds theta, so burst spikes act like IF: the
    # second row is BrainCog's burst example (p = 0.99), where they do fire in bursts
    variants = ({}, {"calib.percentile": 0.99})

    def describe(self) -> str:
        p = self.cfg.calib.percentile
        return f"burst spikes (gamma {self.cfg.neuron.gamma}" + (f", p={100 * p:g})" if p < 1 else ")")
