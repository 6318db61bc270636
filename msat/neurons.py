"""Spiking neurons (SPEC section 2): the step functions, stated once, and a thin stateful module shell.

The equations of one time step are written once, one function per dynamics, and both engines call them:

- ``if_step``: integrate and fire against a given threshold th(t) (k*theta, or MSAT's): V_pre = V + z,
  s = clamp(floor(V_pre/th), 0, gamma), spike confidence (``keep``, ``emitted``/``filtered``), soft or hard
  reset, an optional filter after the reset (SpiCalib's negative spikes) and SRP's output mask;
- ``msat_det`` and ``msat_threshold``: MSAT's threshold th(t) for t >= 1 (DET, then DTT and the sigmoid);
- ``signed_step``: SpiCalib's negative spikes (the filter ``if_step`` applies after the reset);
- ``sc_keep``: the spike-confidence draws c ~ Bernoulli(p) of one step.

Each step function runs in one of two forms of the same operations, picked by its buffer arguments:
given them (``s=`` of ``if_step``, ``th=`` / ``d=`` / ``x=`` of ``msat_threshold``, ``e=`` of ``msat_det``),
it writes its results into them and updates the state ``v`` in place (the eager engine,
``SpikingNeuron._loop``: no allocation per step); without them it mutates nothing and returns new tensors
(the fused step, ``fused_step``, traced by ``torch.compile``). The two forms differ only where a kernel of
the eager form rounds once what the functional form rounds twice: the soft reset (``sub_(alpha=th)`` /
``addcmul_`` vs ``v - s*th``), MSAT's ``x + tau_mp*alpha*d`` (``add_(alpha=)``) and, when 1/t is a Python
number (the eager loop outside CUDA graphs), ``d = V - Vbar``. They are marked where they occur.

``SpikingNeuron`` holds the state of one layer and runs these steps over a chunk of time steps: eagerly
(``_loop``) or one fused kernel per step (``_loop_fused``). ``reset_net(module)`` clears the state of
every stateful module of a network.

Units: the step functions work in the neuron's own units, where the layer scale is ``theta``
(``raw`` units: theta = theta_l; ``normalized`` units: theta = 1, the input is z/theta_l and the
output is multiplied back by theta_l). ``V_T = -theta`` in both cases.

What a neuron does not own: spike-confidence settings (``SCLayer``, handed in by the engine from the
network's ``SCState``) and recording in ANN mode (forward hooks, ``msat.network.record_inputs``).
"""
from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import NeuronConfig

Tensor = torch.Tensor
Scalar = Union[float, Tensor]
DYNAMICS = ("if", "msat", "signed")


def _exp_cap(dtype: torch.dtype) -> float:
    """Largest exp argument used: keeps tau_rd * exp(.) finite for the dtype."""
    return math.log(torch.finfo(dtype).max) - 8.0


def _op(fn, *args, out: Optional[Tensor] = None, **kw) -> Tensor:
    """``fn(*args, out=out)`` into a buffer, or ``fn(*args)`` (a new tensor) when ``out`` is None."""
    return fn(*args, **kw) if out is None else fn(*args, out=out, **kw)


# ----------------------------------------------------------------------------- the step functions

def _fire(v: Tensor, th: Scalar, gamma: int, s: Optional[Tensor]) -> Tensor:
    """Spike count ``s = clamp(floor(V_pre / th), 0, gamma)`` (th > 0), into ``s`` when given."""
    if gamma == 1:                                         # the exact form of clamp(floor(v/th), 0, 1)
        return torch.ge(v, th).to(v.dtype) if s is None else torch.ge(v, th, out=s)
    if s is not None and s.dtype != v.dtype:               # bf16 spikes: count in the state's precision
        return s.copy_(torch.div(v, th).floor_().clamp_(0, gamma))
    return _op(torch.div, v, th, out=s).floor_().clamp_(0, gamma)


def if_step(z: Tensor, v: Tensor, th: Scalar, gamma: int = 1, hard: bool = False, keep: Optional[Tensor] = None,
            filtered: bool = False, mask: Optional[Tensor] = None,
            after_reset: Optional[Callable[[Tensor], Tensor]] = None,
            s: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """One integrate-and-fire step of SPEC 2 against the threshold ``th`` = th(t): returns ``(s_out, V(t))``.

    ``V_pre = V(t-1) + z``; ``s = clamp(floor(V_pre / th), 0, gamma)`` (gamma = 1: IF, > 1: burst); spike
    confidence ``s_out = c * s`` with ``keep`` the draws c as 0/1 (None: SC off at this step); the reset
    with ``s_reset = s_out`` if ``filtered`` (paper Eq. 20) else ``s`` (``emitted``): soft
    ``V = V_pre - th * s_reset``, ``hard``: ``V = 0 where s_reset > 0``; then ``after_reset`` (SpiCalib's
    ``signed_step`` on the spikes that reset the neuron) and ``mask`` (SRP: a masked neuron integrates and
    resets as usual, its spikes are not emitted). The output o = s_out * th is the caller's.

    With the buffer ``s`` (the eager engine): V is updated in place in ``v`` and the spike counts are
    written into ``s``; the soft reset rounds once (``sub_(s, alpha=th)``, ``addcmul_``). Without (the fused
    step): inputs are not mutated and the soft reset is ``V_pre - s * th``.
    """
    inplace = s is not None
    v = v.add_(z) if inplace else v + z                    # V_pre(t); from here on v is ours in both forms
    s = _fire(v, th, gamma, s)
    if keep is not None and filtered:
        s.mul_(keep)                                       # s_reset = s_out
    if hard:
        v.masked_fill_(s > 0, 0.0)
    elif not inplace:
        v.sub_(s * th)                                     # functional form: two roundings
    elif isinstance(th, float):
        v.sub_(s, alpha=th)                                # eager form: one rounding
    else:
        v.addcmul_(s, th, value=-1.0)                      # eager form: one rounding
    if after_reset is not None:
        s.copy_(after_reset(s))
    if keep is not None and not filtered:
        s.mul_(keep)                                       # s_out = c * s, after the reset
    if mask is not None:
        s.mul_(mask)
    return s, v


def msat_det(z: Tensor, theta: Scalar, hp: NeuronConfig, cap: float, e: Optional[Tensor] = None) -> Tensor:
    """MSAT's ``DET(t) = tau_rd * exp(-z(t) / C)`` (SPEC 2), plus ``tau_mp * V_T`` (``V_T = -theta``) when DTT
    is on (the constant of the sum ``msat_threshold`` adds it to); the exponent is capped at ``cap``
    (``_exp_cap``) so that it stays finite. Into the buffer ``e`` when given."""
    e = _op(torch.mul, z, -1.0 / hp.C, out=e).clamp_max_(cap).exp_()
    if hp.tau_rd != 1.0:
        e.mul_(hp.tau_rd)
    if hp.use_dtt:
        e.add_(hp.tau_mp * -theta)
    return e


def msat_threshold(v: Tensor, vsum: Tensor, inv_t: Scalar, e: Optional[Tensor], theta: Scalar, hp: NeuronConfig,
                   gamma: int = 1, d: Optional[Tensor] = None, x: Optional[Tensor] = None,
                   th: Optional[Tensor] = None) -> Tensor:
    """MSAT's threshold ``th(t)`` for t >= 1 (SPEC 2; th(0) = theta is the caller's):
    ``theta * sigmoid(use_dtt * DTT + use_det * DET)`` with ``d = V(t-1) - Vbar(t-1)``,
    ``DTT = tau_mp*(alpha*d + V_T + k_a*softplus(d/k_i))``, ``V_T = -theta``, and ``e`` = ``msat_det``.

    ``v`` = V(t-1), ``vsum`` = sum of V(0..t-1), ``inv_t`` = 1/t: a Python number (``d`` in one rounding) or a
    tensor (two; one compiled kernel or CUDA graph serves every step). For gamma > 1 the threshold is kept
    above 0 (V/th must not be 0/0; gamma 1 compares). Buffers ``d``, ``x``, ``th`` (the eager engine): the
    results go into them and ``x + tau_mp*alpha*d`` rounds once; without them nothing is mutated.
    """
    inplace = th is not None
    if hp.use_dtt:
        if isinstance(inv_t, Tensor):                      # d = V(t-1) - Vbar(t-1)
            d = _op(torch.sub, v, _op(torch.mul, vsum, inv_t, out=d), out=d)
        else:
            d = _op(torch.add, v, vsum, alpha=-inv_t, out=d)
        beta = 1.0 / hp.k_i
        x = F.softplus(d, beta) if x is None else torch.ops.aten.softplus.out(d, beta, 20.0, out=x)
        c_sp = hp.tau_mp * hp.k_a / hp.k_i
        if c_sp != 1.0:
            x.mul_(c_sp)
        c_d = hp.tau_mp * hp.alpha
        x.add_(d, alpha=c_d) if inplace else x.add_(d * c_d)   # eager form: one rounding; functional: two
        x.add_(e if hp.use_det else hp.tau_mp * -theta)   # + DET (which holds tau_mp * V_T), or tau_mp * V_T
        th = _op(torch.sigmoid, x, out=th)
    elif hp.use_det:
        th = _op(torch.sigmoid, e, out=th)
    else:
        th = (torch.empty_like(v) if th is None else th).fill_(0.5)
    if not (isinstance(theta, float) and theta == 1.0):
        th.mul_(theta)
    if gamma > 1:
        th.clamp_min_(torch.finfo(th.dtype).tiny)
    return th


@dataclass
class SignedState:
    """SpiCalib's per-neuron state: firing events ``n``, mean inter-spike interval ``isi``, last firing
    step ``t_last`` and the running sum ``net`` of the emitted (signed) spikes."""

    n: Tensor
    isi: Tensor
    t_last: Tensor
    net: Tensor

    @staticmethod
    def zeros(like: Tensor) -> "SignedState":
        return SignedState(*(torch.zeros_like(like) for _ in range(4)))


def signed_step(s: Tensor, st: SignedState, t: int, allowance: float,
                debt: str = "net") -> tuple[Tensor, SignedState]:
    """SpiCalib's filter on one step's spike counts ``s`` (after fire and reset): returns ``(s_out, state)``.

    A neuron that fires updates its mean inter-spike interval (``isi <- ((t - t_last) + isi*(n-1))/n``,
    ``t_last <- t``; t_last starts at 0, so the first interval is the first spike's latency). A neuron
    silent for longer than its mean interval plus the allowance A, ``t - t_last > isi + A``, emits a
    negative spike (-1) at every such step. Its membrane is not touched (BrainCog's ``SpiCalib`` edits
    the output only). ``debt``:

    - ``net`` (ours, the default): a negative spike only takes back an earlier positive one (while the
      net count is > 0), so silence builds no debt and a neuron that starts late fires normally;
    - ``braincog``: the code's unclamped running sum: after every step ``net += s`` and the output is 0
      wherever ``net <= -1`` (a neuron silent beyond A before its first spike stays muted).

    ``allowance`` 0 switches the filter off (BrainCog's ``SpiCalib(0)`` returns its input).
    """
    if allowance <= 0:
        return s, st
    fired = s > 0
    n = st.n + fired.to(s.dtype)
    isi = torch.where(fired, ((t - st.t_last) + st.isi * (n - 1)) / n.clamp(min=1), st.isi)
    t_last = torch.where(fired, torch.full_like(st.t_last, t), st.t_last)
    neg = (t - t_last) > isi + allowance
    if debt == "net":
        neg = neg & (st.net > 0)
    s = s - neg.to(s.dtype)
    net = st.net + s
    if debt == "braincog":
        s = torch.where(net <= -1, torch.zeros_like(s), s)
    return s, SignedState(n, isi, t_last, net)


def sc_keep(sc: Optional["SCLayer"], t: int, u: Tensor) -> Optional[Tensor]:
    """Spike confidence at step t (SPEC 2): the draws ``c ~ Bernoulli(p)`` per neuron as 0/1 values, in the
    buffer ``u`` (from the run's generator), for ``if_step``'s ``keep``; None where SC is off (no setting
    for this layer, or t >= E)."""
    if sc is None or t >= sc.E:
        return None
    torch.rand(u.shape, generator=sc.generator, dtype=u.dtype, device=u.device, out=u)
    return u.lt_(sc.p)


# ----------------------------------------------------------------------------- fused steps

def _make_fused(dynamics: str, hp: NeuronConfig, first: bool, z_in: str, keep: Optional[bool], has_mask: bool,
                keep_spikes: bool):
    """The per-step update of one layer as one function over flat tensors, writing its results in place:
    V (and MSAT's sum of V), the output o = s_out * th * scale and, with ``keep_spikes``, s_out.

    ``first``: t = 0 (MSAT starts at theta); ``z_in``: where the input current is read from (``z``: its
    own tensor; ``o`` / ``s``: the output buffer it shares memory with, read before it is written);
    ``keep``: None (no spike confidence at this step), False (``emitted``) or True (``filtered``)."""
    gamma, hard = hp.gamma, hp.reset == "hard"

    def step(z, v, vsum, o_out, s_out, th, scale, inv_t, keep_t, mask):
        zz = o_out if z_in == "o" else s_out if z_in == "s" else z
        thr = th
        if dynamics == "msat" and not first:
            e = msat_det(zz, th, hp, _exp_cap(v.dtype)) if hp.use_det else None
            thr = msat_threshold(v, vsum, inv_t, e, th, hp, gamma)
        s, v_new = if_step(zz, v, thr, gamma, hard, keep_t if keep is not None else None, bool(keep),
                           mask if has_mask else None)
        v.copy_(v_new)
        if dynamics == "msat":
            vsum.add_(v_new)
            o = s * thr * scale
        else:
            o = s * (thr * scale)
        if keep_spikes:
            s_out.copy_(s)
        o_out.copy_(o)

    return step


_FUSED: dict = {}


def fused_step(dynamics: str, hp: NeuronConfig, first: bool, z_in: str, keep: Optional[bool], has_mask: bool,
               keep_spikes: bool, compile: bool = True):
    """The per-step update compiled with ``torch.compile`` (one Triton kernel per layer and step on CUDA,
    one C++ loop on CPU), cached by its options; ``compile=False`` gives the same function uncompiled."""
    key = (dynamics, dataclasses.astuple(hp), first, z_in, keep, has_mask, keep_spikes, compile)
    fn = _FUSED.get(key)
    if fn is None:
        fn = _make_fused(dynamics, hp, first, z_in, keep, has_mask, keep_spikes)
        if compile:
            # a code object of its own per variant: dynamo counts recompilations per code object
            code = fn.__code__.replace(co_name=f"fused_step_{len(_FUSED)}")
            fn = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
            fn = torch.compile(fn, dynamic=True, fullgraph=True)
        _FUSED[key] = fn
    return fn


def _flat(x: Optional[Tensor]) -> Optional[Tensor]:
    """A 1-D view of ``x`` in memory order (contiguous or channels-last), or None if it has none."""
    if x is None:
        return None
    if x.is_contiguous():
        return x.view(-1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).view(-1)
    return None


# ----------------------------------------------------------------------------- module shells

@dataclass
class SCLayer:
    """Spike confidence of one layer for one simulation, handed to ``run_chunk`` by the engine."""

    p: float                         # keep probability
    E: int                           # acts on steps t < E
    filtered: bool                   # True: s_reset = s_out (paper Eq. 20); False: s_reset = s
    generator: Optional[torch.Generator] = None


class MemoryModule(nn.Module):
    """A module with state across time steps; ``reset_state()`` clears it."""

    def reset_state(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def reset_net(net: nn.Module) -> None:
    """Clear the state of every ``MemoryModule`` inside ``net``."""
    for m in net.modules():
        if isinstance(m, MemoryModule):
            m.reset_state()


class SpikingNeuron(MemoryModule):
    """One spiking layer replacing one activation call site.

    ANN mode (``forward``): the original activation (ReLU, or the QCFS module kept as ``ann_act``).
    SNN mode (``run_chunk``, called by the simulation engine): the recurrence of SPEC 2 for the
    method's ``dynamics`` over a chunk of time steps, state carried across chunks.

    Buffers: ``theta`` (the calibrated scale: () or per channel (C, 1, ...)), ``v0`` (None, or a
    per-element initial potential in units of theta added to ``neuron.v_init``: SNN Calibration's
    potential calibration) and ``i_bias`` (None, or an input current in activation units added at every
    step, broadcast over the per-sample shape: SNN Calibration's theta/(2T) shift and bias calibration).
    State: ``mask`` (None, or a (B, ...) 0/1 tensor of neurons whose spikes are emitted, set per batch
    by SRP and cleared with the state).
    """

    def __init__(self, cfg: NeuronConfig, name: str, dynamics: str = "if", ann_act: Optional[nn.Module] = None,
                 allowance: float = 0.0, debt: str = "net"):
        super().__init__()
        if dynamics not in DYNAMICS:
            raise ValueError(f"unknown neuron dynamics {dynamics!r}; valid: {', '.join(DYNAMICS)}")
        self.cfg = cfg
        self.name = name
        self.dynamics = dynamics
        self.allowance, self.debt = float(allowance), debt           # signed: SpiCalib's A and debt rule
        self.ann_act = ann_act
        self.register_buffer("theta", torch.ones(()))
        self.register_buffer("v0", None)
        self.register_buffer("i_bias", None)
        self._u = None                                  # cached (theta inside, input, output factors)
        self._bufs: dict[str, Tensor] = {}              # state and chunk buffers, reused (see _buffer)
        self._fused_consts = None                       # (key, th, scale) tensors of the fused step
        self.fused_compile = True                       # False: the fused step runs uncompiled (tests, debugging)
        self.reset_state()

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"name={self.name!r}, dynamics={self.dynamics}, units={c.units}, reset={c.reset}, "
                f"gamma={c.gamma}, theta_shape={tuple(self.theta.shape)}")

    # --- ANN mode
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x) if self.ann_act is None else self.ann_act(x)

    # --- state
    def reset_state(self) -> None:
        self.v: Optional[Tensor] = None      # V(t-1), per sample shape (B, ...)
        self.vsum: Optional[Tensor] = None   # sum of V(0..t-1) (msat)
        self.signed: Optional[SignedState] = None   # SpiCalib's filter state (signed)
        self.mask: Optional[Tensor] = None   # (B, ...) 0/1: neurons allowed to fire (SRP), or None
        self.t = 0

    def set_theta(self, theta: Tensor) -> None:
        """Set the calibrated scale; it keeps the dtype it is given (the model's)."""
        self.theta = theta.detach().to(self.theta.device).clone()
        self._u = None

    def potential(self) -> Tensor:
        """The residual potential V(t-1) in units of theta (after a simulation step; (B, ...))."""
        if self.v is None:
            raise RuntimeError(f"layer {self.name!r} has not been simulated")
        return self.v / self._u[0]

    def set_v0(self, v0: Optional[Tensor]) -> None:
        """Per-element initial potential (units of theta, per-sample shape), or None."""
        self.v0 = None if v0 is None else v0.detach().clone()

    def set_input_bias(self, bias: Optional[Tensor]) -> None:
        """An input current added at every step (activation units, broadcast to the per-sample shape), or None."""
        self.i_bias = None if bias is None else bias.detach().clone()

    def _units(self) -> tuple[Scalar, Optional[Scalar], Optional[Scalar]]:
        """(theta inside the neuron, input factor or None, output factor or None).

        A constant threshold k*theta is scale-free, so both units give the same dynamics; it runs in
        raw units (no input scaling). A layer whose theta is 0 sees no input and never fires.
        """
        th = self.theta
        alive = th > 0
        normalized = self.cfg.units == "normalized" and self.dynamics == "msat"
        if th.dim() == 0:
            val = float(th)
            if normalized:
                return 1.0, (1.0 / val if val > 0 else 0.0), val
            return (val, None, None) if val > 0 else (1.0, 0.0, 0.0)
        if normalized:
            return 1.0, torch.where(alive, 1.0 / torch.where(alive, th, torch.ones_like(th)), torch.zeros_like(th)), th
        inner = torch.where(alive, th, torch.ones_like(th))
        if bool(alive.all()):
            return inner, None, None
        mask = alive.to(th.dtype)
        return inner, mask, mask

    @staticmethod
    def _layout(like: Tensor, ndim: int) -> torch.memory_format:
        """The memory format of a ``ndim``-D buffer laid out like ``like``: channels-last for a 4-D
        channels-last ``like`` (that is not also contiguous), else contiguous."""
        cl = like.dim() == 4 and ndim == 4 and not like.is_contiguous() and \
            like.is_contiguous(memory_format=torch.channels_last)
        return torch.channels_last if cl else torch.contiguous_format

    def _buffer(self, key: str, shape: tuple, like: Tensor, dtype: Optional[torch.dtype] = None,
                grow: bool = False) -> Tensor:
        """A buffer of this layer kept across chunks and batches (the engine reuses its own buffers:
        no allocation per chunk, and fixed addresses for CUDA graphs), laid out like ``like``; its content is
        undefined. ``grow``: a buffer with at least ``shape[0]`` rows is reused (its first rows are returned)."""
        dtype = dtype or like.dtype
        fmt = self._layout(like, len(shape))
        buf = self._bufs.get(key)
        rows_fit = buf is not None and (buf.shape[0] >= shape[0] if grow else buf.shape[0] == shape[0])
        if not rows_fit or buf.shape[1:] != torch.Size(shape[1:]) or buf.dtype != dtype \
                or buf.device != like.device or not buf.is_contiguous(memory_format=fmt):
            buf = torch.empty(shape, dtype=dtype, device=like.device, memory_format=fmt)
            self._bufs[key] = buf
        return buf[:shape[0]] if grow else buf

    def _chunk_buffer(self, key: str, steps: int, batch: int, like: Tensor) -> Tensor:
        """A reused (steps, B, ...) buffer laid out like ``like`` (B, ...) at every step; it only grows (a
        shorter last chunk takes the first rows of the buffer instead of allocating one of its own)."""
        feat = like.shape[1:]
        return self._buffer(key, (steps * batch, *feat), like, grow=True).view(steps, batch, *feat)

    def state_dtype(self, z: Tensor) -> torch.dtype:
        """Membrane state is kept in the wider of the input's and the scale's dtype (fp32 under bf16)."""
        return torch.promote_types(z.dtype, self.theta.dtype) if z.is_floating_point() else self.theta.dtype

    def _init_state(self, batch: int, feat: tuple, like: Tensor, theta_in: Scalar) -> None:
        dtype = self.state_dtype(like)
        self.v = self._buffer("v", (batch, *feat), like, dtype).zero_()
        if self.cfg.v_init != 0:
            self.v.add_(self.cfg.v_init * theta_in)
        if self.v0 is not None:
            self.v.add_(self.v0.to(dtype) * theta_in)
        if self.dynamics == "msat":
            self.vsum = self._buffer("vsum", (batch, *feat), like, dtype).zero_()
        if self.dynamics == "signed":
            self.signed = SignedState.zeros(self.v)

    # --- SNN mode
    def run_chunk(self, z: Tensor, steps: int, batch: int, static: bool = False, keep_spikes: bool = False,
                  consume: bool = False, sc: Optional[SCLayer] = None, fused: bool = False,
                  inv_t: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Advance ``steps`` time steps.

        z: (steps*B, ...) time-folded input current, or (B, ...) when ``static`` (the same current
        every step). Returns ``(out, spikes)``: out (steps*B, ...) the layer output o = s_out*th
        (in activation units), spikes (steps, B, ...) the spike counts s_out. With
        ``keep_spikes=False`` the two may share memory (spikes is then not valid). With
        ``consume=True`` the caller no longer needs ``z`` and its memory is reused. ``sc``: spike
        confidence of this layer (None: off). Both returned tensors may live in buffers this layer
        reuses: they are valid until its next ``run_chunk`` (copy what you keep). ``fused``: run each step as one compiled kernel
        (``fused_step``) where the layer allows it (fixed or MSAT threshold, one scale per layer);
        ``inv_t``: (steps,) tensor of 1/t for the chunk's steps (0 at t = 0), on the layer's device.
        """
        feat = z.shape[1:]
        if self.t == 0 or self._u is None:
            self._u = self._units()
        theta_in, in_scale, out_scale = self._u
        consume = consume and not static
        zs = z.view(1 if static else steps, batch, *feat)                 # (Tc or 1, B, ...)
        if self.i_bias is not None:
            zs = zs.add_(self.i_bias) if consume else zs + self.i_bias
            consume = not static                                           # zs is our own copy now
        if in_scale is not None:
            zs = zs.mul_(in_scale) if consume else zs * in_scale
            consume = not static                                           # zs is our own copy now
        if self.v is None:
            self._init_state(batch, feat, zs[0], theta_in)
        # spikes overwrite the input of step i once it has been integrated: (Tc, B, ...)
        spikes = zs if consume else self._chunk_buffer("spikes", steps, batch, zs[0])
        if fused and self._fusable(theta_in, out_scale, zs, spikes):
            out = self._loop_fused(zs, spikes, static, consume, keep_spikes, sc, theta_in, out_scale, inv_t)
        elif self.dynamics != "msat":
            th_const = self.cfg.k * theta_in
            self._loop(zs, spikes, static, lambda i, t: th_const, None, sc)
            scale = th_const if out_scale is None else th_const * out_scale
            out = spikes.mul_(scale) if not keep_spikes else torch.mul(
                spikes, scale, out=self._chunk_buffer("out", steps, batch, zs[0]))
        else:
            # o = s_out * th is written over the spikes unless the caller keeps them
            out = self._chunk_buffer("out", steps, batch, zs[0]) if keep_spikes else None
            self._loop(zs, spikes, static, self._msat_thresholds(zs, static, theta_in, inv_t), out, sc)
            out = spikes if out is None else out
            if out_scale is not None:
                out.mul_(out_scale)
        self.t += steps
        return out.view(steps * batch, *feat), spikes

    def _fusable(self, theta_in: Scalar, out_scale: Optional[Scalar], zs: Tensor, spikes: Tensor) -> bool:
        """The fused step covers the fixed and MSAT thresholds with one scale per layer (SC, burst, hard
        reset, v0, input bias and SRP masks included); SpiCalib and per-channel scales run the loop."""
        same = [zs[0], spikes[0], self.v] + ([] if self.mask is None else [self.mask])
        return (self.dynamics in ("if", "msat") and not isinstance(theta_in, Tensor)
                and not isinstance(out_scale, Tensor) and _flat(self.v) is not None
                and all(t.shape == self.v.shape and t.stride() == self.v.stride() for t in same))

    def _loop_fused(self, zs: Tensor, spikes: Tensor, static: bool, consume: bool, keep_spikes: bool,
                    sc: Optional[SCLayer], theta_in: float, out_scale: Optional[float],
                    inv_t: Optional[Tensor]) -> Tensor:
        """The time loop with one compiled kernel per step (``fused_step``); returns the output (Tc, B, ...)."""
        cfg, v = self.cfg, self.v
        msat = self.dynamics == "msat"
        out = self._chunk_buffer("out", *spikes.shape[:2], zs[0]) if keep_spikes else spikes
        # with consume, zs is the spikes buffer: the kernel reads z from the buffer it then writes
        z_in = ("s" if keep_spikes else "o") if consume else "z"
        dev, sdt = v.device, v.dtype
        key = (theta_in, out_scale, sdt, dev)
        if self._fused_consts is None or self._fused_consts[0] != key:   # made once: none inside a CUDA graph
            self._fused_consts = (key, torch.tensor(theta_in if msat else cfg.k * theta_in, dtype=sdt, device=dev),
                                  torch.tensor(1.0 if out_scale is None else out_scale, dtype=sdt, device=dev))
        _, th, scale = self._fused_consts
        if msat and inv_t is None:
            inv_t = torch.tensor([1.0 / (self.t + i) if self.t + i > 0 else 0.0 for i in range(spikes.shape[0])],
                                 dtype=sdt, device=dev)
        fv, fvsum, fmask = _flat(v), _flat(self.vsum), _flat(self.mask)
        u = self._buffer("u", v.shape, v) if sc is not None else None
        compile = self.fused_compile
        steps: dict = {}                                                  # (first, keep) -> the fused step
        for i in range(spikes.shape[0]):
            t = self.t + i
            keep = sc_keep(sc, t, u)                                      # c ~ Bernoulli(p), or None
            variant = (msat and t == 0, None if keep is None else sc.filtered)
            fn = steps.get(variant)                                       # one registry lookup per chunk, not step
            if fn is None:
                fn = steps[variant] = fused_step(self.dynamics, cfg, variant[0], z_in, variant[1], fmask is not None,
                                                 keep_spikes, compile)
            fn(None if z_in != "z" else _flat(zs[0] if static else zs[i]), fv, fvsum, _flat(out[i]),
               _flat(spikes[i]) if keep_spikes else None, th, scale, inv_t[i] if msat else th,
               None if keep is None else _flat(keep), fmask)
        return out

    def _msat_thresholds(self, zs: Tensor, static: bool, theta_in: Scalar, inv_t: Optional[Tensor] = None):
        """A function (i, t) -> th(t) for the chunk: theta at t = 0, then ``msat_threshold`` on the current state
        V(t-1) and sum V(0..t-1), into reused buffers (the returned tensor is reused at the next step).
        ``inv_t``: 1/t of the chunk's steps as a tensor (inside a CUDA graph, where a Python 1/t would be frozen)."""
        cfg = self.cfg
        cap = _exp_cap(zs.dtype)
        d, x, th, e = (self._buffer(k, self.v.shape, self.v) for k in ("d", "x", "th", "e"))
        if static and cfg.use_det:
            msat_det(zs[0], theta_in, cfg, cap, e)            # the same input every step: once per chunk

        def thresh(i: int, t: int) -> Scalar:
            if t == 0:
                return theta_in
            if cfg.use_det and not static:
                msat_det(zs[i], theta_in, cfg, cap, e)
            return msat_threshold(self.v, self.vsum, 1.0 / t if inv_t is None else inv_t[i], e, theta_in, cfg,
                                  cfg.gamma, d, x, th)

        return thresh

    def _spicalib(self, t: int) -> Callable[[Tensor], Tensor]:
        """SpiCalib's filter at step t for ``if_step``'s ``after_reset``: ``signed_step`` on this layer's state."""
        def negative_spikes(s: Tensor) -> Tensor:
            s_out, self.signed = signed_step(s, self.signed, t, self.allowance, self.debt)
            return s_out
        return negative_spikes

    def _loop(self, zs: Tensor, spikes: Tensor, static: bool, thresh, out: Optional[Tensor],
              sc: Optional[SCLayer]) -> None:
        """The time loop, in place on the layer's state: th(t), then ``if_step`` (V_pre = V + z, fire, spike
        confidence, reset, SpiCalib's negative spikes, SRP's output mask) and MSAT's sum of V.

        ``thresh(i, t)`` gives th(t). A constant threshold leaves the output to the caller;
        otherwise o = s_out * th goes into ``out[i]``, or over ``spikes[i]`` when ``out`` is None.
        """
        cfg, v, vsum = self.cfg, self.v, self.vsum
        hard, filtered = cfg.reset == "hard", sc is not None and sc.filtered
        adaptive = self.dynamics == "msat"
        u = torch.empty_like(v) if sc is not None else None
        for i in range(spikes.shape[0]):
            t = self.t + i
            th = thresh(i, t)                                  # uses V(t-1): before the update
            s, _ = if_step(zs[0] if static else zs[i], v, th, cfg.gamma, hard, sc_keep(sc, t, u), filtered, self.mask,
                           None if self.signed is None else self._spicalib(t), s=spikes[i])
            if vsum is not None:
                vsum.add_(v)
            if adaptive:
                if out is not None:
                    torch.mul(s, th, out=out[i])
                else:
                    s.mul_(th)


__all__ = ["if_step", "msat_det", "msat_threshold", "signed_step", "sc_keep", "fused_step", "SignedState", "SCLayer",
           "MemoryModule", "reset_net", "SpikingNeuron", "DYNAMICS"]
