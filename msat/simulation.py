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

import ctypes
import ctypes.util
import dataclasses
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from .config import PRECISIONS, EngineOptions

from .network import RESHAPE_METHODS, SpikingNetwork
from .neurons import SpikingNeuron, reset_net
from .pooling import SpikingPool
from .utils import SimulationError, available_memory

Tensor = torch.Tensor


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
        self.step_bytes: dict = {}               # input key -> largest activation per folded step (bytes)
        self.last_max_bytes = 0

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
    cached = snn.engine_state.get("plan")
    if cached is None or cached[0] != sig:
        cached = (sig, _Plan(snn))
        snn.engine_state["plan"] = cached
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
            raise SimulationError(f"{name} must be a positive integer, got {v!r} ({type(v).__name__})")


OBSERVER_HOOKS = ("on_batch_start", "on_spikes", "on_output", "on_batch_end")


def _network_input(snn: SpikingNetwork) -> tuple[Optional[int], Optional[torch.dtype], tuple, Optional[torch.device]]:
    """(rank, dtype, per-sample shape, device) of the input ``snn`` runs on: the rank and kind of its calibration
    batch (recorded on the graph's input at conversion), the dtype its parameters compute in, their device."""
    gm = snn.graph_module
    meta = next((n.meta.get("tensor_meta") for n in gm.graph.nodes if n.op == "placeholder" and not n.args), None)
    rank, dtype, sample = (len(meta.shape), meta.dtype, tuple(meta.shape[1:])) if meta is not None else (None, None, ())
    floating = next((t.dtype for t in gm.parameters() if t.is_floating_point()), None)
    if floating is not None and (dtype is None or dtype.is_floating_point):
        dtype = floating                       # a network cast after conversion (snn.double()) computes in that
    first = next(gm.parameters(), None)
    first = first if first is not None else next(gm.buffers(), None)
    return rank, dtype, sample, (first.device if first is not None else None)


def check_inputs(snn: Any, x: Any, T: Any, chunk: Any, generator: Any, observers: Any) -> None:
    """Every argument of :func:`simulate` a caller can get wrong, checked before any step: one
    :class:`SimulationError` sentence each (a :class:`msat.utils.UserError`)."""
    _check_steps(T, chunk)
    if not isinstance(snn, SpikingNetwork):
        raise SimulationError(f"simulate expects a SpikingNetwork from msat.convert, got {type(snn).__name__}")
    if not isinstance(x, Tensor):
        raise SimulationError(f"x must be a torch.Tensor batch (B, ...), got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise SimulationError(f"x must be a non-empty batch (B, ...), got a tensor of shape {tuple(x.shape)}")
    rank, dtype, sample, device = _network_input(snn)
    if rank is not None and x.dim() != rank:
        hint = "; a single sample needs its batch dimension (x.unsqueeze(0))" if x.dim() == rank - 1 else ""
        raise SimulationError(f"x has shape {tuple(x.shape)} ({x.dim()} dims), but this network takes {rank}-dim "
                              f"batches (B, {', '.join(map(str, sample))}) like its calibration data{hint}")
    if dtype is not None and x.dtype != dtype:
        integer = not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
        if not (integer and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool):
            kind = f"integer inputs (token ids, {dtype})" if integer else f"inputs of its parameters' dtype ({dtype})"
            raise SimulationError(f"x is {x.dtype}, but this network takes {kind}: convert it with x.to({dtype})")
    if device is not None and x.device != device:
        raise SimulationError(f"x is on {x.device}, but the network is on {device}: move one to the other's device "
                              f"(x.to({str(device)!r}) or snn.to({str(x.device)!r}))")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise SimulationError("x holds NaN or inf values: the simulation would predict from NaN")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise SimulationError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or "
                              f"None, got {type(generator).__name__}")
    if isinstance(observers, Observer) or not isinstance(observers, (list, tuple)):
        raise SimulationError(f"observers must be a list or tuple of msat.Observer, got {type(observers).__name__}")
    for o in observers:
        missing = [h for h in OBSERVER_HOOKS if not callable(getattr(o, h, None))]
        if missing:
            raise SimulationError(f"observer {type(o).__name__} lacks {', '.join(missing)}: subclass msat.Observer")
    if snn.sc.active:
        check_sc_steps(snn.sc.E, T)


def check_output_memory(snn: SpikingNetwork, x: Tensor, T: int) -> None:
    """The (T, B, ...) output ``simulate`` returns must fit in the memory left on ``x``'s device: else one
    :class:`SimulationError` before any step (the per-sample output size is the one recorded at conversion)."""
    out = next((n.args[0] for n in snn.graph_module.graph.nodes if n.op == "output"), None)
    meta = out.meta.get("tensor_meta") if isinstance(out, fx.Node) else None
    if meta is None or not hasattr(meta, "shape") or len(meta.shape) == 0:
        return
    per_sample = math.prod(meta.shape[1:]) * max(torch.empty((), dtype=meta.dtype).element_size(), 4)  # fp32 or wider
    need, avail = T * x.shape[0] * per_sample, available_memory(x.device)
    if avail is not None and need > avail:
        raise SimulationError(f"T={T} needs {need / 2**30:.1f} GiB for the (T, B, {', '.join(map(str, meta.shape[1:]))}) "
                              f"output, more than the {avail / 2**30:.1f} GiB free on {x.device}: lower T or the batch, "
                              "or pass return_output=False with observers (their memory does not grow with T)")


def check_sc_steps(E: int, T: int) -> None:
    """Spike confidence acts for t < ``E``: it needs ``1 <= E <= T`` (the one check of it: ``simulate`` and
    ``msat.evaluate.check_config`` before any compute)."""
    if not 1 <= E <= T:
        raise SimulationError(f"spike confidence acts for t < sc.E={E}, beyond T={T}: set 1 <= sc.E <= T "
                              "(simulate at least sc.E steps), or convert with a smaller sc.E or a method without SC")


def engine_options(options: Optional[EngineOptions] = None, **fields: Any) -> EngineOptions:
    """``options`` (default: all unset) with ``fields`` (named as :class:`EngineOptions`' fields) replacing
    single options, checked: one :class:`SimulationError` sentence for a bad value."""
    if options is None:
        options = EngineOptions()
    if not isinstance(options, EngineOptions):
        raise SimulationError(f"options must be a msat.config.EngineOptions (or a SimConfig), got "
                              f"{type(options).__name__}")
    valid = [f.name for f in dataclasses.fields(EngineOptions)]
    for k in fields:
        if k not in valid:
            raise TypeError(f"simulate() got an unexpected keyword argument {k!r}")
    opts = dataclasses.replace(options.engine(), **fields)
    if opts.precision not in PRECISIONS:
        raise SimulationError(f"precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    b = opts.chunk_bytes
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 0):
        raise SimulationError(f"chunk_bytes must be an integer >= 0 (0: no cap), got {b!r}")
    return opts


class _Precision:
    """TF32 switches for the simulation (restored after it) and the autocast of stateless layers."""

    def __init__(self, device: torch.device, precision: str):
        self.device, self.precision = device, precision
        self.saved: Optional[tuple] = None

    def __enter__(self) -> "_Precision":
        if self.device.type == "cuda":
            self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            tf32 = self.precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved

    def autocast(self):
        """The context of a stateless layer: bf16 autocast, or nothing."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()


def prepare_network(snn: SpikingNetwork, x: Tensor, opts: EngineOptions) -> Tensor:
    """Lay out the network and the input for ``opts`` (channels-last: once, in place); returns the input."""
    if opts.channels_last and x.dim() == 4:
        if not snn.engine_state.get("channels_last", False):
            snn.graph_module.to(memory_format=torch.channels_last)
            snn.engine_state["channels_last"] = True
        return x.contiguous(memory_format=torch.channels_last)
    return x


def simulate(snn: SpikingNetwork, x: Tensor, T: int, chunk: int = 32,
             generator: Optional[torch.Generator] = None, observers: Sequence[Observer] = (),
             return_output: bool = True, *, options: Optional[EngineOptions] = None,
             **engine: Any) -> Optional[Tensor]:
    """Run ``snn`` for ``T`` steps on the batch ``x`` (direct coding: ``x`` at every step).

    Returns (T, B, ...): the output layer's value at each step (not cumulative; fp32 or wider). All
    state is reset first; a method with a pre-simulation (SRP) runs it before the T steps;
    ``generator`` seeds the spike-confidence draws (reproducible runs). ``return_output=False``
    streams the output to the observers only (memory independent of T) and returns None.
    ``options``: how the engine runs (:class:`msat.config.EngineOptions`, e.g. a run's ``SimConfig``);
    keywords named as its fields (``fused``, ``precision``, ``cuda_graphs``, ``channels_last``,
    ``chunk_bytes``) replace single options. Unset options pick the fast path of the device.
    """
    check_inputs(snn, x, T, chunk, generator, observers)
    if return_output:
        check_output_memory(snn, x, T)
    opts = engine_options(options, **engine).resolve(x.device)
    x = prepare_network(snn, x, opts)
    reset_net(snn)
    try:
        with torch.no_grad():
            if snn.method is not None:
                snn.method.presimulate(snn, x, chunk)
            return run_steps(snn, x, T, chunk, generator, observers, return_output, opts)
    finally:
        reset_net(snn)


def run_steps(snn: SpikingNetwork, x: Tensor, T: int, chunk: int = 32, generator: Optional[torch.Generator] = None,
              observers: Sequence[Observer] = (), return_output: bool = True,
              opts: Optional[EngineOptions] = None) -> Optional[Tensor]:
    """The engine's time loop from the neurons' current state (``simulate`` resets it first); used
    by pre-simulations. Returns (T, B, ...) outputs (None with ``return_output=False``)."""
    opts = (opts or EngineOptions()).resolve(x.device)
    plan = _plan(snn)
    sc = snn.sc.for_simulation(generator, x.device)
    B = x.shape[0]
    out: Optional[Tensor] = None
    prec = _Precision(x.device, opts.precision)
    graphs = _Graphs.get(snn, plan, opts, x, chunk, len(observers) > 0) if opts.cuda_graphs else None
    with torch.no_grad(), prec:
        for o in observers:
            o.on_batch_start(snn, x, T)
        with prec.autocast():
            static = _run_static(snn, plan, x)
        key = (tuple(x.shape), x.dtype, opts.precision)
        t0 = 0
        while t0 < T:
            Tc = _chunk_steps(plan, key, opts, min(chunk, T - t0))
            y = _one_chunk(snn, plan, static, Tc, B, t0, observers, sc, opts, prec, graphs)
            if opts.chunk_bytes and key not in plan.step_bytes:
                plan.step_bytes[key] = max(plan.last_max_bytes, y.numel() * y.element_size()) // Tc
            out = _emit_output(y.view(Tc, B, *y.shape[1:]), t0, T, out, observers, return_output)
            t0 += Tc
        for o in observers:
            o.on_batch_end()
    return out


def _chunk_steps(plan: _Plan, key: tuple, opts: EngineOptions, Tc: int) -> int:
    """The steps of the next chunk: ``Tc``, capped so no folded activation exceeds ``opts.chunk_bytes`` (the
    first chunk of an input shape runs one step, which measures the bytes per step)."""
    if opts.chunk_bytes:
        per_step = plan.step_bytes.get(key)
        Tc = 1 if per_step is None else min(Tc, max(1, opts.chunk_bytes // max(per_step, 1)))
    return Tc


def _one_chunk(snn: SpikingNetwork, plan: _Plan, static: dict, Tc: int, B: int, t0: int,
               observers: Sequence[Observer], sc: dict, opts: EngineOptions, prec: _Precision,
               graphs: Optional["_Graphs"]) -> Tensor:
    """Steps ``t0 .. t0+Tc-1``, replayed as a CUDA graph where one is ready or run eagerly; each spiking layer's
    spikes go to the observers. Returns the folded output (Tc*B, ...)."""
    if graphs is not None and graphs.ready(snn, t0, Tc):
        y, recorded = graphs.replay(snn, static, t0)
        for name, s in recorded:
            for o in observers:
                o.on_spikes(name, s, t0)
        return y
    report = (lambda name, s: [o.on_spikes(name, s, t0) for o in observers]) if len(observers) > 0 else None
    y = _run_chunk(snn, plan, snn.graph_module, static, Tc, B, t0, report, sc, opts, prec)
    if graphs is not None:
        graphs.after_eager(snn, t0, Tc)
    return y


def _emit_output(y: Tensor, t0: int, T: int, out: Optional[Tensor], observers: Sequence[Observer],
                 return_output: bool) -> Optional[Tensor]:
    """A chunk's output ``y`` (Tc, B, classes), as fp32 or wider, into ``out`` (allocated (T, B, classes) on the
    first chunk; with ``return_output``) and to the observers. Returns ``out``."""
    if not y.is_floating_point() or y.dtype in (torch.bfloat16, torch.float16):
        y = y.float()
    if return_output:
        if out is None:
            out = y.new_empty((T, *y.shape[1:]))                   # (T, B, classes)
        out[t0:t0 + y.shape[0]] = y
        y = out[t0:t0 + y.shape[0]]
    for o in observers:
        o.on_output(y, t0)
    return out


def _aliased(z: Tensor, src: fx.Node, env: dict, static: dict) -> bool:
    """Whether another live value shares memory with ``z`` (then ``z`` must not be overwritten)."""
    ptr = z.untyped_storage().data_ptr()
    for values in (env, static):
        for n, v in values.items():
            if n is not src and isinstance(v, Tensor) and v.untyped_storage().data_ptr() == ptr:
                return True
    return False


class _ChunkValues:
    """The values one chunk's dynamic steps read: those computed in the chunk (``env``) and the static ones, a
    static batched tensor folded (B, ...) -> (Tc*B, ...) on its first use."""

    def __init__(self, plan: _Plan, static: dict, Tc: int):
        self.plan, self.static, self.Tc = plan, static, Tc
        self.env: dict = {}
        self.folded: dict = {}

    def __call__(self, n: fx.Node) -> Any:
        if n in self.env:
            return self.env[n]
        v = self.static[n]
        if n in self.plan.batched and isinstance(v, Tensor):
            if n not in self.folded:
                self.folded[n] = v.unsqueeze(0).expand(self.Tc, *v.shape).reshape(self.Tc * v.shape[0], *v.shape[1:])
            return self.folded[n]
        return v


def _run_chunk(snn: SpikingNetwork, plan: _Plan, gm: fx.GraphModule, static: dict, Tc: int, B: int, t0: int,
               on_spikes: Optional[Callable[[str, Tensor], Any]], sc: dict, opts: EngineOptions, prec: _Precision,
               inv_t: Optional[Tensor] = None) -> Tensor:
    """One chunk of Tc steps through the dynamic part; returns the folded output (Tc*B, ...).
    ``on_spikes(layer name, spikes (Tc, B, ...))`` is called after each spiking layer (None: spikes
    are not kept, and a layer may write its output over them)."""
    values = _ChunkValues(plan, static, Tc)
    env = values.env
    biggest = 0
    for step in plan.dynamic:
        node = step.node
        if step.kind == "output":
            plan.last_max_bytes = biggest
            return values(node.args[0])
        if step.kind == "neuron":
            res = _neuron_chunk(step, values, Tc, B, on_spikes, sc, opts, inv_t)
        elif step.kind == "pool":
            src = node.args[0]
            x = values(src)
            consume = src in step.free and src in env and not _aliased(x, src, env, static)
            res = step.fn.run_chunk(x, Tc, B, consume=consume)
        else:
            res = _op_chunk(step, values, gm, prec)
        if isinstance(res, Tensor):
            biggest = max(biggest, res.numel() * res.element_size())
        env[node] = res
        for a in step.free:
            env.pop(a, None)
    raise RuntimeError("graph without output")  # pragma: no cover


def _neuron_chunk(step: _Step, values: _ChunkValues, Tc: int, B: int,
                  on_spikes: Optional[Callable[[str, Tensor], Any]], sc: dict, opts: EngineOptions,
                  inv_t: Optional[Tensor]) -> Tensor:
    """A spiking layer over the chunk: its input unfolded when static (computed once per batch), consumed in
    place when nothing else reads it; its spikes to ``on_spikes``. Returns its output (Tc*B, ...)."""
    src, env, static = step.node.args[0], values.env, values.static
    is_static = src not in env
    z = static[src] if is_static else env[src]
    consume = src in step.free and not is_static and not _aliased(z, src, env, static)
    res, spikes = step.fn.run_chunk(z, Tc, B, static=is_static, keep_spikes=on_spikes is not None,
                                    consume=consume, sc=sc.get(step.fn.name), fused=opts.fused, inv_t=inv_t)
    if on_spikes is not None:
        on_spikes(step.fn.name, spikes)
    return res


def _op_chunk(step: _Step, values: _ChunkValues, gm: fx.GraphModule, prec: _Precision) -> Any:
    """A stateless node over the folded chunk (under the precision's autocast); an op that changes the batch
    dimension (mixing time steps) is a :class:`SimulationError`."""
    node = step.node
    args = fx.node.map_arg(node.args, values)
    kwargs = fx.node.map_arg(node.kwargs, values)
    with prec.autocast():
        res = _call(step, args, kwargs, gm)
    if step.kind == "method" and step.fn in RESHAPE_METHODS and res.shape[:1] != args[0].shape[:1]:
        raise SimulationError(f"node {node.name!r}: .{step.fn}() changes the batch dimension "
                              f"({tuple(args[0].shape)} -> {tuple(res.shape)}); use x.flatten(1) or "
                              "x.view(x.size(0), ...) so time can be folded into the batch")
    return res


class _Graphs:
    """CUDA graphs over a chunk: every full chunk after the first replays one captured graph.

    The first chunk of a batch (t = 0: MSAT's first threshold, state initialization, SC draws) runs
    eagerly, and so does any chunk where spike confidence acts (t < E) or of another length. The second
    full chunk of the first batch is captured; from then on the graph is replayed with the batch's static
    values copied into its input buffers and 1/t of the chunk's steps into its clock. State lives in the
    layers' reused buffers (fixed addresses). Networks with SpiCalib's filter or SRP masks (per-batch
    Python state) run eagerly. One graph per (network, batch shape, chunk, observers or not).
    """

    def __init__(self, snn: SpikingNetwork, plan: _Plan, opts: EngineOptions, x: Tensor, chunk: int,
                 keep_spikes: bool):
        self.plan, self.opts, self.chunk, self.keep_spikes = plan, opts, chunk, keep_spikes
        self.B = x.shape[0]
        self.graph: Optional[Any] = None
        self.failed = False
        self.warm = False
        self.static_in: dict = {}
        self.inv_t = torch.zeros(chunk, dtype=torch.float32, device=x.device)
        self.y: Optional[Tensor] = None
        self.spikes: list = []

    @staticmethod
    def get(snn: SpikingNetwork, plan: _Plan, opts: EngineOptions, x: Tensor, chunk: int,
            keep_spikes: bool) -> Optional["_Graphs"]:
        if x.device.type != "cuda" or not opts.fused:
            return None
        neurons = [m for _, m in snn.neuron_layers()]
        if any(m.dynamics == "signed" or m.mask is not None for m in neurons):
            return None                          # per-step Python state: SpiCalib's filter, SRP's masks
        cache = snn.engine_state.setdefault("cuda_graphs", {})
        key = (id(plan), tuple(x.shape), x.dtype, chunk, keep_spikes, dataclasses.astuple(opts))
        if key not in cache:
            cache[key] = _Graphs(snn, plan, opts, x, chunk, keep_spikes)
        g = cache[key]
        return None if g.failed else g

    def _eligible(self, snn: SpikingNetwork, t0: int, Tc: int) -> bool:
        sc_on = snn.sc.active and t0 < snn.sc.E
        return t0 > 0 and Tc == self.chunk and not sc_on

    def ready(self, snn: SpikingNetwork, t0: int, Tc: int) -> bool:
        """Whether this chunk is replayed (capturing the graph first when the time has come)."""
        if not self._eligible(snn, t0, Tc):
            return False
        if self.graph is None and self.warm:
            return True                          # replay() captures first
        return self.graph is not None

    def after_eager(self, snn: SpikingNetwork, t0: int, Tc: int) -> None:
        """An eligible chunk ran eagerly: every compiled kernel it needs exists; the next one is captured."""
        if self._eligible(snn, t0, Tc):
            self.warm = True

    def _set_clock(self, snn: SpikingNetwork) -> None:
        t = next(m for _, m in snn.neuron_layers()).t
        self.inv_t.copy_(1.0 / torch.arange(t, t + self.chunk, dtype=torch.float32))

    def replay(self, snn: SpikingNetwork, static: dict, t0: int) -> tuple[Tensor, list]:
        neurons = [m for _, m in snn.neuron_layers()]
        self._set_clock(snn)
        if self.graph is None:
            self._capture(snn, static, t0)
            if self.graph is None:                # capture failed: this chunk already ran eagerly
                return self.y, self.spikes
        else:
            for n, v in static.items():
                dst = self.static_in.get(n)
                if isinstance(v, Tensor) and dst is not None:
                    dst.copy_(v)
            self.graph.replay()
            for m in neurons:
                m.t += self.chunk
        return self.y, self.spikes

    def _capture(self, snn: SpikingNetwork, static: dict, t0: int) -> None:
        neurons = [m for _, m in snn.neuron_layers()]
        t_before = [m.t for m in neurons]
        self.static_in = {n: v.clone() if isinstance(v, Tensor) else v for n, v in static.items()}
        prec = _Precision(self.inv_t.device, self.opts.precision)
        graph = torch.cuda.CUDAGraph()
        spikes: list = []
        record = (lambda name, s: spikes.append((name, s))) if self.keep_spikes else None
        try:
            with torch.cuda.graph(graph):
                y = _run_chunk(snn, self.plan, snn.graph_module, self.static_in, self.chunk, self.B, t0, record, {},
                               self.opts, prec, inv_t=self.inv_t)
        except Exception as e:  # noqa: BLE001 - an op that cannot be captured: stay eager, say so once
            warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); simulating eagerly")
            self.failed = True
            for m, t in zip(neurons, t_before):
                m.t = t
            torch.cuda.synchronize()
            spikes = []
            self.y = _run_chunk(snn, self.plan, snn.graph_module, static, self.chunk, self.B, t0, record, {},
                                self.opts, prec)
            self.spikes = spikes
            return
        self.graph, self.y, self.spikes = graph, y, spikes
        graph.replay()                          # capture records, it does not compute: run the chunk now


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Opt-in, process-wide (Linux/glibc): keep freed large CPU buffers in the heap.

    glibc returns every freed buffer above its mmap threshold (at most 32 MB by default) to the
    OS, so each chunk's large activations are page-faulted in again; on CPU that costs ~10-20 %
    of a chunked simulation. This raises the threshold (and the trim threshold) to
    ``threshold_bytes``. Returns whether glibc accepted it. Memory freed inside the heap is reused
    by later allocations but not given back to the OS while the process runs.
    """
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


__all__ = ["Observer", "SimulationError", "EngineOptions", "PRECISIONS", "simulate", "run_steps", "engine_options",
           "check_sc_steps", "tune_cpu_allocator"]
