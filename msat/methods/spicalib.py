"""SpiCalib (Li, He, Dong, Kong, Zeng 2022, "Spike calibration: fast and accurate conversion of spiking
neural network for object detection and segmentation", arXiv 2207.02702; code: BrainCog,
``braincog/base/conversion/spicalib.py`` and ``convertor.py``).

Integrate-and-fire neurons (soft reset, thresholds theta_l = the p-th percentile of the activations,
BrainCog's ``Convertor`` default p = 0.9995) whose output passes SpiCalib's filter
(``msat.neurons.signed_step``): a neuron silent for longer than its own mean inter-spike interval plus
the allowance A emits a negative spike (-theta_l) at every such step, taking back spikes that an early
transient of its input produced (spikes of inactivated neurons). The membrane potential is not touched.

Following the code rather than the paper (whose text we could not read): negative spikes are decided
by spike timing, not by the membrane potential, and A is in time steps. The rule (``method.debt``):
``braincog`` (the default) is BrainCog's ``SpiCalib.forward``: an unclamped running sum of the emitted
spikes, and the output is 0 wherever that sum is <= -1, which mutes a neuron whose first spike comes
later than A steps; ``net`` is this project's variant: a negative spike only cancels an earlier positive
one, so a neuron never goes below zero and a late-starting neuron is not muted.

The allowance: BrainCog's ``Convertor`` and its example scripts default to ``spicalib=0``, which turns the
filter off (``SpiCalib(0)`` returns its input); so ``method.allowance`` null means A = T // 2, this
project's choice (not a value from the paper or the code), and 0 means off. BrainCog's
``replace_for_spike`` does not pass the allowance down when it recurses into submodules, so there only the
ReLUs that are direct children of the model get the filter; we apply it to every spiking layer. Spike
statistics and energy count |s|: a negative spike is a synaptic operation like a positive one. How many
negative spikes a run emitted is not recorded (observers receive them as -1 in the spike counts; counting
them belongs to ``msat.measure``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from ..config import ConfigError, MethodConfig, param
from .registry import register_method
from .base import Method


@dataclass
class SpiCalibConfig(MethodConfig):
    name: str = param("spicalib", "the conversion method")
    allowance: Optional[int] = param(None, "A: steps of silence beyond a neuron's mean inter-spike interval before "
                                  "it emits negative spikes (null: T // 2, this project's choice; 0: off, "
                                  "BrainCog's default)")
    debt: str = param("braincog", "braincog: BrainCog's unclamped running sum of the emitted spikes (mutes late "
                   "starters); net (this project's variant): a negative spike only cancels an earlier positive one",
                   ("braincog", "net"))

    def check(self, where: str = "method") -> None:
        if self.allowance is not None and self.allowance < 0:
            raise ConfigError(f"{where}.allowance must be >= 0 (0: off), got {self.allowance}")

    def resolve(self, T: Optional[int]) -> "SpiCalibConfig":
        if self.allowance is not None:
            return self
        if T is None:
            raise ConfigError("method.allowance defaults to T // 2 (this project's choice): set method.allowance "
                              "or give T")
        return replace(self, allowance=T // 2)


@register_method
class SpiCalib(Method):
    """SpiCalib: IF neurons whose spikes are taken back by negative spikes after a long silence."""

    name = "spicalib"
    label = "SpiCalib"
    citation = "Li et al., arXiv 2207.02702 (2022); BrainCog"
    params = SpiCalibConfig
    dynamics = "signed"
    preset = {"calib": {"percentile": 0.9995}}

    def describe(self) -> str:
        rule = "BrainCog's rule" if self.params.debt == "braincog" else "net rule, our variant"
        return f"SpiCalib (A={self.params.allowance}, {rule})"

    def neuron_kwargs(self) -> dict:
        return {"allowance": float(self.params.allowance), "debt": self.params.debt}
