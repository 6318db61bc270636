"""Conversion: tracing, BN folding, ReLU call sites, pools, calibration and clear errors."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import msat
from msat.config import ConfigError
from msat.conversion import ConversionError, fold_bn, trace
from msat.pooling import SpikingPool
from helpers import randomize_bn


class AllReluForms(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.act(self.c1(x))                 # module, in place
        x = F.relu(self.c2(x), inplace=True)     # functional, in place
        x = torch.relu(x + 1)
        x = (x - 0.5).relu()
        x = F.max_pool2d(x, 2)
        x = torch.relu_(x * 1.0)                 # torch.relu_, on a fresh tensor
        x = self.act(x)                          # the same module instance, second call
        return self.fc(x.flatten(1))


def test_bn_folding_is_exact():
    m = randomize_bn(msat.create_model("digits_cnn"), torch.randn(64, 1, 8, 8))
    x = torch.randn(32, 1, 8, 8)
    gm = trace(m)
    assert fold_bn(gm) == 3
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in gm.modules())
    ref = m(x)
    torch.testing.assert_close(gm(x), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    snn = msat.convert(m, x, {})
    torch.testing.assert_close(snn.ann_forward(x), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_bn_not_after_conv_stays_affine_and_exact():
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                      nn.BatchNorm1d(8), nn.Linear(8, 3))
    m = randomize_bn(m, torch.randn(32, 6))
    x = torch.randn(16, 6)
    snn = msat.convert(m, x, {})
    assert sum(isinstance(mod, nn.BatchNorm1d) for mod in snn.graph_module.modules()) == 2
    assert torch.equal(snn.ann_forward(x), m(x))
    out = msat.simulate(snn, x, 8)
    assert out.shape == (8, 16, 3) and torch.isfinite(out).all()


def test_every_relu_call_site_becomes_a_neuron():
    m = AllReluForms().eval()
    x = torch.randn(8, 1, 8, 8)
    snn = msat.convert(m, x, {})
    names = [n for n, _ in snn.neuron_layers()]
    assert len(names) == 6 and len(set(names)) == 6
    assert names[0] == "act" and names[-1] == "act_1"
    assert not any(isinstance(mod, nn.ReLU) for mod in snn.graph_module.modules())
    assert sum(isinstance(mod, SpikingPool) for mod in snn.graph_module.modules()) == 1
    torch.testing.assert_close(snn.ann_forward(x), m(x))


def test_resnet18_has_17_spiking_layers_with_readable_names():
    m = torchvision.models.resnet18(num_classes=10).eval()
    snn = msat.convert(m, torch.rand(4, 3, 32, 32), {})
    names = [n for n, _ in snn.neuron_layers()]
    assert len(names) == 17
    assert names[:3] == ["relu", "layer1.0.relu", "layer1.0.relu_1"]
    assert set(snn.scales) == set(names)


def test_original_model_is_not_modified():
    m = randomize_bn(msat.create_model("digits_cnn"), torch.randn(64, 1, 8, 8))
    m.train()
    before = copy.deepcopy(m.state_dict())
    msat.convert(m, torch.randn(16, 1, 8, 8), {"method": "msat"})
    assert m.training
    after = m.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(mod, nn.ReLU) for mod in m.modules())


def test_calibration_percentile_and_batches():
    m = randomize_bn(msat.create_model("digits_cnn"), torch.randn(64, 1, 8, 8))
    g = torch.Generator().manual_seed(1)
    b1, b2 = torch.randn(20, 1, 8, 8, generator=g), torch.randn(20, 1, 8, 8, generator=g) * 3
    y = torch.zeros(20, dtype=torch.long)
    snn1 = msat.convert(m, [(b1, y), (b2, y)], {})                          # batches = 1: b1 only
    snn2 = msat.convert(m, [(b1, y), (b2, y)], {"calib": {"batches": 2}})
    pre1, pre2 = snn1.ann_preactivations(b1), snn1.ann_preactivations(b2)
    for name in snn1.scales:
        a1, a2 = pre1[name].relu(), pre2[name].relu()
        assert snn1.scales[name].item() == a1.max().item()
        assert snn2.scales[name].item() == max(a1.max().item(), a2.max().item())
    snn3 = msat.convert(m, b1, {"calib": {"percentile": 0.99}})
    for name, th in snn3.scales.items():
        want = torch.quantile(pre1[name].relu().flatten().double(), 0.99).item()
        assert th.item() == pytest.approx(want, rel=1e-6)
    snn4 = msat.convert(m, b1, {"calib": {"per_channel": True}})
    th = snn4.scales["features.2"]
    assert th.shape == (32, 1, 1)
    assert torch.equal(th.flatten(), pre1["features.2"].relu().amax(dim=(0, 2, 3)))


def test_ann_preactivations_are_relu_inputs():
    m = randomize_bn(msat.create_model("digits_cnn"), torch.randn(64, 1, 8, 8))
    x = torch.randn(8, 1, 8, 8)
    snn = msat.convert(m, x, {})
    pre = snn.ann_preactivations(x)
    assert list(pre) == [n for n, _ in snn.neuron_layers()]
    assert pre["features.2"].shape == (8, 32, 8, 8) and pre["classifier.2"].shape == (8, 128)
    want = m.features[1](m.features[0](x))
    torch.testing.assert_close(pre["features.2"], want, rtol=1e-5, atol=1e-5)
    assert (pre["features.2"] < 0).any()


class SpikeCounter(msat.Observer):
    def __init__(self):
        self.total = 0.0

    def on_spikes(self, name, spikes, t0):
        self.total += spikes.sum().item()


def test_dead_layer_theta_zero_never_fires():
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        m[0].bias.fill_(-100.0)
    x = torch.rand(8, 4)
    for units in ("normalized", "raw"):
        for thr in ("fixed", "msat"):
            with pytest.warns(UserWarning, match="layer '1': calibrated scale 0"):
                snn = msat.convert(m, x, {"method": {"fixed": "if_max"}.get(thr, thr), "neuron": {"units": units}})
            assert snn.scales["1"].item() == 0.0
            rec = SpikeCounter()
            big = torch.randn(8, 4) * 1000                   # drives some inputs of the dead layer > 0
            assert (m[0](big) > 0).any()
            out = msat.simulate(snn, big, 6, observers=[rec])
            assert torch.isfinite(out).all() and rec.total == 0
            torch.testing.assert_close(out, m[2].bias.detach().expand(6, 8, 2))   # only the bias arrives


class GeluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.gelu(self.conv2(self.relu(self.conv(x)))).flatten(1))


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return torch.relu(x)
        return x


class Transposer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.fc(x)).transpose(0, 1)


def test_clear_errors():
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ConversionError, match="'gelu'.*GELU.*only ReLU"):
        msat.convert(GeluNet(), x, {})
    with pytest.raises(ConversionError, match="no ReLU"):
        msat.convert(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), x, {})
    with pytest.raises(ConversionError, match="empty"):
        msat.convert(msat.create_model("digits_cnn"), [], {})
    with pytest.raises(ConversionError, match="torch.fx cannot trace"):
        msat.convert(Branchy(), x, {})
    with pytest.raises(ConversionError, match="transpose"):
        msat.convert(Transposer(), torch.randn(3, 4), {})
    with pytest.raises(ConfigError, match="percentile"):
        msat.convert(msat.create_model("digits_cnn"), x, {"calib": {"percentile": 1.2}})
    with pytest.raises(ConfigError, match="percentile"):
        msat.convert(msat.create_model("digits_cnn"), x, {"calib": {"percentile": 0}})
    assert issubclass(ConversionError, msat.utils.UserError)


class Encoder(nn.Module):
    """Embedding + LSTM (static, analog) and a ReLU head, like the bilstm model."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.fc1 = nn.Linear(12, 10)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(10, 2)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        return self.fc2(self.relu(self.fc1(h[:, -1])))


def test_recurrent_encoder_runs_once_and_stays_analog():
    torch.manual_seed(0)
    m = Encoder().eval()
    tokens = torch.randint(0, 20, (5, 7))
    snn = msat.convert(m, tokens, {})
    calls = []
    lstm = dict(snn.graph_module.named_modules())["lstm"]
    lstm.register_forward_hook(lambda *a: calls.append(1))
    out = msat.simulate(snn, tokens, T=64, chunk=8)
    assert len(calls) == 1
    assert out.shape == (64, 5, 2)
    ref = m(tokens)
    assert ((out.mean(0) - ref).abs().max() < 0.1 * ref.abs().max() + 0.05)


def test_pool_variants_replace_dynamic_max_pools():
    m = msat.create_model("digits_cnn").eval()
    x = torch.randn(8, 1, 8, 8)
    for variant in ("lipool", "gate", "avg"):
        snn = msat.convert(m, x, {"pool": variant})
        pools = [p for _, p in snn.pool_layers()]
        assert len(pools) == 2 and all(p.variant == variant for p in pools)
        assert not any(isinstance(mod, nn.MaxPool2d) for mod in snn.graph_module.modules())
        torch.testing.assert_close(snn.ann_forward(x), m(x))
