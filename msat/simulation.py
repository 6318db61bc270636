"""The simulation engine: ``simulate(snn, x, T, chunk=32, generator=None, observers=())``.

One engine for every converted network. Time is processed in chunks of ``Tc <= chunk`` steps:

- the static part (nodes that do not depend on any spiking layer: the first conv under direct
  coding, an embedding + LSTM encoder, ...) runs ONCE per input batch;
- stateless layers after it see the time-folded batch (Tc*B, ...);
- neurons and pools run their recurrence over the chunk (state carried across chunks);
- the output layer is a non-firing integrator: ``out[t]`` is its value at step t (the
  prediction after t steps is ``out[:t+1].sum(0).argmax(-1)``).

Memory does not grow with T beyond one chunk (plus the (T, B, classes) output). Observers see
the spikes of each layer and the output, chunk by chunk (``Observer``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx

from .conversion import RESHAPE_METHODS, SpikingNetwork
from .neurons import SpikingNeuron, reset_net
from .pooling import SpikingPool
from .utils import UserError

Tensor = torch.Tensor


class SimulationError(UserError, ValueError):
    """Bad simulation arguments, or an op that mixes time steps of the folded batch."""


class Observer:
    """Base class of simulation observers (no-op methods); see ``msat.measure``.

    ``spikes`` and ``out_chunk`` are valid only during the call (copy what you keep).
    """

    def on_batch_start(self, snn: SpikingNetwork, x: Tensor, T: int) -> None:
        """Before the first step of a batch."""

    def on_spikes(self, name: str, spikes: Tensor, t0: int) -> None:
        """spikes: (Tc, B, ...) spike counts s_out of layer ``name`` for steps t0..t0+Tc-1."""

    def on_output(self, out_chunk: Tensor, t0: int) -> None:
        """out_chunk: (Tc, B, classes) output-layer values for steps t0..t0+Tc-1."""

    def on_batch_end(self) -> None:
        """After the last step of a batch."""


@dataclass
class _Step:
    node: fx.Node
    kind: str                     # placeholder|get_attr|neuron|pool|module|function|method|output
    fn: Any                       # module, function or method name
    free: tuple                   # nodes whose values are not needed after this step


class _Plan:
    """The graph split into a static and a dynamic list of steps, built once per network."""

    def __init__(self, snn: SpikingNetwork):
        gm = snn.graph_module
        modules = dict(gm.named_modules())
        nodes = list(gm.graph.nodes)
        dynamic = [n for n in nodes if snn.is_dynamic(n) or n.op == "output"]
        dyn_set = set(dynamic)
        static = [n for n in nodes if n not in dyn_set]
        # batched: derived from the input; such static tensors are folded when a dynamic op needs them
        self.batched: set[fx.Node] = set()
        for n in nodes:
            if n.op == "placeholder" and not n.args:
                self.batched.add(n)
            elif any(a in self.batched for a in n.all_input_nodes):
                self.batched.add(n)
        # static values kept across chunks: those some dynamic node reads
        self.keep = {a for n in dynamic for a in n.all_input_nodes if a not in dyn_set}
        self.static = self._steps(static, modules)
        self.dynamic = self._steps(dynamic, modules)

    def _steps(self, order: list, modules: dict) -> list[_Step]:
        pos = {n: i for i, n in enumerate(order)}
        return [self._step(n, modules, pos, self.keep) for n in order]

    @staticmethod
    def _step(node: fx.Node, modules: dict, pos: dict, keep: set) -> _Step:
        if node.op == "call_module":
            m = modules[node.target]
            kind = "neuron" if isinstance(m, SpikingNeuron) else "pool" if isinstance(m, SpikingPool) else "module"
            fn = m
        elif node.op == "call_function":
            kind, fn = "function", node.target
        elif node.op == "call_method":
            kind, fn = "method", node.target
        elif node.op == "get_attr":
            kind, fn = "get_attr", node.target
        else:
            kind, fn = node.op, None
        # free an input after its last reader in this list (values used later elsewhere are kept)
        me = pos[node]
        free = tuple(a for a in node.all_input_nodes
                     if a in pos and a not in keep and max(pos.get(u, -1) for u in a.users) <= me)
        return _Step(node, kind, fn, free)


def _signature(snn: SpikingNetwork) -> tuple:
    """What the plan depends on: the graph's nodes and the modules they call."""
    gm = snn.graph_module
    return tuple((n, gm.get_submodule(n.target) if n.op == "call_module" else n.target) for n in gm.graph.nodes)


def _plan(snn: SpikingNetwork) -> _Plan:
    """The network's cached plan, rebuilt when its graph (or a module it calls) changed."""
    sig = _signature(snn)
    cached = getattr(snn, "_sim_plan", None)
    if cached is None or cached[0] != sig:
        cached = (sig, _Plan(snn))
        object.__setattr__(snn, "_sim_plan", cached)
    return cached[1]


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _call(step: _Step, args: tuple, kwargs: dict, gm: fx.GraphModule) -> Any:
    if step.kind in ("module", "function"):
        return step.fn(*args, **kwargs)
    if step.kind == "method":
        return getattr(args[0], step.fn)(*args[1:], **kwargs)
    if step.kind == "get_attr":
        return _fetch_attr(gm, step.fn)
    raise RuntimeError(f"unexpected node kind {step.kind}")  # pragma: no cover


def _run_static(snn: SpikingNetwork, plan: _Plan, x: Tensor) -> dict:
    """Compute the static part once; returns the values the dynamic part reads."""
    env: dict = {}
    gm = snn.graph_module
    for step in plan.static:
        node = step.node
        if step.kind == "placeholder":
            env[node] = x if not node.args else node.args[0]
        else:
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            env[node] = _call(step, args, kwargs, gm)
        for a in step.free:
            env.pop(a, None)
    return {n: env[n] for n in plan.keep}


def _check_steps(T: Any, chunk: Any) -> None:
    for name, v in (("T", T), ("chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise SimulationError(f"{name} must be a positive integer, got {v!r}")


def simulate(snn: SpikingNetwork, x: Tensor, T: int, chunk: int = 32,
             generator: Optional[torch.Generator] = None, observers: Sequence[Observer] = (),
             return_output: bool = True) -> Optional[Tensor]:
    """Run ``snn`` for ``T`` steps on the batch ``x`` (direct coding: ``x`` at every step).

    Returns (T, B, ...): the output layer's value at each step (not cumulative). All state is
    reset first; a method with a pre-simulation (SRP) runs it before the T steps;
    ``generator`` seeds the spike-confidence draws (reproducible runs). ``return_output=False``
    streams the output to the observers only (memory independent of T) and returns None.
    """
    _check_steps(T, chunk)
    if not isinstance(snn, SpikingNetwork):
        raise SimulationError(f"simulate expects a SpikingNetwork from msat.convert, got {type(snn).__name__}")
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise SimulationError("x must be a batched tensor (B, ...)")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise SimulationError("x holds NaN or inf values: the simulation would predict from NaN")
    if snn.sc.active and not 1 <= snn.sc.E <= T:
        raise SimulationError(f"spike confidence acts for t < sc.E={snn.sc.E}, beyond T={T}: simulate at least "
                              f"sc.E steps or convert with a smaller sc.E")
    reset_net(snn)
    try:
        with torch.no_grad():
            if snn.method is not None:
                snn.method.presimulate(snn, x, chunk)
            return run_steps(snn, x, T, chunk, generator, observers, return_output)
    finally:
        reset_net(snn)


def run_steps(snn: SpikingNetwork, x: Tensor, T: int, chunk: int = 32, generator: Optional[torch.Generator] = None,
              observers: Sequence[Observer] = (), return_output: bool = True) -> Optional[Tensor]:
    """The engine's time loop from the neurons' current state (``simulate`` resets it first); used
    by pre-simulations. Returns (T, B, ...) outputs (None with ``return_output=False``)."""
    plan = _plan(snn)
    gm = snn.graph_module
    sc = snn.sc.for_simulation(generator, x.device)
    B = x.shape[0]
    keep_spikes = len(observers) > 0
    out: Optional[Tensor] = None
    with torch.no_grad():
        for o in observers:
            o.on_batch_start(snn, x, T)
        static = _run_static(snn, plan, x)
        for t0 in range(0, T, chunk):
            Tc = min(chunk, T - t0)
            y = _run_chunk(snn, plan, gm, static, Tc, B, t0, keep_spikes, observers, sc)
            y = y.view(Tc, B, *y.shape[1:])                                # (Tc, B, classes)
            if return_output:
                if out is None:
                    out = y.new_empty((T, *y.shape[1:]))                   # (T, B, classes)
                out[t0:t0 + Tc] = y
                y = out[t0:t0 + Tc]
            for o in observers:
                o.on_output(y, t0)
        for o in observers:
            o.on_batch_end()
    return out


def _aliased(z: Tensor, src: fx.Node, env: dict, static: dict) -> bool:
    """Whether another live value shares memory with ``z`` (then ``z`` must not be overwritten)."""
    ptr = z.untyped_storage().data_ptr()
    for values in (env, static):
        for n, v in values.items():
            if n is not src and isinstance(v, Tensor) and v.untyped_storage().data_ptr() == ptr:
                return True
    return False


def _run_chunk(snn: SpikingNetwork, plan: _Plan, gm: fx.GraphModule, static: dict, Tc: int, B: int, t0: int,
               keep_spikes: bool, observers: Sequence[Observer], sc: dict) -> Tensor:
    """One chunk of Tc steps through the dynamic part; returns the folded output (Tc*B, ...)."""
    env: dict = {}
    folded: dict = {}

    def value(n: fx.Node) -> Any:
        if n in env:
            return env[n]
        v = static[n]
        if n in plan.batched and isinstance(v, Tensor):
            if n not in folded:   # a static batched tensor read by a dynamic op: (B, ...) -> (Tc*B, ...)
                folded[n] = v.unsqueeze(0).expand(Tc, *v.shape).reshape(Tc * v.shape[0], *v.shape[1:])
            return folded[n]
        return v

    for step in plan.dynamic:
        node = step.node
        if step.kind == "output":
            return value(node.args[0])
        if step.kind == "neuron":
            src = node.args[0]
            is_static = src not in env
            z = static[src] if is_static else env[src]
            consume = src in step.free and not is_static and not _aliased(z, src, env, static)
            res, spikes = step.fn.run_chunk(z, Tc, B, static=is_static, keep_spikes=keep_spikes,
                                            consume=consume, sc=sc.get(step.fn.name))
            for o in observers:
                o.on_spikes(step.fn.name, spikes, t0)
        elif step.kind == "pool":
            src = node.args[0]
            x = value(src)
            consume = src in step.free and src in env and not _aliased(x, src, env, static)
            res = step.fn.run_chunk(x, Tc, B, consume=consume)
        else:
            args = fx.node.map_arg(node.args, value)
            kwargs = fx.node.map_arg(node.kwargs, value)
            res = _call(step, args, kwargs, gm)
            if step.kind == "method" and step.fn in RESHAPE_METHODS and res.shape[:1] != args[0].shape[:1]:
                raise SimulationError(f"node {node.name!r}: .{step.fn}() changes the batch dimension "
                                      f"({tuple(args[0].shape)} -> {tuple(res.shape)}); use x.flatten(1) or "
                                      "x.view(x.size(0), ...) so time can be folded into the batch")
        env[node] = res
        for a in step.free:
            env.pop(a, None)
    raise RuntimeError("graph without output")  # pragma: no cover


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Opt-in, process-wide (Linux/glibc): keep freed large CPU buffers in the heap.

    glibc returns every freed buffer above its mmap threshold (at most 32 MB by default) to the
    OS, so each chunk's large activations are page-faulted in again; on CPU that costs ~10-20 %
    of a chunked simulation. This raises the threshold (and the trim threshold) to
    ``threshold_bytes``. Returns whether glibc accepted it. Memory freed inside the heap is reused
    by later allocations but not given back to the OS while the process runs.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, int(threshold_bytes))) and \
            bool(libc.mallopt(m_trim_threshold, int(2 * threshold_bytes)))
    except (OSError, AttributeError):
        return False


__all__ = ["Observer", "SimulationError", "simulate", "run_steps", "tune_cpu_allocator"]
