"""Conversion methods: the registry, and each method against hand-computed values."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import msat
from msat.config import ConfigError
from msat.conversion import conversion_config
from msat.methods import get_method, list_methods, register_method
from msat.methods.base import Method
from msat.models import QCFS, apply_activation, build_model
from msat.utils import UserError

EXPECTED = ["if_max", "robust_norm", "vth_scaled", "opi", "burst", "msat", "msat_dtt", "msat_det", "msat_sc",
            "msat_sc_filtered", "snn_calib_light", "snn_calib_advanced", "qcfs", "spicalib", "srp", "cos"]


def test_registry_lists_every_method_once():
    assert sorted(list_methods()) == sorted(EXPECTED)
    assert list_methods("msat*")[:2] == ["msat", "msat_dtt"]
    for name in list_methods():
        cls = get_method(name)
        assert cls.name == name and cls.label and cls.citation and cls.dynamics in ("if", "msat", "signed")
        assert set(cls.ann) <= {"relu", "qcfs"}
    with pytest.raises(UserError, match="unknown method 'nope'; valid methods: if_max"):
        get_method("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_method(type("Again", (Method,), {"name": "msat", "label": "x"}))


class Chain(nn.Module):
    """x (B, 1) -> Linear(1, 2) -> act -> Linear(2, 1) -> act -> Linear(1, 1): every weight chosen by hand."""

    def __init__(self, w1=(0.9, 0.6), w2=(1.0, -1.5), act=nn.ReLU):
        super().__init__()
        self.l1, self.a1 = nn.Linear(1, 2, bias=False), act()
        self.l2, self.a2 = nn.Linear(2, 1, bias=False), act()
        self.out = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor(w1).view(2, 1))
            self.l2.weight.copy_(torch.tensor(w2).view(1, 2))
            self.out.weight.fill_(1.0)

    def forward(self, x):
        return self.out(self.a2(self.l2(self.a1(self.l1(x)))))


class Spikes(msat.Observer):
    def __init__(self):
        self.s = {}

    def on_spikes(self, name, spikes, t0):
        self.s.setdefault(name, []).extend(spikes.flatten(1).tolist())


def _unit_thresholds(snn) -> None:
    for _, m in snn.neuron_layers():
        m.set_theta(torch.tensor(1.0))


# ----------------------------------------------------------------------------- QCFS

def test_qcfs_activation_by_hand():
    """h = lam * floor(clip(x/lam, 0, 1) * L + 1/2) / L with a straight-through floor (the official code)."""
    q = QCFS(L=4, lam=2.0)
    x = torch.tensor([-1.0, 0.3, 0.76, 1.3, 5.0], requires_grad=True)
    h = q(x)
    assert h.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    h.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]                # identity floor, clamp band [0, lam]
    # dh/dlam = q - x/lam inside the band, 1 clipped high, 0 clipped low
    want = 0 + (0.25 - 0.15) + (0.5 - 0.38) + (0.75 - 0.65) + 1.0
    assert float(q.lam.grad) == pytest.approx(want, abs=1e-6)
    assert QCFS().L == 4 and float(QCFS().lam) == 8.0


def test_qcfs_model_surgery_and_conversion_by_hand():
    m = apply_activation(Chain(), "qcfs", L=4)
    assert isinstance(m.a1, QCFS) and isinstance(m.a2, QCFS)
    with torch.no_grad():
        m.a1.lam.fill_(2.0)
        m.a2.lam.fill_(1.5)
    snn = msat.convert(m.eval(), torch.ones(3, 1), {"method": "qcfs"})
    assert [float(t) for t in snn.scales.values()] == [2.0, 1.5]     # theta_l = lambda_l
    assert snn.ann == "qcfs" and snn.cfg.neuron.v_init == 0.5
    # layer 1, theta 2, V(-1) = 1: neuron a (z = .9): 1.9 | 2.8 fire .8 | 1.7 | 2.6 fire .6
    rec = Spikes()
    msat.simulate(snn, torch.ones(1, 1), 4, observers=(rec,))
    assert [s[0] for s in rec.s["a1"]] == [0, 1, 0, 1]
    assert [s[1] for s in rec.s["a1"]] == [0, 1, 0, 0]                # b (z = .6): 1.6 | 2.2 f .2 | .8 | 1.4
    assert torch.equal(snn.ann_forward(torch.ones(2, 1)), m(torch.ones(2, 1)))   # ANN mode is QCFS
    vgg = build_model({"name": "vgg16", "act": "qcfs"}, 10)[0]
    assert not any(isinstance(x, nn.MaxPool2d) for x in vgg.modules())      # max pools become average pools
    assert sum(isinstance(x, QCFS) for x in vgg.modules()) == 13


def test_qcfs_needs_a_qcfs_ann_and_relu_methods_refuse_it():
    relu = Chain().eval()
    with pytest.raises(msat.ConversionError, match="method 'qcfs' converts a QCFS ANN; this model is a ReLU ANN"):
        msat.convert(relu, torch.ones(2, 1), {"method": "qcfs"})
    q = apply_activation(Chain(), "qcfs").eval()
    with pytest.raises(msat.ConversionError, match="method 'if_max' converts a ReLU ANN; this model is a QCFS ANN"):
        msat.convert(q, torch.ones(2, 1), {"method": "if_max"})
    for name in ("msat", "srp", "cos"):                                # these convert either ANN
        assert msat.convert(q, torch.ones(2, 1), {"method": name}).ann == "qcfs"

    class Functional(nn.Module):
        def forward(self, x):
            return torch.relu(x)

    with pytest.raises(UserError, match="calls ReLU or max pooling as functions"):
        apply_activation(nn.Sequential(nn.ReLU(), Functional()), "qcfs")


# ----------------------------------------------------------------------------- SRP

def test_srp_mask_from_the_residual_potential_by_hand():
    """tau = 2 steps from V = theta/2 (theta = 1), then the mask V(tau) > 1e-3, then T masked steps.

    layer 1 (z = .9, .6):  a: 1.4 f .4 | 1.3 f .3 -> V(2) = .3, kept;  b: 1.1 f .1 | .7 -> V(2) = .7, kept
    layer 2 (z = s_a - 1.5 s_b): t0: .5 - .5 = 0 | t1: 0 + 1 = 1 fire -> V(2) = 0 <= 1e-3: masked
    Main run (reset to theta/2): c would fire at t1 exactly as in the pre-simulation, but it is masked.
    """
    model = Chain().eval()
    x = torch.ones(1, 1)
    srp = msat.convert(model, x, {"method": {"name": "srp", "tau": 2}})
    opi = msat.convert(model, x, {"method": "opi"})                  # the same neurons, no mask
    for snn in (srp, opi):
        _unit_thresholds(snn)
    assert srp.method.presim_steps() == 2 and srp.cost.presim_steps == 2
    srp.method.presimulate(srp, x, chunk=8)
    masks = {n: m.mask.flatten().tolist() for n, m in srp.neuron_layers()}
    assert masks == {"a1": [1.0, 1.0], "a2": [0.0]}
    rec_s, rec_o = Spikes(), Spikes()
    out_srp = msat.simulate(srp, x, 3, observers=(rec_s,))
    out_opi = msat.simulate(opi, x, 3, observers=(rec_o,))
    assert rec_o.s["a2"] == [[0.0], [1.0], [0.0]] and rec_s.s["a2"] == [[0.0], [0.0], [0.0]]
    assert rec_s.s["a1"] == rec_o.s["a1"] == [[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    assert out_srp.flatten().tolist() == [0.0, 0.0, 0.0] and out_opi.flatten().tolist() == [0.0, 1.0, 0.0]
    assert all(m.mask is None for _, m in srp.neuron_layers())       # masks live for one batch
    with pytest.raises(ConfigError, match="method.tau must be >= 1"):
        conversion_config({"method": {"name": "srp", "tau": 0}})


# ----------------------------------------------------------------------------- SpiCalib

def _signed(z: list[float], allowance: int, debt: str) -> list[float]:
    cfg = conversion_config({}).neuron
    n = msat.neurons.SpikingNeuron(cfg, "s", "signed", allowance=allowance, debt=debt).double()
    n.set_theta(torch.tensor(1.0, dtype=torch.float64))
    out, _ = n.run_chunk(torch.tensor(z, dtype=torch.float64).view(-1, 1), len(z), 1, keep_spikes=True)
    return out.flatten().tolist()


def test_spicalib_negative_spikes_by_hand():
    """A = 2, theta = 1, spikes at t = 0, 1 (mean interval (1 + 0)/2 = 0.5): silent for t - t_last > 2.5
    at t = 4, 5 -> two negative spikes, which bring the net count back to 0; then nothing."""
    z = [1.0, 1.0, 0, 0, 0, 0, 0, 0]
    assert _signed(z, 2, "net") == [1, 1, 0, 0, -1, -1, 0, 0]
    assert _signed(z, 2, "braincog") == [1, 1, 0, 0, -1, -1, 0, 0]
    assert _signed(z, 0, "net") == [1, 1, 0, 0, 0, 0, 0, 0]                # A = 0: off, as BrainCog's SpiCalib(0)
    # a late starter: silent for 6 steps, then fires every step. ``net``: no debt, it fires at once.
    late = [0.0] * 6 + [1.0] * 3
    assert _signed(late, 2, "net") == [0] * 6 + [1, 1, 1]
    # ``braincog``: -1 at t = 3, 4, 5 (t - 0 > 0 + 2) drive the running sum to -3; the outputs stay 0 while it
    # is <= -1, so the first two spikes are muted (sum -2, -1), the third passes (sum 0)
    assert _signed(late, 2, "braincog") == [0] * 6 + [0, 0, 1]


def test_spicalib_defaults_labels_and_signed_statistics():
    """BrainCog's rule by default; A = T // 2 when not given (this project's choice: BrainCog's default 0 is off);
    every label names its rule."""
    ccfg = conversion_config({"method": "spicalib"}, T=64)
    assert (ccfg.method.allowance, ccfg.method.debt, ccfg.calib.percentile) == (32, "braincog", 0.9995)
    with pytest.raises(ConfigError, match="defaults to T // 2"):
        conversion_config({"method": "spicalib"})
    with pytest.raises(ConfigError, match="valid values: braincog, net"):
        conversion_config({"method": {"name": "spicalib", "debt": "none", "allowance": 3}})
    for debt, label in (("braincog", "SpiCalib (A=32, BrainCog's rule)"),
                        ("net", "SpiCalib (A=32, net rule, our variant)")):
        cfg = conversion_config({"method": {"name": "spicalib", "debt": debt}}, T=64)
        assert get_method("spicalib")(cfg).describe() == label
    from msat.measure import SpikeStats

    a = torch.tensor([[1.0, -1.0]])
    signed = torch.tensor([[[1.0, 0.0]], [[-1.0, 1.0]], [[0.0, -1.0]]])     # (T=3, B=1, 2)
    s1, s2 = SpikeStats(), SpikeStats()
    for st, sp in ((s1, signed), (s2, signed.abs())):
        st.begin_batch({"x": a}, 3)
        st.on_spikes("x", sp, 0)
        st.on_batch_end()
    assert s1.curves() == s2.curves() and s1.mean_spike_count() == {"x": 2.0}    # |s| counts


# ----------------------------------------------------------------------------- SNN Calibration

def test_mmse_threshold_by_hand():
    """a = seven 1s and one 4, T = 2: theta = 4 codes the 1s as 0 (MSE 7/8); theta = 2 codes them exactly and
    the 4 as 2 (MSE 4/8); every other candidate is worse, so the search picks max * (1 - 0.50)."""
    from msat.methods.snn_calib import mmse_threshold

    a = torch.tensor([1.0] * 7 + [4.0]).view(8, 1)
    assert float(mmse_threshold(a, T=2)) == pytest.approx(2.0)
    per = mmse_threshold(torch.cat([a, a / 2], 1), T=2, per_channel=True)      # (C,) for (B, C) features
    assert per.flatten().tolist() == pytest.approx([2.0, 1.0])


def _one_layer() -> nn.Module:
    m = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        m[0].weight.fill_(0.3)
        m[2].weight.fill_(1.0)
    return m.eval()


@pytest.mark.parametrize("pipeline", ["light", "advanced"])
def test_snn_calibration_by_hand(pipeline):
    """ANN activations a = (.3, .2), calib_T = 4. Thresholds: max * (1 - .12) = .264 codes them as (.264, .198),
    the least squared error. Shift theta/(2T) = .033. SNN (4 steps): z = .333 fires 4 times, z = .233 three times:
    mean output (.264 + .198) / 2 = .231 against the ANN's .25. light: the input current gains .25 - .231 = .019;
    advanced: V(-1) = (.25 - .231) * 4 = .076 (in activation units)."""
    x = torch.tensor([[1.0], [2.0 / 3.0]])
    snn = msat.convert(_one_layer(), x, {"method": {"name": f"snn_calib_{pipeline}", "calib_T": 4}})
    (name, n), = snn.neuron_layers()
    assert float(n.theta) == pytest.approx(0.264, abs=1e-6)
    if pipeline == "light":
        assert float(n.i_bias.flatten()[0]) == pytest.approx(0.033 + 0.019, abs=1e-6) and n.v0 is None
    else:
        assert float(n.i_bias) == pytest.approx(0.033, abs=1e-6)
        assert float(n.v0.flatten()[0]) * 0.264 == pytest.approx(0.076, abs=1e-6)
    assert (snn.cost.ann_forwards, snn.cost.sim_steps) == (2, 4)
    assert snn.method.describe() == f"SNN Calibration, {pipeline} (calib. T=4, shared calibration batch)"
    assert conversion_config({"method": "snn_calib_light"}, T=32).method.calib_T == 32     # default: the run's T
    with pytest.raises(ConfigError, match="calib_T defaults to the run's T"):
        conversion_config({"method": "snn_calib_light"})


@pytest.mark.parametrize("pipeline", ["light", "advanced"])
def test_snn_calibration_official_protocol_by_hand(pipeline):
    """protocol=official: the thresholds from the first 7 batches (all x of the test above: theta = .264), the
    corrections on the 8th, fresh batch y = (1, 1): ANN a = (.3, .3); z = .3 + .033 fires at all 4 steps, mean
    output .264, so light adds .3 - .264 = .036 to the input current (.033 + .036), advanced sets
    V(-1) = .036 * 4 = .144. The shared protocol corrects on the first batch instead (the test above). The
    protocol fixes the calibration data of convert_eval (7 + 1 augmented training batches of 128, shuffled)."""
    x, y = torch.tensor([[1.0], [2.0 / 3.0]]), torch.ones(2, 1)
    cfg = {"method": {"name": f"snn_calib_{pipeline}", "calib_T": 4, "protocol": "official"}}
    snn = msat.convert(_one_layer(), [x] * 7 + [y], cfg)
    (name, n), = snn.neuron_layers()
    assert float(n.theta) == pytest.approx(0.264, abs=1e-6)
    if pipeline == "light":
        assert float(n.i_bias.flatten()[0]) == pytest.approx(0.033 + 0.036, abs=1e-6)
    else:
        assert float(n.v0.flatten()[0]) * 0.264 == pytest.approx(0.144, abs=1e-6)
    assert (snn.cost.ann_forwards, snn.cost.sim_steps) == (8, 4)
    assert "official protocol: 7 augmented training batches of 2, corrections on a fresh one" in snn.method.describe()
    with pytest.raises(msat.ConversionError, match="needs at least 2 calibration batches"):
        msat.convert(_one_layer(), x, cfg)                    # one batch: no fresh one for the corrections
    calib = conversion_config(cfg).calib
    assert (calib.batches, calib.batch_size, calib.transform, calib.shuffle) == (8, 128, "train", True)
    shared = conversion_config({**cfg, "method": {**cfg["method"], "protocol": "shared"}, "calib": {"batches": 2}})
    assert (shared.calib.batches, shared.calib.batch_size, shared.calib.transform) == (2, 512, "test")
    with pytest.raises(ConfigError, match="protocol"):
        conversion_config({"method": {"name": "snn_calib_light", "calib_T": 4, "protocol": "paper"}})


def test_official_protocol_rows_run_on_their_seeds():
    """compare-methods: the official protocol's row runs on method.seeds run seeds (seed= 0..4), the shared
    protocol's on one; a profile may cap the run seeds."""
    import experiments.compare_methods as cm

    keys = [r for r in cm.rows(256) if r.method == "snn_calib_light" and ("method.protocol", "official") in r.overrides]
    assert [r.run_seed for r in keys] == [0, 1, 2, 3, 4] and len({r.key for r in keys}) == 5
    assert "seed: 3" in cm.row_config(keys[3], Path("x.pt")) and "seed:" not in cm.row_config(keys[0], Path("x.pt"))
    capped = cm.rows(64, cm.Profile(variants="first", max_run_seeds=2))
    assert [r.run_seed for r in capped if r.method == "snn_calib_advanced"] == [0, 0, 1]
