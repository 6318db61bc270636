"""Neuron dynamics against hand-computed sequences (plain Python math); the step functions' two forms."""
from __future__ import annotations

import math

import pytest
import torch

from msat.conversion import conversion_config
from msat.neurons import (SCLayer, SignedState, SpikingNeuron, if_step, msat_det, msat_threshold, reset_net,
                          signed_step)


def make(theta: float = 1.0, threshold: str = "fixed", **neuron) -> SpikingNeuron:
    """One neuron; ``threshold`` picks the dynamics (fixed: IF, msat, signed)."""
    cfg = conversion_config({"neuron": neuron}).neuron
    n = SpikingNeuron(cfg, "test", {"fixed": "if"}.get(threshold, threshold))
    n.set_theta(torch.tensor(theta, dtype=torch.float64))
    return n


def run(n: SpikingNeuron, z: list[float], chunk: int = 100, sc: SCLayer | None = None) -> tuple[list[float], list[float]]:
    """Feed one neuron the currents ``z`` (one per step); returns (outputs, spike counts)."""
    zt = torch.tensor(z, dtype=torch.float64).view(-1, 1)     # (T*B, 1) with B = 1
    n.double()
    outs, spikes = [], []
    for t0 in range(0, len(z), chunk):
        c = zt[t0:t0 + chunk]
        o, s = n.run_chunk(c, c.shape[0], 1, keep_spikes=True, sc=sc)
        outs += o.flatten().tolist()
        spikes += s.flatten().tolist()
    return outs, spikes


# ----------------------------------------------------------------------------- fixed threshold

def test_fixed_soft_reset_by_hand():
    # V: .75 | 1.5 -> fire, .5 | 1.25 -> fire, .25 | 1.0 -> fire, 0 | .75 | 1.5 -> fire, .5
    out, s = run(make(1.0), [0.75] * 6)
    assert s == [0, 1, 1, 1, 0, 1]
    assert out == [0, 1, 1, 1, 0, 1]


def test_fixed_hard_reset_by_hand():
    # V: .75 | 1.5 -> fire, 0 | .75 | 1.5 -> fire, 0 | .75 | 1.5 -> fire
    _, s = run(make(1.0, reset="hard"), [0.75] * 6)
    assert s == [0, 1, 0, 1, 0, 1]


def test_fixed_k_factor_and_raw_units():
    # raw units, theta = 2, k = 0.5: th = 1; z = 0.75 -> same spikes as above, o = s * 1
    out, s = run(make(2.0, units="raw", k=0.5), [0.75] * 6)
    assert s == [0, 1, 1, 1, 0, 1]
    assert out == [0, 1, 1, 1, 0, 1]


def test_normalized_units_scale_input_and_output():
    # theta = 4: the neuron sees z / 4 = .75 and outputs s * 1 * 4
    out, s = run(make(4.0), [3.0] * 6)
    assert s == [0, 1, 1, 1, 0, 1]
    assert out == [0, 4, 4, 4, 0, 4]


def test_burst_gamma():
    # gamma = 3, z = 2.5: V_pre 2.5 -> s 2, V .5 | 3.0 -> 3, 0 | 2.5 -> 2, .5 | 3.0 -> 3 | 2.5 -> 2
    _, s = run(make(1.0, gamma=3), [2.5] * 5)
    assert s == [2, 3, 2, 3, 2]
    # clamp: z = 5: V_pre 5 -> 3, V 2 | 7 -> 3, 4 | 9 -> 3, 6 | 11 -> 3, 8 | 13 -> 3
    _, s = run(make(1.0, gamma=3), [5.0] * 5)
    assert s == [3, 3, 3, 3, 3]


def test_v_init_and_negative_input():
    # v_init = .5: V(-1) = .5; z = [.25, .25, -1, .5, .5]: V_pre .75 | 1.0 fire -> 0 | -1 | -.5 | 0
    _, s = run(make(1.0, v_init=0.5), [0.25, 0.25, -1.0, 0.5, 0.5])
    assert s == [0, 1, 0, 0, 0]


# ----------------------------------------------------------------------------- MSAT

def msat_reference(z: list[float], theta: float, use_dtt: bool, use_det: bool, alpha: float = 0.03,
                   k_a: float = 1.0, k_i: float = 1.0, C: float = 5.0, tau_mp: float = 1.0,
                   tau_rd: float = 1.0, normalized: bool = True) -> tuple[list[float], list[float]]:
    """SPEC 2 written out with the math module, one neuron, soft reset, gamma 1."""
    th_l = 1.0 if normalized else theta
    v, hist, outs, spikes = 0.0, [], [], []
    for t, zt in enumerate(z):
        zn = zt / theta if normalized else zt
        if t == 0:
            th = th_l
        else:
            d = v - sum(hist) / len(hist)
            x = 0.0
            if use_dtt:
                x += tau_mp * (alpha * d - th_l + k_a * math.log1p(math.exp(d / k_i)))
            if use_det:
                x += tau_rd * math.exp(-zn / C)
            th = th_l / (1.0 + math.exp(-x))
        v += zn
        s = float(min(max(math.floor(v / th), 0), 1))
        v -= th * s
        hist.append(v)
        spikes.append(s)
        outs.append(s * th * (theta if normalized else 1.0))
    return outs, spikes


Z = [0.9, 0.2, 0.7, -0.3, 1.3, 0.1, 0.6, 0.8]


@pytest.mark.parametrize("use_dtt,use_det", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("units", ["normalized", "raw"])
def test_msat_by_hand(use_dtt, use_det, units):
    theta = 2.0
    z = [2 * v for v in Z]
    hp = dict(alpha=0.3, k_a=1.0, k_i=0.5, C=5.0, tau_mp=0.5, tau_rd=0.5)
    n = make(theta, threshold="msat", use_dtt=use_dtt, use_det=use_det, units=units, **hp)
    out, s = run(n, z, chunk=3)
    ref_out, ref_s = msat_reference(z, theta, use_dtt, use_det, normalized=units == "normalized", **hp)
    assert s == ref_s
    assert out == pytest.approx(ref_out, rel=1e-12, abs=1e-12)
    assert sum(s) >= 3                                   # the sequence really exercises firing


def test_msat_first_steps_literal():
    # normalized, DTT + DET, defaults (alpha .03, C 5): t0 th = 1, z = 1.2 -> fire, V = .2;
    # t1: d = 0, DTT = -1 + ln 2, DET = exp(-0.3/5); th = sigmoid(DTT + DET) = 0.6536 > V_pre = .5
    n = make(1.0, threshold="msat")
    out, s = run(n, [1.2, 0.3])
    th1 = 1 / (1 + math.exp(-(-1 + math.log(2) + math.exp(-0.06))))
    assert s[0] == 1 and out[0] == 1.0
    assert th1 == pytest.approx(0.6536, abs=1e-4)
    assert s[1] == (1.0 if 0.5 >= th1 else 0.0) == 0.0
    assert out[1] == 0.0


def test_msat_differs_between_units():
    z = [2 * v for v in Z]
    out_n, _ = run(make(2.0, threshold="msat"), z)
    out_r, _ = run(make(2.0, threshold="msat", units="raw"), z)
    assert out_n != out_r


def test_msat_threshold_no_overflow():
    hp = conversion_config({"method": "msat"}).neuron
    for z, v in [(-1e30, 0.0), (1e30, 1e30), (-3e38, -3e38), (0.0, 3e38), (-1e4, -1e4)]:
        z, v = torch.tensor([z]), torch.tensor([v])
        for gamma in (1, 3):                               # Vbar = -v: d = 2v
            th = msat_threshold(v, -v, torch.tensor(1.0), msat_det(z, 1.0, hp, 80.0), 1.0, hp, gamma)
            assert torch.isfinite(th).all() and (th >= 0).all()
            assert (th > 0).all() or gamma == 1             # burst: kept above 0 (V/th must not be 0/0)
    n = make(1.0, threshold="msat").float()
    z = torch.tensor([[-1e6], [1e6], [-1e6], [-1e6], [3.0]])
    o, s = n.run_chunk(z, 5, 1, keep_spikes=True)
    assert torch.isfinite(o).all() and torch.isfinite(n.v).all() and torch.isfinite(n.vsum).all()


# ----------------------------------------------------------------------------- spike confidence

def sc(p: float, reset: str, E: int = 3, seed: int = 0) -> SCLayer:
    """The SC settings the engine hands one layer, with a seeded generator."""
    return SCLayer(p, E, reset == "filtered", torch.Generator().manual_seed(seed))


def test_sc_p1_is_identity():
    for reset in ("emitted", "filtered"):
        assert run(make(1.0), [0.75] * 6, sc=sc(1.0, reset)) == run(make(1.0), [0.75] * 6)


def test_sc_p0_emitted_drops_charge():
    # every spike before E = 3 is dropped but still resets: V as without SC, output 0 for t < 3
    n = make(1.0)
    out, s = run(n, [0.75] * 6, sc=sc(0.0, "emitted"))
    assert s == [0, 0, 0, 1, 0, 1]
    assert n.v.item() == 0.5


def test_sc_p0_filtered_keeps_charge():
    # filtered: dropped spikes do not reset: V_pre .75, 1.5, 2.25 (no reset) | 3.0 -> fire, 2 |
    # 2.75 -> fire, 1.75 | 2.5 -> fire, 1.5
    n = make(1.0)
    out, s = run(n, [0.75] * 6, sc=sc(0.0, "filtered"))
    assert s == [0, 0, 0, 1, 1, 1]
    assert n.v.item() == 1.5


@pytest.mark.parametrize("reset", ["emitted", "filtered"])
def test_sc_with_generator_by_hand(reset):
    p, E, z = 0.5, 6, [0.75, 0.75, 0.75, 0.9, 0.75, 0.8, 0.75, 0.75]
    draws = torch.rand(E, generator=torch.Generator().manual_seed(7), dtype=torch.float64).tolist()
    _, s = run(make(1.0), z, chunk=3, sc=sc(p, reset, E, seed=7))
    v, ref = 0.0, []
    for t, zt in enumerate(z):
        v += zt
        fired = 1.0 if v >= 1.0 else 0.0
        kept = fired * (1.0 if t >= E or draws[t] < p else 0.0)
        v -= kept if reset == "filtered" else fired
        ref.append(kept)
    assert s == ref


def test_sc_emitted_differs_from_filtered():
    # filtered keeps the charge of dropped spikes, so it fires more once SC stops (t >= E)
    z = [0.75] * 10
    outs = [run(make(1.0), z, sc=sc(0.5, reset, 5))[1] for reset in ("emitted", "filtered")]
    assert outs[0][:5] == outs[1][:5]            # the same draws drop the same early spikes here
    assert sum(outs[1][5:]) > sum(outs[0][5:])


# ----------------------------------------------------------------------------- per-channel scales, SpiCalib with SC

@pytest.mark.parametrize("dynamics", ["if", "msat", "signed"])
@pytest.mark.parametrize("units", ["normalized", "raw"])
@pytest.mark.parametrize("reset,gamma", [("soft", 1), ("hard", 1), ("soft", 3)])
def test_per_channel_scales_equal_one_neuron_per_channel(dynamics, units, reset, gamma):
    """A layer with one scale per channel (a zero one included: it never fires), a per-element v0 and a per-channel
    input bias, run in three chunks, gives each channel what a layer with that channel's scalar settings gives."""
    g = torch.Generator().manual_seed(0)
    T, B, C = 12, 3, 4
    theta = torch.tensor([1.3, 0.0, 2.1, 0.7], dtype=torch.float64).view(C, 1)
    z = torch.randn(T, B, C, 2, generator=g, dtype=torch.float64) * 2
    v0 = torch.rand(C, 2, generator=g, dtype=torch.float64) * 0.4
    i_bias = torch.rand(C, 1, generator=g, dtype=torch.float64) - 0.5
    cfg = conversion_config({"neuron": {"units": units, "reset": reset, "gamma": gamma, "alpha": 0.3,
                                        "v_init": 0.25}}).neuron

    def layer(th, v0_, bias, zz):
        n = SpikingNeuron(cfg, "p", dynamics, allowance=2.0).double()
        n.set_theta(th)
        n.set_v0(v0_)
        n.set_input_bias(bias)
        outs, t0 = [], 0
        for steps in (5, 1, 6):
            o, _ = n.run_chunk(zz[t0:t0 + steps].reshape(steps * B, *zz.shape[2:]).clone(), steps, B)
            outs.append(o.view(steps, B, *zz.shape[2:]).clone())
            t0 += steps
        return torch.cat(outs), n.v
    got, v = layer(theta, v0, i_bias, z)
    for c in range(C):
        want, v_c = layer(theta[c, 0], v0[c:c + 1], i_bias[c:c + 1], z[:, :, c:c + 1])
        torch.testing.assert_close(got[:, :, c:c + 1], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v[:, c:c + 1], v_c, rtol=1e-12, atol=1e-12)
    assert (got[:, :, 1] == 0).all() and (got != 0).any()


@pytest.mark.parametrize("reset", ["emitted", "filtered"])
def test_signed_sees_the_spikes_that_reset(reset):
    """SpiCalib's filter runs after the reset on the spikes that reset the neuron; an ``emitted`` SC drop applies
    to its output afterwards. A = 1, SC p = 0 for t < 2, z = 1, 1, 0, ...:

    emitted: spikes at t = 0, 1 reset the neuron and count for the filter (net 2, isi .5, t_last 1) but are
    dropped; t - t_last > 1.5 at t = 3, 4 gives -1, -1 (net 2 -> 0), then ``net`` blocks.
    filtered: the dropped spikes do not reset (V = 1, 2); t = 2: V = 2 fires (the filter: isi 2, t_last 2,
    net 1), V = 1; t = 3: V = 1 fires (isi 1.5, t_last 3, net 2), V = 0; t - t_last > 2.5 at t = 6, 7: -1, -1."""
    n = SpikingNeuron(conversion_config({}).neuron, "s", "signed", allowance=1.0).double()
    n.set_theta(torch.tensor(1.0, dtype=torch.float64))
    out, _ = run(n, [1.0, 1.0] + [0.0] * 7, chunk=4, sc=sc(0.0, reset, E=2))
    assert out == ([0, 0, 0, -1, -1, 0, 0, 0, 0] if reset == "emitted" else [0, 0, 1, 1, 0, 0, -1, -1, 0])


def test_pure_signed_step_by_hand():
    """SpiCalib's filter on a hand-made spike train, A = 1 (neg when t - t_last > isi + 1), both debt rules.

    Neuron 0 fires at t = 1 (isi = 1, t_last = 1): t = 2, 3: 1, 2 > 2? no; t = 4: 3 > 2 -> -1 (net 1 -> 0);
    t = 5: 4 > 2, but under ``net`` a zero net blocks it, under ``braincog`` net -> -1 and the output is muted.
    Neuron 1 first fires at t = 4: ``net`` lets it (silence builds no debt); ``braincog`` counts -1 at
    t = 2 and 3 (t > 0 + 1, net -1, -2: muted), so its spike leaves net = -1: muted too."""
    spikes = [[0, 0], [1, 0], [0, 0], [0, 0], [0, 1], [0, 0]]
    for debt, want in (("net", [[0, 0], [1, 0], [0, 0], [0, 0], [-1, 1], [0, 0]]),
                       ("braincog", [[0, 0], [1, 0], [0, 0], [0, 0], [-1, 0], [0, 0]])):
        st = SignedState.zeros(torch.zeros(2, dtype=torch.float64))
        got = []
        for t, s in enumerate(spikes):
            out, st = signed_step(torch.tensor(s, dtype=torch.float64), st, t, 1.0, debt)
            got.append(out.tolist())
        assert got == want, debt
        assert st.net.tolist() == ([0, 1] if debt == "net" else [-1, -1])


def test_step_functions_functional_and_buffer_forms():
    """Without buffers the step functions mutate nothing (the fused step); with them (the eager engine) they write
    into the buffers and update V in place. The two forms agree (gamma 1: exactly; MSAT's threshold up to the one
    rounding its eager form saves)."""
    g = torch.Generator().manual_seed(1)
    z, v, vsum = (torch.randn(64, generator=g, dtype=torch.float64) for _ in range(3))
    keep, mask = (torch.rand(64, generator=g, dtype=torch.float64) < 0.5).double(), (torch.rand(64, generator=g) < .7)
    hp = conversion_config({"method": "msat", "neuron": {"alpha": 0.3, "k_i": 0.5, "tau_mp": 0.5}}).neuron
    z0, v0, vsum0 = z.clone(), v.clone(), vsum.clone()
    e = msat_det(z, 1.3, hp, 80.0)
    th = msat_threshold(v, vsum, torch.tensor(0.25, dtype=torch.float64), e, 1.3, hp)
    for hard, filtered in ((False, False), (True, True)):
        s, v_next = if_step(z, v, th, 1, hard, keep, filtered, mask.double())
        assert torch.equal(z, z0) and torch.equal(v, v0) and torch.equal(vsum, vsum0)
        bufs = {k: torch.full_like(v, float("nan")) for k in ("e", "d", "x", "th", "s")}
        th_b = msat_threshold(v, vsum, 0.25, msat_det(z, 1.3, hp, 80.0, bufs["e"]), 1.3, hp, 1, bufs["d"], bufs["x"],
                              bufs["th"])
        assert th_b.data_ptr() == bufs["th"].data_ptr()
        torch.testing.assert_close(th_b, th, rtol=1e-15, atol=1e-15)
        v_b = v.clone()
        s_b, v_b2 = if_step(z, v_b, th, 1, hard, keep, filtered, mask.double(), s=bufs["s"])
        assert s_b.data_ptr() == bufs["s"].data_ptr() and v_b2.data_ptr() == v_b.data_ptr()
        assert torch.equal(s_b, s) and torch.equal(v_b, v_next)
        assert (s[~mask] == 0).all() and (s != 0).any()


def test_reset_net_clears_state():
    n = make(1.0)
    run(n, [0.75] * 3)
    assert n.t == 3 and n.v is not None
    reset_net(torch.nn.Sequential(n))
    assert n.t == 0 and n.v is None


def test_ann_mode_is_relu():
    n = make(3.0, threshold="msat")
    x = torch.randn(5, 4)
    assert torch.equal(n(x), torch.relu(x))
