"""COS (``method=cos``): the offset rule by hand, a three-layer network by hand, and the whole method against a
port of the official code (hzc1208/ANN2SNN_COS ``modules.py``: spikingjelly's ``IFNode`` and ``MPLayer``)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import msat
from msat.config import ConfigError
from msat.conversion import conversion_config
from msat.methods.cos import cos_start
from msat.models import QCFS, apply_activation

F64 = torch.float64


def _start(*u: list[float]) -> list[float]:
    """cos_start of one or more neurons; u[i] is neuron i's input over the rho steps (units of theta)."""
    return cos_start(torch.tensor(u, dtype=F64).T).tolist()


def test_offset_rule_by_hand():
    """From V = 1/2, threshold 1, soft reset (V_pre per step | V(rho)), margin 1e-3:

    - (.6, .3):       1.1 f | .4           V = .4: no offset, 1/2
    - (1.2, -1):      1.7 f | -.3          V < 0 after a spike: down by max(1, 1.7 - .999) = 1      -> -.5
    - (2, -2.5):      2.5 f | -1           down by max(1, 2.5 - .999) = 1.501                       -> -1.001
    - (-1, -1):       -.5 | -1.5           V < 0 without a spike: no offset                          -> .5
    - (-1, 3):        -.5 | 2.5 f -> 1.5   V >= 1: up by max(1, 1.001 - (-.5)) = 1.501               -> 2.001
    - (.7, 1):        1.2 f | 1.2 f -> .2  no offset                                                 -> .5
    - (.2, 1.5):      .7 | 2.2 f -> 1.2    up by max(1, 1.001 - .7) = 1                              -> 1.5
    - (1.6, 1.6):     2.1 f | 2.7 f -> 1.7 up; no silent step: the code's sentinel -1000 -> 1.001 + 1000 + .5
    """
    got = _start((.6, .3), (1.2, -1), (2, -2.5), (-1, -1), (-1, 3), (.7, 1), (.2, 1.5), (1.6, 1.6))
    assert got == pytest.approx([.5, -.5, -1.001, .5, 2.001, .5, 1.5, 1001.501], abs=1e-12)
    assert cos_start(torch.tensor([[1.2], [-1.0]], dtype=F64), v_init=0.0).tolist() == pytest.approx([-1.0])
    assert cos_start(torch.tensor([[2.0], [-2.5]], dtype=F64), margin=0.0).tolist() == pytest.approx([-1.0])


def _chain() -> nn.Module:
    """x (B, 1) -> l1 (3) -> a1 -> l2 (3) -> a2 -> l3 (2) -> a3 -> out (1), QCFS activations with lambda = 1."""
    m = nn.Sequential(nn.Linear(1, 3, bias=False), nn.ReLU(), nn.Linear(3, 3, bias=False), nn.ReLU(),
                      nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    weights = ([[.6], [.3], [1.6]], [[1.2, -1, 0], [2, -2.5, 0], [-1, 3, 0]], [[1.5, 0, -1.2], [0, 0, 1]], [[1, 1]])
    with torch.no_grad():
        for lin, w in zip(m[0::2], weights):
            lin.weight.copy_(torch.tensor(w))
    m = apply_activation(m, "qcfs")
    with torch.no_grad():
        for q in m.modules():
            if isinstance(q, QCFS):
                q.lam.fill_(1.0)
    return m.eval().double()


class Spikes(msat.Observer):
    def __init__(self):
        self.s = {}

    def on_spikes(self, name, spikes, t0):
        self.s.setdefault(name, []).extend(spikes.flatten(1).tolist())


def test_three_layers_by_hand():
    """rho = 2, theta = 1, x = 1. Layer 1 (z = .6, .3, 1.6): pre-simulation spikes a [1, 0], b [0, 1], g [1, 1]
    with V(2) = 1.7 for g: V(-1) = (.5, .5, 1001.501). Layer 2 (z_c = 1.2 a - b, z_d = 2 a - 2.5 b,
    z_e = -a + 3 b): the rule's cases -.5, -1.001, 2.001 (test_offset_rule_by_hand). Layer 3 pre-simulates on the
    CALIBRATED layer 2 (c [0, 0], e [1, 1]): z_f = 1.5 c - 1.2 e = -1.2, no spike, no offset; z_p = e, no offset.
    (On the uncalibrated layer 2, c [1, 0] and e [0, 1] would give z_f = (1.5, -1.2): 2.0 f | -.2, a down shift.)
    Then T = 3 steps from those potentials: a [1, 0, 1], b [0, 1, 0]; c: .7 | -.3 | .9 and d: .999 | -1.501 |
    .499 never fire (plain QCFS conversion's c fires at t = 0); e: 1.001 f | 3.001 f | 1.001 f; f never, p always."""
    snn = msat.convert(_chain(), torch.ones(1, 1, dtype=F64), {"method": {"name": "cos", "rho": 2}})
    assert snn.method.presim_steps() == 2 and snn.cost.presim_steps == 2
    assert snn.method.describe() == "COS (rho=2)" and [float(t) for t in snn.scales.values()] == [1.0, 1.0, 1.0]
    x = torch.ones(1, 1, dtype=F64)
    snn.method.presimulate(snn, x, chunk=8)
    starts = [(m.v0 + m.cfg.v_init).flatten().tolist() for _, m in snn.neuron_layers()]
    assert starts == [pytest.approx(s, abs=1e-9) for s in ([.5, .5, 1001.501], [-.5, -1.001, 2.001], [.5, .5])]
    rec = Spikes()
    out = msat.simulate(snn, x, 3, observers=(rec,))
    a1, a2, a3 = (rec.s[n] for n, _ in snn.neuron_layers())
    assert a1 == [[1, 0, 1], [0, 1, 1], [1, 0, 1]]
    assert a2 == [[0, 0, 1], [0, 0, 1], [0, 0, 1]]
    assert a3 == [[0, 1], [0, 1], [0, 1]] and out.flatten().tolist() == [1.0, 1.0, 1.0]
    rec_qcfs = Spikes()
    msat.simulate(msat.convert(_chain(), x, {"method": "qcfs"}), x, 3, observers=(rec_qcfs,))
    assert [s[0] for s in rec_qcfs.s[snn.neuron_layers()[1][0]]] == [1, 0, 0]
    out2 = msat.simulate(snn, torch.ones(2, 1, dtype=F64), 3)            # another batch size: offsets per batch
    assert out2[:, 0].flatten().tolist() == [1.0, 1.0, 1.0] and snn.neuron_layers()[0][1].v0.shape[0] == 2


# ----------------------------------------------------------------------------- a port of the official code

class PortIFNode:
    """spikingjelly's ``IFNode(v_reset=None)`` as the code bundles it: v += x; spike = heaviside(v - 1);
    v -= spike * 1 (soft reset); ``reset()`` sets v = 0."""

    def __init__(self):
        self.v = 0.0

    def reset(self):
        self.v = 0.0

    def __call__(self, x):
        self.v = self.v + x
        spike = (self.v - 1.0 >= 0).to(x.dtype)
        self.v = self.v - spike * 1.0
        return spike


class PortMPLayer(nn.Module):
    """``MPLayer.forward`` (snn_mode, one opt_epoch) of hzc1208/ANN2SNN_COS ``modules.py``, trimmed to what runs."""

    def __init__(self, v_threshold, presim_len, sim_len, batchsize):
        super().__init__()
        self.neuron, self.v_threshold = PortIFNode(), v_threshold
        self.presim_len, self.sim_len, self.batchsize = presim_len, sim_len, batchsize
        self.mem_init = self.spikes = None

    def _inputs(self, x):
        if x.dim() == 4 and x.shape[0] <= self.batchsize:
            return x.unsqueeze(0).repeat(self.sim_len, 1, 1, 1, 1)
        return x.reshape(self.sim_len, x.shape[0] // self.sim_len, *x.shape[1:])

    def _presim(self, xx):
        snn_rate, init_mem_pot = torch.zeros_like(xx[0]), torch.ones_like(xx[0]) * 0.5
        mem_seq, mem_seq2 = [], []
        for t in range(self.presim_len):
            output = self.neuron(xx[t] / self.v_threshold)
            mem = self.neuron.v + 1.
            snn_rate += output
            mem_seq.append(torch.where(output > 0, mem, torch.ones_like(output) * 1000.))
            mem_seq2.append(torch.where(output > 0, torch.ones_like(output) * (-1000.), self.neuron.v))
        membrane_lower = torch.where(self.neuron.v < 0, (snn_rate > 1e-3).float(), torch.zeros_like(snn_rate))
        mem_val = torch.topk(torch.stack(mem_seq), 1, dim=0, largest=False)[0]
        mem_val2 = torch.topk(torch.stack(mem_seq2), 1, dim=0, largest=True)[0]
        val = torch.where((mem_val[0] - 0.999) > 1., (mem_val[0] - 0.999), torch.ones_like(snn_rate))
        val2 = torch.where((1.001 - mem_val2[0]) > 1., (1.001 - mem_val2[0]), torch.ones_like(snn_rate))
        mem_init = init_mem_pot - membrane_lower * val
        return torch.where(self.neuron.v >= 1., torch.ones_like(snn_rate) * 0.5 + val2, mem_init)

    def forward(self, x):
        xx = self._inputs(x)
        self.neuron.reset()
        self.neuron(torch.ones_like(xx[0]) * 0.5)
        self.mem_init = self._presim(xx)
        self.neuron.reset()
        self.neuron.v = self.mem_init
        self.spikes = torch.stack([self.neuron(xx[t] / self.v_threshold) for t in range(self.sim_len)])
        return self.spikes.reshape(-1, *self.spikes.shape[2:]) * self.v_threshold


def _port(ann: nn.Module, rho: int, T: int, B: int) -> nn.Module:
    """The code's ``replace_activation_by_MPLayer`` on a copy of the QCFS ANN."""
    port = copy.deepcopy(ann)
    for i, m in enumerate(port):
        if isinstance(m, QCFS):
            port[i] = PortMPLayer(m.lam.item(), rho, T, B)
    return port


def _toy_cnn(seed: int) -> nn.Module:
    """Conv -> QCFS -> avg pool -> conv -> QCFS -> flatten -> linear -> QCFS -> linear, random weights (float64)."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3))
    m = apply_activation(m, "qcfs").double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
        for q, lam in zip([q for q in m.modules() if isinstance(q, QCFS)], (2.0, 1.5, 1.5)):
            q.lam.fill_(lam)
    return m.eval()


@pytest.mark.parametrize("rho, T", [(4, 6), (2, 5)])
def test_matches_a_port_of_the_official_code(rho, T):
    """The toy CNN in float64: the same initial potentials (to rounding: the code works in units of theta, we in
    activation units), the same spike trains in every layer and the same outputs, with offsets of both signs."""
    ann, B = _toy_cnn(seed=5), 4
    x = torch.randn(B, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    port = _port(ann, rho, T, B)
    with torch.no_grad():
        want = port(x).view(T, B, -1)
    ports = [m for m in port if isinstance(m, PortMPLayer)]
    snn = msat.convert(ann, x, {"method": {"name": "cos", "rho": rho}})
    rec = Spikes()
    out = msat.simulate(snn, x, T, observers=(rec,))
    assert torch.allclose(out, want, rtol=0, atol=1e-12)
    shifted = {"down": 0, "up": 0}
    for (name, m), p in zip(snn.neuron_layers(), ports):
        assert torch.allclose(m.v0 + m.cfg.v_init, p.mem_init, rtol=0, atol=1e-12), name
        assert rec.s[name] == p.spikes.flatten(1).tolist(), name
        shifted["down"] += int((p.mem_init < 0.5).sum())
        shifted["up"] += int((p.mem_init > 0.5).sum())
    assert shifted["down"] > 0 and shifted["up"] > 0, shifted


def test_config_label_and_relu_extension():
    ccfg = conversion_config({"method": "cos"})
    assert (ccfg.method.rho, ccfg.method.margin, ccfg.neuron.v_init) == (4, 1e-3, 0.5)
    with pytest.raises(ConfigError, match="method.rho must be >= 1"):
        conversion_config({"method": {"name": "cos", "rho": 0}})
    with pytest.raises(ConfigError, match="neuron.gamma=1, neuron.reset=soft, neuron.k=1"):
        conversion_config({"method": "cos", "neuron": {"reset": "hard"}})
    relu = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).eval()
    snn = msat.convert(relu, torch.randn(8, 1), {"method": "cos"})
    assert snn.ann == "relu" and snn.method.describe() == "COS (rho=4), ReLU ANN (our extension)"
    srp = msat.convert(relu, torch.randn(8, 1), {"method": "srp"})
    assert srp.method.describe() == "SRP (tau=4), ReLU ANN (our extension)"
