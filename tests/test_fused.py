"""The fused path of the engine (one compiled kernel per layer and step) against the eager in-place loop."""
from __future__ import annotations

import pytest
import torch

from msat.conversion import conversion_config
from msat.neurons import SCLayer, SpikingNeuron


def _run(fused: bool, dynamics: str, units: str, reset: str, gamma: int, sc_mode, extras: bool, dtype,
         compile: bool = False, consume: bool = True, keep_spikes: bool = True, static: bool = False):
    g = torch.Generator().manual_seed(0)
    T, B, C, E, p = 12, 3, 4, 5, 0.6
    theta = torch.tensor(1.7, dtype=dtype)
    z = torch.randn(T, B, C, 2, generator=g, dtype=dtype) * 2
    if static:
        z = z[:1].expand(T, B, C, 2).clone()
    v0 = torch.rand(C, 2, generator=g, dtype=dtype) * 0.4
    i_bias = (torch.rand(C, 1, generator=g, dtype=dtype) - 0.5) if extras else None
    mask = (torch.rand(B, C, 2, generator=g) < 0.6).to(dtype) if extras else None
    cfg = conversion_config({"neuron": {"units": units, "reset": reset, "gamma": gamma, "alpha": 0.3,
                                        "v_init": 0.25}}).neuron
    n = SpikingNeuron(cfg, "p", dynamics).to(dtype)
    n.fused_compile = compile
    n.set_theta(theta)
    n.set_v0(v0)
    n.set_input_bias(i_bias)
    n.mask = mask
    layer = SCLayer(p, E, sc_mode == "filtered", torch.Generator().manual_seed(3)) if sc_mode else None
    outs, spikes, t0 = [], [], 0
    for steps in (5, 1, 6):
        c = z[t0].clone() if static else z[t0:t0 + steps].reshape(steps * B, C, 2).clone()
        o, s = n.run_chunk(c, steps, B, static=static, keep_spikes=keep_spikes, consume=consume, sc=layer,
                           fused=fused)
        outs.append(o.view(steps, B, C, 2).clone())
        if keep_spikes:
            spikes.append(s.clone())
        t0 += steps
    return torch.cat(outs), (torch.cat(spikes) if keep_spikes else None), n.v.clone(), \
        (n.vsum.clone() if n.vsum is not None else None)


# each option at least once, with the other dynamics and units: the options are branches of one step function
# (``if_step``, ``msat_threshold``), which both paths call; what differs is its form (in place into buffers, or
# functional) and the loop around it
CASES = [("if", "normalized", "soft", 1, None, False), ("if", "raw", "hard", 1, "emitted", True),
         ("if", "normalized", "soft", 3, "filtered", True), ("if", "raw", "soft", 3, "emitted", False),
         ("msat", "normalized", "soft", 1, "filtered", True), ("msat", "raw", "soft", 3, "emitted", True),
         ("msat", "normalized", "hard", 1, None, False), ("msat", "raw", "hard", 1, "filtered", False)]


@pytest.mark.parametrize("dynamics,units,reset,gamma,sc_mode,extras", CASES)
def test_fused_step_equals_the_eager_loop(dynamics, units, reset, gamma, sc_mode, extras):
    """The fused per-step function (uncompiled here) gives the eager loop's spikes, outputs and state: both
    thresholds and units, soft/hard reset, burst gamma, SC (both resets), v_init, v0, an input bias and an SRP
    mask, in three chunks; and with the input buffer consumed or not, spikes kept or not, and a static input."""
    for consume, keep, static in ((True, True, False), (False, True, False), (True, False, False),
                                  (False, True, True)):
        want = _run(False, dynamics, units, reset, gamma, sc_mode, extras, torch.float64, consume=consume,
                    keep_spikes=keep, static=static)
        got = _run(True, dynamics, units, reset, gamma, sc_mode, extras, torch.float64, consume=consume,
                   keep_spikes=keep, static=static)
        for a, b in zip(got, want):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert (want[0] != 0).any()


@pytest.mark.parametrize("dynamics,sc_mode", [("if", "emitted"), ("msat", "filtered")])
def test_compiled_fused_step_equals_the_eager_loop(dynamics, sc_mode):
    """The same, compiled with torch.compile (Inductor's C++ kernels on CPU; Triton on CUDA), in fp32: the
    spikes and the state are identical, the outputs equal up to one rounding of th * scale."""
    want = _run(False, dynamics, "normalized", "soft", 1, sc_mode, True, torch.float32)
    got = _run(True, dynamics, "normalized", "soft", 1, sc_mode, True, torch.float32, compile=True)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- the engine's options

import torch.nn as nn  # noqa: E402

import msat  # noqa: E402
from msat.simulation import SimulationError  # noqa: E402


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                               nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.f(x)


class _Chunks(msat.Observer):
    def __init__(self):
        self.sizes, self.counts = [], {}

    def on_spikes(self, name, spikes, t0):
        self.sizes.append(spikes.shape[0])
        self.counts[name] = self.counts.get(name, 0) + spikes.sum()


def _snn(method: str = "msat_sc"):
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    return msat.convert(_Net().eval(), x, {"method": method}), x[:16]


def test_chunk_cap_bounds_the_chunk_and_changes_nothing():
    """A byte cap on the folded chunk (CPU default) gives bit-identical outputs and spike counts; the chunk
    really shrinks (the first chunk probes one step)."""
    snn, x = _snn()
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    free, capped = _Chunks(), _Chunks()
    a = msat.simulate(snn, x, 40, chunk=16, generator=g(), observers=(free,), chunk_bytes=0)
    per_step = 16 * 8 * 8 * 8 * 4                                   # the largest activation: (B, 8, 8, 8) fp32
    b = msat.simulate(snn, x, 40, chunk=16, generator=g(), observers=(capped,), chunk_bytes=3 * per_step)
    assert torch.equal(a, b)
    assert all(torch.equal(free.counts[k], capped.counts[k]) for k in free.counts)
    assert max(free.sizes) == 16 and max(capped.sizes) == 3 and capped.sizes[0] == 1
    with pytest.raises(SimulationError, match="chunk_bytes must be an integer >= 0"):
        msat.simulate(snn, x, 40, chunk_bytes=-1)


def test_engine_reuses_its_buffers_across_batches():
    """State and chunk buffers keep their storage across chunks and batches, a shorter last chunk included
    (chunks of 4, 4, 2: a chunk buffer only grows); they follow the activations' layout (channels-last, the
    default for 4-D inputs, or NCHW)."""
    snn, x = _snn("msat")
    obs = _Chunks()                                                 # observed: spikes go to a chunk buffer
    msat.simulate(snn, x, 10, chunk=4, observers=(obs,), chunk_bytes=0)
    layers = len(snn.neuron_layers())
    assert obs.sizes == [4] * layers + [4] * layers + [2] * layers
    n = snn.neuron_layers()[0][1]
    ptrs = {k: b.data_ptr() for k, b in n._bufs.items()}
    assert {"v", "vsum", "spikes"} <= set(ptrs)
    assert n._bufs["spikes"].shape[0] == 4 * x.shape[0]
    assert n._bufs["v"].is_contiguous(memory_format=torch.channels_last) and not n._bufs["v"].is_contiguous()
    msat.simulate(snn, x.flip(0), 10, chunk=4, observers=(obs,), chunk_bytes=0)
    assert {k: b.data_ptr() for k, b in n._bufs.items()} == ptrs and n.v is None   # reset, but the buffers stay
    nchw, _ = _snn("msat")
    msat.simulate(nchw, x, 10, chunk=4, channels_last=False)
    assert nchw.neuron_layers()[0][1]._bufs["v"].is_contiguous()


def test_channels_last_equals_nchw_up_to_rounding():
    """The default channels-last layout (4-D inputs) gives NCHW's outputs up to the convolutions' rounding and
    the same predictions; the network is laid out once, in place."""
    for method in ("if_max", "msat"):
        nchw, x = _snn(method)
        cl, _ = _snn(method)
        a = msat.simulate(nchw, x, 32, channels_last=False)
        b = msat.simulate(cl, x, 32)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        assert torch.equal(a.sum(0).argmax(-1), b.sum(0).argmax(-1))
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in cl.parameters() if p.dim() == 4)
        assert all(p.is_contiguous() for p in nchw.parameters() if p.dim() == 4)


def test_fused_engine_path_equals_the_eager_path():
    """simulate(fused=True) runs every fixed/MSAT layer through the fused step (uncompiled here, compiled on
    CUDA): outputs and spike counts equal the eager loop, SC included."""
    for method in ("if_max", "msat_sc", "burst", "opi"):
        snn, x = _snn(method)
        for _, m in snn.neuron_layers():
            m.fused_compile = False
        g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
        eager, fused = _Chunks(), _Chunks()
        a = msat.simulate(snn, x, 24, chunk=10, generator=g(), observers=(eager,))
        b = msat.simulate(snn, x, 24, chunk=10, generator=g(), observers=(fused,), fused=True)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        assert all(torch.equal(eager.counts[k], fused.counts[k]) for k in eager.counts), method


def test_bf16_keeps_the_state_in_fp32_and_agrees_with_fp32():
    """precision=bf16 runs the convolutions and linear layers under bf16 autocast; the membrane state and the
    returned output stay fp32, and the predictions agree with fp32."""
    snn, x = _snn("msat")
    x = torch.rand(128, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    a = msat.simulate(snn, x, 32)
    b = msat.simulate(snn, x, 32, precision="bf16")
    assert b.dtype == torch.float32
    assert all(m._bufs["v"].dtype == torch.float32 for _, m in snn.neuron_layers())
    agree = (a.sum(0).argmax(-1) == b.sum(0).argmax(-1)).float().mean()
    assert agree >= 0.95 and not torch.equal(a, b)                  # bf16 really ran, and agrees
    with pytest.raises(SimulationError, match="precision must be one of fp32, tf32, bf16"):
        msat.simulate(snn, x, 4, precision="fp16")
