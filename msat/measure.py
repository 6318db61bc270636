"""Measurements (SPEC section 3): observers of the one simulation engine, MACs and energy.

* ``SpikeStats``: per spiking layer and step, SIN ratio, spike confidence ``q``, ANS and firing rate.
* ``AccuracyCurve``: sample-weighted accuracy after t steps, for every t, from one simulation.
* ``derive_sc_p``: the spike-confidence probabilities ``p_l = 1 - q_l(E)``.
* ``layer_macs`` / ``energy_report`` / ``energy_ratio``: paper Eq. 21-23.

Every accumulator is a sum of integer counts, so results over many batches (or ranks, see
``all_reduce``) are exactly sample-weighted.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .simulation import Observer, simulate
from .utils import all_reduce_sum

# Rows of SpikeStats' per-layer (4, T) count tensor; each row is a count after t = 1..T steps.
_FIRED_NEG, _FIRED_POS, _SIN_SPIKES, _SPIKES = range(4)
# Entries of the per-layer (3,) totals tensor.
_NEG, _NEURONS, _SAMPLES, _NEG_SPIKES = range(4)
_BLOCK = 2 ** 18       # neurons per float32 partial sum: 64 spikes each stay below 2**24, exact
MAC_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _col_sums(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for x (Tc, N) and w (k, N) of small integer values, exactly, as int64 (Tc, k).

    float32 partial sums over at most _BLOCK columns stay exact integers (values <= 64)."""
    return sum(torch.mm(x[:, i:i + _BLOCK], w[:, i:i + _BLOCK].t()).to(torch.int64)
               for i in range(0, x.shape[1], _BLOCK))


def _ratio(num: torch.Tensor, den: torch.Tensor) -> list[float]:
    """Elementwise num / den as floats, 0 where den is 0."""
    num, den = num.double().cpu(), den.double().cpu()
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num)).tolist()


def _rows(st: dict, spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk's spikes (Tc, B, ...) as rows (Tc, B*n) and the layer's masks (2, B*n) (all; a_l <= 0), both
    in the element order of the spikes' memory layout (channels-last spikes are read without a copy).

    The order is fixed at a batch's first chunk (``st["order"]``); a later chunk laid out otherwise is
    copied into it. Every statistic is a sum over neurons, so the order does not change any count."""
    order = st.get("order")
    if order is None:
        feat = spikes[0]
        order = tuple(sorted(range(feat.dim()), key=lambda d: -feat.stride(d)))   # stable: ties keep their place
        if not spikes.permute(0, *[d + 1 for d in order]).is_contiguous():
            order = tuple(range(feat.dim()))
        negf = st.pop("neg").permute(order).reshape(-1).float()
        st["order"], st["w"] = order, torch.stack([torch.ones_like(negf), negf])
    rows = spikes.permute(0, *[d + 1 for d in order]).reshape(spikes.shape[0], -1)  # a view when laid out so
    return rows, st["w"]


class SpikeStats(Observer):
    """SIN / spike-confidence / ANS / firing-rate curves per spiking layer, summed over batches.

    With ``a_l`` the ANN pre-activation of layer ``l`` and ``N_l(t)`` a neuron's spike count
    after ``t`` steps: SIN = {N_l(t) > 0 and a_l <= 0}; ``sin_ratio = |SIN| / |a_l <= 0|``;
    ``q = |SIN| / (|SIN| + |N_l(t) > 0 and a_l > 0|)``; ``ans`` = spikes of SIN neurons / |SIN|;
    ``firing_rate`` = spikes per neuron per step. Ratios with a zero denominator are 0. Signed spikes
    (SpiCalib) count by magnitude: a negative spike is emitted, and costs a synaptic operation, too.

    ``on_batch_start`` takes the pre-activations from ``snn.ann_preactivations(x)``; call
    ``begin_batch(preacts, T)`` directly to feed them yourself. ``layers`` restricts the layers
    measured (default: every layer of the pre-activation dict).
    """

    def __init__(self, layers: Iterable[str] | None = None):
        self.layers = None if layers is None else list(layers)
        self.T: int | None = None
        self.counts: dict[str, torch.Tensor] = {}   # name -> (4, T) int64
        self.totals: dict[str, torch.Tensor] = {}   # name -> (4,) int64: |a<=0|, neurons, samples, negative spikes
        self._batch: dict[str, dict[str, Any]] = {}  # name -> this batch's state (see begin_batch)
        self._checked: set[str] = set()             # layers whose spikes were checked to be counts
        self._work: torch.Tensor | None = None      # scratch, the size of the largest layer's chunk

    # -- observer protocol ------------------------------------------------------------------
    def on_batch_start(self, snn: Any, x: torch.Tensor, T: int) -> None:
        with torch.no_grad():
            self.begin_batch(snn.ann_preactivations(x), T)

    def begin_batch(self, preacts: Mapping[str, torch.Tensor], T: int) -> None:
        """Start a batch of ``T`` steps with ANN pre-activations ``preacts``: name -> (B, ...)."""
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        if self.T is not None and T != self.T:
            raise ValueError(f"SpikeStats accumulates curves of T={self.T} steps; got a batch with T={T}")
        names = list(preacts) if self.layers is None else self.layers
        missing = [n for n in names if n not in preacts]
        if missing:
            raise KeyError(f"no ANN pre-activation for layers {missing}; available: {list(preacts)}")
        self.T = T
        self._batch = {}
        for n in names:
            a = preacts[n].detach()                                   # (B, ...)
            self._batch[n] = {
                "shape": tuple(a.shape),
                "neg": a <= 0,                                        # (B, ...) where a_l <= 0
                "fired": torch.zeros(a.numel(), device=a.device),     # 1 where N_l(t) > 0, in "order" (on_spikes)
                "spikes": torch.zeros(2, dtype=torch.int64, device=a.device),  # all, of a_l <= 0
                "seen": 0,
            }
            if n not in self.counts:
                self.counts[n] = torch.zeros(4, T, dtype=torch.int64, device=a.device)
                self.totals[n] = torch.zeros(4, dtype=torch.int64, device=a.device)
            self.totals[n] += torch.tensor([int((a <= 0).sum()), a.numel(), a.shape[0], 0], device=a.device)

    def on_spikes(self, name: str, spikes: torch.Tensor, t0: int) -> None:
        st = self._batch.get(name)
        if st is None:
            if self.layers is not None:
                return
            raise KeyError(f"spikes of layer {name!r}, which has no ANN pre-activation")
        Tc = spikes.shape[0]
        if tuple(spikes.shape[1:]) != st["shape"]:
            raise ValueError(f"layer {name!r}: spikes {tuple(spikes.shape)} do not match "
                             f"(Tc, *pre-activation shape {st['shape']})")
        if t0 != st["seen"] or t0 + Tc > self.T:
            raise ValueError(f"layer {name!r}: got steps {t0}..{t0 + Tc - 1}, "
                             f"expected to start at {st['seen']} within T={self.T}")
        flat, w = _rows(st, spikes)                                   # (Tc, B*n) and (2, B*n), one element order
        if name not in self._checked:
            if (flat.abs() > 64).any() or not torch.equal(flat, flat.trunc()):
                raise ValueError(f"layer {name!r}: spikes must be integer counts in -64..64 per step")
            self._checked.add(name)
        # the value range picks the cheap path; on an accelerator the general one (no host sync per layer)
        lo, hi = (-1.0, 2.0) if flat.device.type != "cpu" else (float(v) for v in torch.aminmax(flat))
        s = flat
        if lo < 0:                                      # signed spikes (SpiCalib): emitted < 0
            self.totals[name][_NEG_SPIKES] -= torch.clamp(flat, max=0).sum(dtype=torch.float64).to(torch.int64)
            s = flat.abs()                              # a negative spike is one (signed) spike too
        s = s.float()
        ws = self._workspace(s)
        # 1 where N_l(t) > 0: the running maximum over steps of min(s, 1) (s itself when no count exceeds 1)
        src = s if lo >= 0 and hi <= 1 else torch.clamp(s, max=1.0, out=ws)
        prev = st["fired"]
        if Tc == 1:
            fired = torch.maximum(src[0], prev, out=prev).unsqueeze(0)
        else:
            for i in range(Tc):
                prev = torch.maximum(src[i], prev, out=ws[i])
            fired = ws
            st["fired"].copy_(prev)
        cum = _col_sums(s, w).cumsum(0) + st["spikes"]               # (Tc, 2) spikes up to t: all, a_l <= 0
        st["spikes"] = cum[-1].clone()
        n_fired = _col_sums(fired, w)                                # (Tc, 2) fired neurons: all, a_l <= 0
        c = self.counts[name][:, t0:t0 + Tc]                          # (4, Tc) view
        c[_FIRED_NEG] += n_fired[:, 1]
        c[_FIRED_POS] += n_fired[:, 0] - n_fired[:, 1]
        c[_SIN_SPIKES] += cum[:, 1]         # SIN spikes = spikes of a_l <= 0 neurons (0 until they fire)
        c[_SPIKES] += cum[:, 0]
        st["seen"] += Tc

    def _workspace(self, like: torch.Tensor) -> torch.Tensor:
        """A scratch tensor shaped like ``like``, shared by all layers (fresh big tensors are slow)."""
        w = self._work
        if w is None or w.numel() < like.numel() or w.dtype != like.dtype or w.device != like.device:
            w = self._work = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return w[:like.numel()].view(like.shape)

    def on_batch_end(self) -> None:
        short = {n: st["seen"] for n, st in self._batch.items() if st["seen"] != self.T}
        if short:
            raise RuntimeError(f"batch ended before T={self.T} steps for layers {short}")
        self._batch = {}

    # -- results ----------------------------------------------------------------------------
    def curves(self) -> dict[str, dict[str, list[float]]]:
        """name -> {"sin_ratio", "q", "ans", "firing_rate"}: lists over t = 1..T."""
        if self.T is None:
            raise RuntimeError("SpikeStats has seen no batch")
        steps = torch.arange(1, self.T + 1, dtype=torch.float64)
        out = {}
        for n, c in self.counts.items():
            tot = self.totals[n].cpu()
            out[n] = {
                "sin_ratio": _ratio(c[_FIRED_NEG], tot[_NEG].expand(self.T)),
                "q": _ratio(c[_FIRED_NEG], c[_FIRED_NEG] + c[_FIRED_POS]),
                "ans": _ratio(c[_SIN_SPIKES], c[_FIRED_NEG]),
                "firing_rate": _ratio(c[_SPIKES], tot[_NEURONS] * steps),
            }
        return out

    def at(self, t: int) -> dict[str, dict[str, float]]:
        """The curves' values after ``t`` steps (1 <= t <= T)."""
        if self.T is None or not 1 <= t <= self.T:
            raise ValueError(f"t must be in 1..{self.T}, got {t}")
        return {n: {k: v[t - 1] for k, v in d.items()} for n, d in self.curves().items()}

    def mean_firing_rate(self) -> list[float]:
        """Unweighted mean over layers of the firing-rate curve (paper Fig. 7 average)."""
        curves = [d["firing_rate"] for d in self.curves().values()]
        return [sum(v) / len(v) for v in zip(*curves)]

    def mean_spike_count(self, t: int | None = None) -> dict[str, float]:
        """name -> spikes per neuron per sample over the first ``t`` steps (default all T; Eq. 22's factor)."""
        col = -1 if t is None else t - 1
        return {n: float(c[_SPIKES, col]) / max(int(self.totals[n][_NEURONS]), 1)
                for n, c in self.counts.items()}

    def negative_spikes(self) -> dict[str, int]:
        """name -> negative spikes emitted over all samples and steps (signed-spike methods; else 0)."""
        return {n: int(t[_NEG_SPIKES]) for n, t in self.totals.items()}

    def neurons_per_sample(self) -> dict[str, int]:
        """name -> neurons of that layer for one sample."""
        return {n: int(t[_NEURONS]) // max(int(t[_SAMPLES]), 1) for n, t in self.totals.items()}

    # -- reduction --------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The raw counts (``"<layer>/counts"``, ``"<layer>/totals"``); summing them merges runs."""
        return {**{f"{n}/counts": c for n, c in self.counts.items()},
                **{f"{n}/totals": t for n, t in self.totals.items()}}

    def load_state_tensors(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace the raw counts by ``state`` (e.g. summed ``state_tensors`` of several runs)."""
        counts = {k[:-len("/counts")]: v for k, v in state.items() if k.endswith("/counts")}
        totals = {k[:-len("/totals")]: v for k, v in state.items() if k.endswith("/totals")}
        if set(counts) != set(totals) or not counts:
            raise ValueError(f"state must hold '/counts' and '/totals' for the same layers; got {list(state)}")
        Ts = {v.shape[1] for v in counts.values()}
        if len(Ts) != 1:
            raise ValueError(f"state mixes curve lengths {sorted(Ts)}")
        self.counts = {n: v.clone() for n, v in counts.items()}
        pad = lambda t: torch.cat([t, t.new_zeros(4 - t.numel())]) if t.numel() < 4 else t.clone()
        self.totals = {n: pad(totals[n]) for n in counts}        # states of before the negative-spike count
        self.T = Ts.pop()

    def all_reduce(self) -> "SpikeStats":
        """Sum the counts across ranks (torch.distributed, if initialized); returns self."""
        all_reduce_sum([*self.counts.values(), *self.totals.values()])
        return self


class AccuracyCurve(Observer):
    """``acc[t]``: fraction of all samples whose argmax of the summed outputs after t steps is right.

    Either ``update(out, y)`` with a whole simulate output (T, B, classes), or as an observer
    after ``set_labels(y)`` for each batch. Counts are summed, so the curve is sample-weighted.
    """

    def __init__(self, record_steps: Sequence[int] = (), n_images: int = 0) -> None:
        self.correct: torch.Tensor | None = None    # (T,) int64
        self.total: torch.Tensor | None = None      # () int64
        self._labels: torch.Tensor | None = None
        self._index: torch.Tensor | None = None     # (B,) the batch's image ids (per-image records)
        self._carry: torch.Tensor | None = None     # (B, classes) sum of outputs so far
        self._seen = 0
        # per-image outcomes after each of ``record_steps`` (the input of paired tests): (S, N) uint8
        self.record_steps = sorted(set(int(t) for t in record_steps))
        self.images = torch.zeros(len(self.record_steps), n_images, dtype=torch.uint8)
        self.ann_images = torch.zeros(n_images, dtype=torch.uint8)

    def set_labels(self, y: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Labels (B,) of the next batch given to the observer methods; ``index`` (B,): the images' ids in
        the split, where per-image outcomes are recorded (``record_steps``)."""
        if self.record_steps and index is None:
            raise ValueError("AccuracyCurve records per-image outcomes: set_labels(y, index) needs the image ids")
        self._labels, self._index = y, None if index is None else index.cpu()

    def record_ann(self, hit: torch.Tensor) -> None:
        """The ANN's per-image outcome (B,) bool for the batch of the last ``set_labels``."""
        if self.record_steps:
            self.ann_images[self._index] = hit.cpu().to(torch.uint8)

    def on_batch_start(self, snn: Any, x: torch.Tensor, T: int) -> None:
        if self._labels is None or self._labels.shape[0] != x.shape[0]:
            raise ValueError("AccuracyCurve needs set_labels(y) with one label per sample before each batch")
        if self.correct is None:
            self.correct = torch.zeros(T, dtype=torch.int64, device=self._labels.device)
            self.total = torch.zeros((), dtype=torch.int64, device=self._labels.device)
        if T != self.correct.shape[0]:
            raise ValueError(f"AccuracyCurve accumulates T={self.correct.shape[0]} steps; got T={T}")
        self._carry, self._seen = None, 0

    def on_output(self, out_chunk: torch.Tensor, t0: int) -> None:
        if t0 != self._seen:
            raise ValueError(f"output steps must arrive in order: expected t0={self._seen}, got {t0}")
        if self._carry is not None:   # prepend the running sum so chunking never changes the result
            out_chunk = torch.cat([self._carry.unsqueeze(0), out_chunk])
        cum = out_chunk.cumsum(0)                                     # (Tc(+1), B, classes)
        if self._carry is not None:
            cum = cum[1:]
        self._carry = cum[-1]
        hit = cum.argmax(-1) == self._labels.to(cum.device)            # (Tc, B)
        self.correct[t0:t0 + hit.shape[0]] += hit.sum(1).to(self.correct.device)
        for k, t in enumerate(self.record_steps):
            if t0 < t <= t0 + hit.shape[0]:
                self.images[k, self._index] = hit[t - 1 - t0].cpu().to(torch.uint8)
        self._seen += hit.shape[0]

    def on_batch_end(self) -> None:
        if self._seen != self.correct.shape[0]:
            raise RuntimeError(f"batch ended after {self._seen} of T={self.correct.shape[0]} steps")
        self.total += self._labels.shape[0]
        self._labels, self._carry = None, None

    def update(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch: ``out`` (T, B, classes) per-step outputs, ``y`` (B,) labels."""
        if out.dim() != 3 or y.shape != out.shape[1:2]:
            raise ValueError(f"expected out (T, B, classes) and y (B,); got {tuple(out.shape)}, {tuple(y.shape)}")
        self.set_labels(y)
        self.on_batch_start(None, out[0], out.shape[0])
        self.on_output(out, 0)
        self.on_batch_end()

    def curve(self) -> list[float]:
        """acc after t = 1..T steps, in [0, 1]."""
        if self.correct is None or int(self.total) == 0:
            raise RuntimeError("AccuracyCurve has seen no sample")
        return (self.correct.double() / self.total.double()).cpu().tolist()

    def per_image(self) -> dict:
        """The recorded per-image outcomes, packed (``unpack_outcomes`` reads them): after each recorded step
        and of the ANN, one bit per image in split order (1: correct)."""
        pack = lambda v: np.packbits(v.numpy().astype(bool)).tobytes().hex()
        return {"n": int(self.images.shape[1]), "steps": list(self.record_steps),
                "correct": {str(t): pack(self.images[k]) for k, t in enumerate(self.record_steps)},
                "ann": pack(self.ann_images)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"correct": self.correct, "total": self.total, "images": self.images, "ann_images": self.ann_images}

    def load_state_tensors(self, state: Mapping[str, torch.Tensor]) -> None:
        self.correct, self.total = state["correct"].clone(), state["total"].clone()
        if "images" in state and state["images"].shape == self.images.shape:
            self.images, self.ann_images = state["images"].clone(), state["ann_images"].clone()

    def all_reduce(self) -> "AccuracyCurve":
        """Sum the counts across ranks (torch.distributed, if initialized); each image belongs to one rank, so
        the per-image records add up too; returns self."""
        all_reduce_sum([self.correct, self.total])
        if self.record_steps and torch.distributed.is_available() and torch.distributed.is_initialized():
            dev = self.correct.device
            recs = [self.images.to(dev, torch.int32), self.ann_images.to(dev, torch.int32)]
            all_reduce_sum(recs)
            self.images, self.ann_images = recs[0].cpu().to(torch.uint8), recs[1].cpu().to(torch.uint8)
        return self


def unpack_outcomes(hexbits: str, n: int):
    """One packed per-image record of ``AccuracyCurve.per_image`` as a (n,) bool numpy array."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexbits), dtype=np.uint8))[:n].astype(bool)


def derive_sc_p(snn: Any, x: torch.Tensor, E: int, layers: Sequence[str] | None = None,
                chunk: int = 32) -> dict[str, float]:
    """Spike confidence ``p_l = 1 - q_l(E)`` (SPEC 2), measured on the batch ``x``.

    Runs the ANN and the SNN side by side for ``E`` steps with spike confidence switched off
    (``snn.sc.disabled()``: the measurement does not depend on p).
    ``layers``: default ``snn.sc_layers()``; pass any spiking layer names to measure others.
    """
    if isinstance(E, bool) or not isinstance(E, int) or E < 1:
        raise ValueError(f"E must be a positive integer, got {E!r}")
    names = snn.sc_layers() if layers is None else list(layers)
    if not names:
        raise ValueError("no spike-confidence layers: enable sc (sc.enabled) or pass layers=")
    stats = SpikeStats(layers=names)
    with snn.sc.disabled():
        simulate(snn, x, E, chunk=chunk, observers=(stats,))
    at_e = stats.at(E)
    return {n: 1.0 - at_e[n]["q"] for n in names}


# -- MACs and energy (paper Eq. 21-23) -----------------------------------------------------

def _lstm_macs(lstm: nn.LSTM, inp: Any) -> int:
    """Closed-form MACs of an LSTM call over its whole input: 4 gates x H x (input + H) per step."""
    if lstm.proj_size:
        raise ValueError("layer_macs does not count LSTMs with proj_size")
    if isinstance(inp, nn.utils.rnn.PackedSequence):
        rows = inp.data.shape[0]                       # sum of sequence lengths over the batch
    else:
        rows = inp.shape[:-1].numel()                  # (B, L) or (L, B), or (L,) unbatched
    dirs = 2 if lstm.bidirectional else 1
    h, total = lstm.hidden_size, 0
    for k in range(lstm.num_layers):
        fan_in = lstm.input_size if k == 0 else h * dirs
        total += dirs * 4 * h * (fan_in + h)
    return rows * total


def layer_macs(model: nn.Module, example_input: torch.Tensor | Sequence[int]) -> "OrderedDict[str, int]":
    """MACs per sample of each Conv/Linear (and LSTM) module, in execution order.

    Conv/Linear MACs are FlopCounterMode's FLOPs / 2 (``k_h*k_w*c_in*c_out*h_out*w_out/groups``,
    ``f_in*f_out``; bias and BN are not counted); LSTM MACs use the closed formula of
    ``_lstm_macs`` (FlopCounterMode does not see inside the fused LSTM op). ``example_input`` is a
    batch or a per-sample shape (then one zero sample in the parameters' dtype and device).
    """
    if not isinstance(example_input, torch.Tensor):
        p = next(model.parameters(), torch.zeros(()))
        example_input = torch.zeros(1, *example_input, dtype=p.dtype, device=p.device)
    batch = example_input.shape[0]
    names = {m: n for n, m in model.named_modules() if isinstance(m, (*MAC_MODULES, nn.LSTM))}
    macs: OrderedDict[str, int] = OrderedDict()
    counter = FlopCounterMode(display=False)
    start: dict[nn.Module, int] = {}

    def pre(mod: nn.Module, args: tuple) -> None:
        start[mod] = counter.get_total_flops()

    def post(mod: nn.Module, args: tuple, out: Any) -> None:
        n = _lstm_macs(mod, args[0]) if isinstance(mod, nn.LSTM) else (counter.get_total_flops() - start[mod]) // 2
        macs[names[mod]] = macs.get(names[mod], 0) + n

    handles = [h for m in names for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return OrderedDict((n, v // batch) for n, v in macs.items())


def spike_feeders(gm: fx.GraphModule, neurons: Iterable[nn.Module],
                  targets: Iterable[str]) -> dict[str, list[str] | None]:
    """For each module ``target`` of the graph: the neuron modules' targets feeding it.

    Walks backwards from each call of the module through every other node until it reaches
    neuron calls; ``None`` means some path reaches a graph input (the layer sees analog input).
    """
    neuron_ids = {id(m) for m in neurons}
    modules = dict(gm.named_modules())
    targets = set(targets)
    found: dict[str, list[str] | None] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in targets:
            continue
        prev = found.get(node.target, [])             # a module called twice merges its calls
        analog, feeders = prev is None, list(prev or [])
        stack, seen = list(node.all_input_nodes), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_module" and id(modules[n.target]) in neuron_ids:
                if n.target not in feeders:
                    feeders.append(n.target)
            elif n.op == "placeholder":
                analog = True
            else:
                stack.extend(n.all_input_nodes)
        found[node.target] = None if analog or not feeders else feeders
    missing = targets - set(found)
    if missing:
        raise KeyError(f"modules {sorted(missing)} are not called in the converted graph; "
                       f"modules called: {sorted(n.target for n in gm.graph.nodes if n.op == 'call_module')}")
    return found


def energy_ratio(op_ann_first: float, op_ann_total: float, op_snn_rest: float,
                 e_mac: float = 4.6, e_ac: float = 0.9) -> float:
    """Eq. 23: ``(e_mac*OP_ANN_1 + e_ac*sum_{l>=2} OP_SNN_l) / (e_mac*sum_l OP_ANN_l)``."""
    if op_ann_total <= 0:
        raise ValueError(f"op_ann_total must be > 0, got {op_ann_total}")
    return (e_mac * op_ann_first + e_ac * op_snn_rest) / (e_mac * op_ann_total)


def energy_report(snn: Any, macs: Mapping[str, int], mean_spike_count: Mapping[str, float],
                  e_mac: float = 4.6, e_ac: float = 0.9,
                  neurons: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Per-sample energy of the converted network against its ANN (Eq. 21-23), in pJ.

    A layer whose input is analog (fed by the graph input, e.g. the first conv or a static
    encoder) costs ``e_mac * OP_ANN_l``; a layer fed by spiking layers costs ``e_ac * OP_SNN_l``
    with ``OP_SNN_l = r * OP_ANN_l`` and ``r`` the mean spike count per neuron over T of its
    feeder (the ``neurons``-weighted mean when several feed it: residual add, concat).
    ``macs`` from ``layer_macs`` on the ANN, named as the modules of ``snn.graph_module``.
    """
    layers = snn.neuron_layers()
    neuron_name = {id(m): n for n, m in layers}
    target_name = {t: neuron_name[id(m)] for t, m in snn.graph_module.named_modules() if id(m) in neuron_name}
    fed = spike_feeders(snn.graph_module, [m for _, m in layers], macs)
    op_snn: dict[str, float] = {}
    fed_by: dict[str, list[str] | None] = {}
    for name, op in macs.items():
        feeders = None if fed[name] is None else [target_name[t] for t in fed[name]]
        fed_by[name] = feeders
        if feeders is None:
            op_snn[name] = float(op)
            continue
        missing = [f for f in feeders if f not in mean_spike_count]
        if missing:
            raise KeyError(f"no mean spike count for layers {missing} feeding {name!r}")
        if len(feeders) == 1:
            rate = float(mean_spike_count[feeders[0]])
        else:
            if neurons is None or any(f not in neurons for f in feeders):
                raise ValueError(f"{name!r} is fed by several spiking layers {feeders}: pass neurons=")
            rate = sum(neurons[f] * mean_spike_count[f] for f in feeders) / sum(neurons[f] for f in feeders)
        op_snn[name] = rate * op
    e_ann = e_mac * sum(macs.values())
    e_snn = sum((e_mac if fed_by[n] is None else e_ac) * v for n, v in op_snn.items())
    return {"op_ann": dict(macs), "op_snn": op_snn, "fed_by": fed_by,
            "e_ann_pj": e_ann, "e_snn_pj": e_snn, "ratio": e_snn / e_ann if e_ann > 0 else float("nan")}
