"""The simulation engine: convergence to the ANN, chunking, SC reproducibility, units, observers."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import msat
from msat.simulation import Observer, SimulationError
from helpers import randomize_bn


class SmallResNet(nn.Module):
    """Conv-BN-ReLU, MaxPool, a residual block (two convs + identity add), avg pool, Linear."""

    def __init__(self, w: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2))
        self.c1, self.b1 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.c2, self.b2 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w, 5)

    def forward(self, x):
        x = self.stem(x)
        out = self.relu(self.b1(self.c1(x)))
        out = self.relu(self.b2(self.c2(out)) + x)
        return self.fc(torch.flatten(self.pool(out), 1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    m = randomize_bn(SmallResNet(), torch.randn(64, 1, 8, 8))
    x = torch.randn(16, 1, 8, 8)
    return m, x


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.mean(0) - ref).abs().mean() / ref.abs().mean()).item()


def test_if_converges_to_ann(small):
    m, x = small
    snn = msat.convert(m, x, {})
    ref = m(x).detach()
    out = msat.simulate(snn, x, 256, chunk=64)
    e32, e256 = rel_err(out[:32], ref), rel_err(out, ref)
    assert e256 < e32 / 4, (e32, e256)
    assert e256 < 0.05
    assert (out.sum(0).argmax(1) == ref.argmax(1)).float().mean() >= 0.9


def test_msat_converges_to_ann(small):
    m, x = small
    snn = msat.convert(m, x, {"method": "msat"})
    ref = m(x).detach()
    out = msat.simulate(snn, x, 256, chunk=64)
    assert rel_err(out, ref) < rel_err(out[:32], ref) / 2
    assert rel_err(out, ref) < 0.1


@pytest.mark.parametrize("cfg", [
    {},
    {"method": "msat", "pool": "gate"},
    {"method": "msat", "neuron": {"units": "raw", "reset": "hard", "gamma": 2}},
    {"method": "msat", "sc": {"enabled": True, "layers": "all", "p": 0.7, "E": 5}},
])
def test_chunking_gives_identical_outputs(small, cfg):
    m, x = small
    snn = msat.convert(m, x, cfg)
    T = 11
    outs = [msat.simulate(snn, x, T, chunk=c, generator=torch.Generator().manual_seed(3)) for c in (1, 3, 8, T)]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_sc_reproducible_and_reset_modes_differ(small):
    m, x = small
    outs = {}
    for reset in ("emitted", "filtered"):
        snn = msat.convert(m, x, {"sc": {"enabled": True, "p": 0.5, "reset": reset}})
        assert snn.sc_layers() == [snn.neuron_layers()[-1][0]]
        a = msat.simulate(snn, x, 24, generator=torch.Generator().manual_seed(0))
        b = msat.simulate(snn, x, 24, generator=torch.Generator().manual_seed(0))
        c = msat.simulate(snn, x, 24, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and not torch.equal(a, c)
        outs[reset] = a
    assert not torch.equal(outs["emitted"], outs["filtered"])
    snn = msat.convert(m, x, {"sc": {"enabled": True, "p": 1.0}})
    assert torch.equal(msat.simulate(snn, x, 24), msat.simulate(msat.convert(m, x, {}), x, 24))


def test_sc_p_is_derived_at_conversion_and_needed_by_the_engine():
    m = msat.create_model("digits_cnn").eval()
    x = torch.randn(4, 1, 8, 8)
    snn = msat.convert(m, x, {"sc": {"enabled": True, "E": 4}})
    assert list(snn.sc.p) == ["classifier.2"] and 0.0 <= snn.sc.p["classifier.2"] <= 1.0
    assert (snn.cost.sim_steps, snn.cost.ann_forwards) == (4, 2)      # derive_sc_p: E steps, one ANN pass
    snn.sc.p.clear()
    with pytest.raises(SimulationError, match="p is not set"):
        msat.simulate(snn, x, 4)
    snn.set_sc_p({"classifier.2": 0.8})
    assert msat.simulate(snn, x, 4).shape == (4, 4, 10)
    with pytest.raises(msat.ConversionError, match="not spike-confidence layers"):
        snn.set_sc_p({"features.2": 0.8})


class Recorder(Observer):
    def __init__(self):
        self.events = []

    def on_batch_start(self, snn, x, T):
        self.events.append(("start", T))

    def on_spikes(self, name, spikes, t0):
        self.events.append(("spikes", name, tuple(spikes.shape), t0, spikes.clone()))

    def on_output(self, out_chunk, t0):
        self.events.append(("output", tuple(out_chunk.shape), t0, out_chunk.clone()))

    def on_batch_end(self):
        self.events.append(("end",))


def test_observer_protocol(small):
    m, x = small
    snn = msat.convert(m, x, {})
    rec = Recorder()
    out = msat.simulate(snn, x, 10, chunk=4, observers=[rec], chunk_bytes=0)    # chunks of exactly 4, 4, 2
    assert torch.equal(out, msat.simulate(snn, x, 10, chunk=4))          # observing (or the chunk cap) changes nothing
    names = [n for n, _ in snn.neuron_layers()]
    ev = rec.events
    assert ev[0] == ("start", 10) and ev[-1] == ("end",)
    spikes = [e for e in ev if e[0] == "spikes"]
    assert [(e[1], e[3]) for e in spikes] == [(n, t0) for t0 in (0, 4, 8) for n in names]
    assert spikes[0][2] == (4, 16, 8, 8, 8) and spikes[-1][2] == (2, 16, 8, 4, 4)
    assert all(set(e[4].unique().tolist()) <= {0.0, 1.0} for e in spikes)
    outs = [e for e in ev if e[0] == "output"]
    assert [e[2] for e in outs] == [0, 4, 8]
    assert torch.equal(torch.cat([e[3] for e in outs]), out)
    # the first layer's output (spikes * theta) feeds max pooling: its rate approaches the ANN
    first = torch.cat([e[4] for e in spikes if e[1] == names[0]])
    assert first.shape == (10, 16, 8, 8, 8)


def test_bad_arguments_raise_before_compute(small):
    m, x = small
    snn = msat.convert(m, x, {})
    rec = Recorder()
    for T, chunk in [(0, 4), (-3, 4), (4, 0), (2.5, 4)]:
        with pytest.raises(SimulationError, match="positive integer"):
            msat.simulate(snn, x, T, chunk=chunk, observers=[rec])
    assert rec.events == []


def test_static_part_runs_once_and_dtype_is_kept(small):
    m, x = small
    snn = msat.convert(m.double(), x.double(), {})
    calls = []
    stem_conv = dict(snn.graph_module.named_modules())["stem.0"]
    stem_conv.register_forward_hook(lambda *a: calls.append(1))
    out = msat.simulate(snn, x.double(), 12, chunk=5)
    m.float()
    assert len(calls) == 1 and out.dtype == torch.float64
    # the calibrated scales follow the model's dtype (no float32 rounding of a float64 model's thresholds)
    assert all(t.dtype == torch.float64 for t in snn.scales.values())
    x64 = x.double()
    pre = snn.ann_preactivations(x64)
    assert float(snn.scales["stem.2"]) == float(torch.relu(pre["stem.2"]).max())


def test_the_engine_plan_follows_graph_changes(small):
    """The engine caches its plan per network and rebuilds it when the graph (or a called module) changes."""
    m, x = small
    snn = msat.convert(m, x, {})
    before = msat.simulate(snn, x, 6)
    gm = snn.graph_module
    fc = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == "fc")
    with gm.graph.inserting_after(fc):
        neg = gm.graph.call_function(torch.neg, (fc,))
    fc.replace_all_uses_with(neg)
    neg.args = (fc,)
    gm.recompile()
    snn._dynamic_names.add(neg.name)
    after = msat.simulate(snn, x, 6)
    assert torch.equal(after, -before)                          # a stale plan would still return `before`


def test_sc_beyond_T_is_an_error_in_the_library(small):
    m, x = small
    snn = msat.convert(m, x, {"sc": {"enabled": True, "p": 0.9, "E": 16}})
    with pytest.raises(SimulationError, match="sc.E=16, beyond T=8"):
        msat.simulate(snn, x, 8)
    assert msat.simulate(snn, x, 16).shape[0] == 16
    with pytest.raises(SimulationError, match="NaN or inf"):
        msat.simulate(snn, x.clone().fill_(float("nan")), 16)


def rescale_layer(m: nn.Sequential, c: float) -> nn.Sequential:
    """W_1, b_1 <- c W_1, c b_1; W_2 <- W_2 / c: the same ANN function."""
    m2 = type(m)(*[type(l)(l.in_features, l.out_features) if isinstance(l, nn.Linear) else l for l in m])
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        m2[0].weight.mul_(c)
        m2[0].bias.mul_(c)
        m2[2].weight.div_(c)
    return m2.eval()


@pytest.mark.parametrize("threshold", ["fixed", "msat"])
def test_normalized_units_invariant_to_rescaling_raw_not(threshold):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    m2 = rescale_layer(m, 8.0)
    x = torch.randn(32, 10)
    torch.testing.assert_close(m2(x), m(x), rtol=1e-5, atol=1e-6)
    outs = {}
    for units in ("normalized", "raw"):
        cfg = {"method": {"fixed": "if_max"}.get(threshold, threshold), "neuron": {"units": units}}
        a = msat.simulate(msat.convert(m, x, cfg), x, 32)
        b = msat.simulate(msat.convert(m2, x, cfg), x, 32)
        outs[units] = (a - b).abs().max().item() / a.abs().max().item()
    assert outs["normalized"] < 1e-4
    if threshold == "msat":
        assert outs["raw"] > 1e-2          # sigmoid/softplus/exp are not scale-free
    else:
        assert outs["raw"] < 1e-4          # a fixed threshold k*theta is scale-free in both units


def test_resnet18_matches_ann_predictions():
    torch.manual_seed(0)
    m = randomize_bn(torchvision.models.resnet18(num_classes=10), torch.randn(16, 3, 32, 32))
    x = torch.rand(16, 3, 32, 32)
    snn = msat.convert(m, torch.rand(32, 3, 32, 32), {})
    assert len(snn.neuron_layers()) == 17
    out = msat.simulate(snn, x, 512, chunk=64)
    agree = (out.sum(0).argmax(1) == m(x).argmax(1)).sum().item()
    assert agree >= 14


MODEL_INPUTS = {
    "digits_cnn": lambda: torch.randn(4, 1, 8, 8),
    "vgg16": lambda: torch.randn(2, 3, 32, 32),
    "resnet20": lambda: torch.randn(2, 3, 32, 32),
    "resnet34": lambda: torch.randn(2, 3, 32, 32),
    "m5": lambda: torch.randn(2, 1, 8000),
    "bilstm": lambda: torch.randint(1, 50, (2, 12)),
}
MODEL_KW = {"bilstm": {"vocab_size": 50}}


@pytest.mark.parametrize("name", sorted(MODEL_INPUTS))
def test_every_model_converts_and_simulates(name):
    if name not in msat.list_models():
        pytest.skip(f"model {name} not registered yet")
    torch.manual_seed(0)
    m = msat.create_model(name, num_classes=10, **MODEL_KW.get(name, {})).eval()
    x = MODEL_INPUTS[name]()
    for threshold in ("fixed", "msat"):
        snn = msat.convert(m, x, {"method": {"fixed": "if_max"}.get(threshold, threshold)})
        out = msat.simulate(snn, x, 4, chunk=2)
        assert out.shape == (4, x.shape[0], 10) and torch.isfinite(out).all()
        torch.testing.assert_close(snn.ann_forward(x), m(x), rtol=1e-4, atol=1e-4 * m(x).abs().max().item())


class SharedInput(nn.Module):
    """The neuron's input is a view of a tensor that is still needed afterwards."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        a = self.fc2(h)
        b = torch.relu(a.view(a.size(0), -1))
        return self.fc3(b + a)


def test_neuron_input_aliasing_a_live_tensor_is_not_overwritten():
    torch.manual_seed(0)
    m = SharedInput().eval()
    x = torch.randn(8, 6)
    snn = msat.convert(m, x, {"method": "msat"})
    out = msat.simulate(snn, x, 200, chunk=50)
    ref = m(x)
    assert (out.mean(0) - ref).abs().max() < 0.05 * ref.abs().max()
