"""The spiking network container: the converted fx graph with its neurons and pools, the spike-confidence
state, and ANN-mode input recording (what calibration and ``ann_preactivations`` read).

Below the engine (``msat.simulation`` runs a ``SpikingNetwork``) and above the layers it holds
(``msat.neurons``, ``msat.pooling``); ``msat.conversion`` builds it.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from .config import ConfigError, ConversionConfig, parse_sc_p
from .neurons import SCLayer, SpikingNeuron, reset_net
from .pooling import SpikingPool
from .utils import ConversionError, SimulationError

Tensor = torch.Tensor

# reshaping methods the engine checks at run time (they must keep the folded batch dimension)
RESHAPE_METHODS = ("view", "reshape")


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


class SCState:
    """Spike-confidence settings of a network: which layers, their keep probabilities, E and the reset.

    Owned by the ``SpikingNetwork``; the engine hands each SC layer an ``SCLayer`` per simulation
    (``for_simulation``). ``disabled()`` switches SC off for a block (``derive_sc_p`` measures with it off).
    """

    def __init__(self, layers: list[str], E: int, filtered: bool, p: Optional[dict[str, float]] = None):
        self.layers, self.E, self.filtered = list(layers), int(E), bool(filtered)
        self.p: dict[str, float] = {}
        self.active = bool(self.layers)
        if p:
            self.set_p(p)

    def set_p(self, p: dict[str, float]) -> None:
        """Keep probability p_l of SC layers, name -> p in [0, 1] (any subset of the SC layers)."""
        unknown = [k for k in p if k not in self.layers]
        if unknown:
            raise ConversionError(f"{unknown} are not spike-confidence layers; SC layers: {self.layers} "
                                  "(enable with sc.enabled, choose with sc.layers)")
        try:
            checked = parse_sc_p(dict(p), where="SC keep probability")
        except ConfigError as e:
            raise ConversionError(str(e)) from e
        self.p.update(checked)

    def disabled(self) -> "_SCOff":
        return _SCOff(self)

    def for_simulation(self, generator: Optional[torch.Generator], device: torch.device) -> dict:
        """name -> SCLayer with its own generator, seeded from ``generator``: draws do not depend on chunking."""
        if not self.active:
            return {}
        missing = [n for n in self.layers if n not in self.p]
        if missing:
            raise SimulationError(f"spike confidence is enabled but p is not set for layers {missing}: set sc.p, "
                                  "or derive it (msat.measure.derive_sc_p) and call snn.set_sc_p")
        out = {}
        for n in self.layers:
            dev = generator.device if generator is not None else torch.device("cpu")
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=dev))
            g = torch.Generator(device=device)
            g.manual_seed(seed)
            out[n] = SCLayer(self.p[n], self.E, self.filtered, g)
        return out


class _SCOff:
    def __init__(self, state: SCState):
        self.state = state

    def __enter__(self) -> None:
        self.saved, self.state.active = self.state.active, False

    def __exit__(self, *exc: Any) -> None:
        self.state.active = self.saved


class SpikingNetwork(nn.Module):
    """A converted network: the fx graph with spiking neurons and pools, plus its metadata.

    ``forward``/``ann_forward`` run it as the ANN (neurons = their activation, pools = max pool);
    ``msat.simulate`` runs it as the SNN. ``method`` is the configured method; ``sc`` the
    spike-confidence state; ``cost`` what conversion spent (``msat.methods.base.Cost``); ``is_dynamic(node)``
    tells the engine which nodes run once per time step.
    """

    def __init__(self, gm: fx.GraphModule, neurons: list[SpikingNeuron], pools: list[SpikingPool],
                 cfg: ConversionConfig, dynamic: set[fx.Node], method: Any, ann: str = "relu"):
        super().__init__()
        self.graph_module = gm
        self.cfg = cfg
        self.method = method
        self.ann = ann
        self.cost = None
        self.engine_state: dict = {}      # the engine's own state of this network: plan, layout, CUDA graphs
        self._neurons = neurons
        self._pools = pools
        self._dynamic_names = {n.name for n in dynamic}
        names = [n.name for n in neurons]
        sc = cfg.sc
        layers = (names[-1:] if sc.layers == "last" else names) if sc.enabled else []
        self.sc = SCState(layers, sc.E, sc.reset == "filtered")
        if layers and sc.p is not None:
            self.sc.set_p(parse_sc_p(sc.p, layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.ann_forward(x)

    def ann_forward(self, x: Tensor) -> Tensor:
        """The converted graph as the ANN: equals the original model's output (to float rounding)."""
        return self.graph_module(x)

    def ann_preactivations(self, x: Tensor) -> dict[str, Tensor]:
        """The input of each activation call site (a_l), name -> (B, ...), for the ANN on ``x``."""
        out: dict[str, Tensor] = {}
        with record_inputs(self._neurons, lambda m, a: out.__setitem__(m.name, a.detach().clone())), torch.no_grad():
            self.graph_module(x)
        return out

    def neuron_layers(self) -> list[tuple[str, SpikingNeuron]]:
        """(name, neuron) for every spiking layer, in execution order."""
        return [(m.name, m) for m in self._neurons]

    def pool_layers(self) -> list[tuple[str, SpikingPool]]:
        return [(m.name, m) for m in self._pools]

    @property
    def scales(self) -> dict[str, Tensor]:
        """Calibrated theta per spiking layer (0-d, or (C, 1, ...) per channel)."""
        return {m.name: m.theta for m in self._neurons}

    def sc_layers(self) -> list[str]:
        """Names of the layers spike confidence acts on (empty when SC is off)."""
        return list(self.sc.layers)

    def set_sc_p(self, p: dict[str, float]) -> None:
        """Set the SC keep probability p_l of SC layers, name -> p in [0, 1]."""
        self.sc.set_p(p)

    def is_dynamic(self, node: fx.Node) -> bool:
        return node.name in self._dynamic_names

    def reset(self) -> None:
        reset_net(self)


__all__ = ["SpikingNetwork", "SCState", "record_inputs", "ann_pools", "RESHAPE_METHODS"]
