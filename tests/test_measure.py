"""Measurements: SIN/q/ANS/firing-rate curves, accuracy curve, MACs, energy, SC p."""
from __future__ import annotations

import types

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import msat
from msat.measure import (AccuracyCurve, SpikeStats, derive_sc_p, energy_ratio, energy_report, layer_macs,
                          spike_feeders)
from msat.simulation import Observer

# -- a hand-built two-layer case -------------------------------------------------------------
# Layer "a": 2 samples x 3 neurons. Layer "b": 2 samples x (1, 2, 1), all a_l > 0, silent.
A_PRE = torch.tensor([[1.0, -1.0, 0.0], [-2.0, 3.0, -0.5]])          # a_l <= 0: 4 neurons
A_SPIKES = torch.tensor([                                             # (T=4, B=2, 3)
    [[0, 1, 0], [0, 1, 0]],
    [[1, 0, 0], [0, 1, 1]],
    [[0, 0, 1], [0, 1, 0]],
    [[1, 0, 1], [0, 1, 0]],
], dtype=torch.float32)
# N(t):  s0: n0 0,1,1,2 (a>0)  n1 1,1,1,1 (a<0)  n2 0,0,1,2 (a=0)
#        s1: n0 0,0,0,0 (a<0)  n1 1,2,3,4 (a>0)  n2 0,1,1,1 (a<0)
# |SIN| = 1,2,3,3; fired with a>0 = 1,2,2,2; SIN spikes = 1,2,3,4; all spikes = 2,5,7,10.
A_EXPECT = {
    "sin_ratio": [1 / 4, 2 / 4, 3 / 4, 3 / 4],
    "q": [1 / 2, 2 / 4, 3 / 5, 3 / 5],
    "ans": [1.0, 1.0, 1.0, 4 / 3],
    "firing_rate": [2 / 6, 5 / 12, 7 / 18, 10 / 24],
}
B_PRE = torch.ones(2, 1, 2, 1)
B_SPIKES = torch.zeros(4, 2, 1, 2, 1)


def feed(stats: SpikeStats, preacts: dict, spikes: dict, chunks: list[int]) -> None:
    T = next(iter(spikes.values())).shape[0]
    stats.begin_batch(preacts, T)
    t0 = 0
    for c in chunks:
        for name, s in spikes.items():
            stats.on_spikes(name, s[t0:t0 + c], t0)
        t0 += c
    stats.on_batch_end()


def hand_stats(chunks: list[int]) -> SpikeStats:
    stats = SpikeStats()
    feed(stats, {"a": A_PRE, "b": B_PRE}, {"a": A_SPIKES, "b": B_SPIKES}, chunks)
    return stats


def assert_curves_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


@pytest.mark.parametrize("chunks", [[4], [1, 1, 1, 1], [3, 1], [1, 3]])
def test_spike_stats_hand_computed(chunks):
    stats = hand_stats(chunks)
    curves = stats.curves()
    assert_curves_close(curves["a"], A_EXPECT)
    assert_curves_close(curves["b"], {k: [0.0] * 4 for k in A_EXPECT})   # zero denominators -> 0
    assert stats.at(3)["a"]["q"] == pytest.approx(0.6)
    assert stats.mean_spike_count() == pytest.approx({"a": 10 / 6, "b": 0.0})
    assert stats.neurons_per_sample() == {"a": 3, "b": 2}
    assert stats.mean_firing_rate() == pytest.approx([r / 2 for r in A_EXPECT["firing_rate"]])


def test_spike_stats_firing_rate_of_a_spike_train():
    # One neuron, burst counts (gamma = 2): 2, 0, 1, 0, 2, 0 -> cumulative 2, 2, 3, 3, 5, 5.
    train = torch.tensor([2.0, 0, 1, 0, 2, 0]).view(6, 1, 1)
    stats = SpikeStats()
    feed(stats, {"n": torch.ones(1, 1)}, {"n": train}, [4, 2])
    assert stats.curves()["n"]["firing_rate"] == pytest.approx([2 / 1, 2 / 2, 3 / 3, 3 / 4, 5 / 5, 5 / 6])
    assert stats.mean_spike_count()["n"] == pytest.approx(5.0)


def test_spike_stats_multi_batch_is_sample_weighted_and_mergeable():
    torch.manual_seed(0)
    pre = torch.randn(7, 4, 3)
    spikes = (torch.rand(10, 7, 4, 3) < 0.3).float()
    whole = SpikeStats()
    feed(whole, {"x": pre}, {"x": spikes}, [10])
    split = SpikeStats()                                   # batches of 2 and 5 samples
    feed(split, {"x": pre[:2]}, {"x": spikes[:, :2]}, [3, 7])
    feed(split, {"x": pre[2:]}, {"x": spikes[:, 2:]}, [10])
    assert split.curves() == whole.curves()
    # two "ranks" each see one batch; summing their raw counts gives the single-process result
    r0, r1 = SpikeStats(), SpikeStats()
    feed(r0, {"x": pre[:2]}, {"x": spikes[:, :2]}, [10])
    feed(r1, {"x": pre[2:]}, {"x": spikes[:, 2:]}, [10])
    s0, s1 = r0.state_tensors(), r1.state_tensors()
    merged = SpikeStats()
    merged.load_state_tensors({k: s0[k] + s1[k] for k in s0})
    assert merged.curves() == whole.curves()
    assert merged.all_reduce().curves() == whole.curves()  # no process group: a no-op


def _reference_counts(pre: torch.Tensor, spikes: torch.Tensor) -> dict:
    """SpikeStats' four count rows, brute force from the whole (T, B, ...) spike train."""
    neg = (pre <= 0).reshape(-1)
    s = spikes.reshape(spikes.shape[0], -1)
    cum = s.abs().cumsum(0)
    fired = cum > 0
    return {"fired_neg": (fired & neg).sum(1), "fired_pos": (fired & ~neg).sum(1),
            "sin_spikes": cum[:, neg].sum(1), "spikes": cum.sum(1), "negative": int((-s.clamp(max=0)).sum())}


@pytest.mark.parametrize("kind", ["binary", "burst", "signed"])
@pytest.mark.parametrize("chunks", [[6], [1] * 6, [4, 2]])
def test_spike_stats_reads_channels_last_spikes_in_place(kind, chunks):
    # The engine hands channels-last spikes (Tc, B, C, H, W); SpikeStats reads them in memory order (no copy)
    # with its masks laid out alike. Counts must equal the brute force on a contiguous copy, chunk by chunk.
    g = torch.Generator().manual_seed(3)
    pre = torch.randn(3, 4, 5, 2, generator=g)
    s = (torch.rand(6, 3, 4, 5, 2, generator=g) < 0.4).float()
    if kind == "burst":
        s = s * torch.randint(1, 4, s.shape, generator=g)
    if kind == "signed":
        s = s * torch.where(torch.rand(s.shape, generator=g) < 0.3, -1.0, 1.0)
    cl = torch.empty(6 * 3, 4, 5, 2, memory_format=torch.channels_last).view(6, 3, 4, 5, 2)
    cl.copy_(s)
    assert not cl.is_contiguous()
    stats = SpikeStats()
    feed(stats, {"x": pre}, {"x": cl}, chunks)
    want = _reference_counts(pre, s)
    c = stats.counts["x"]
    assert c[0].tolist() == want["fired_neg"].tolist()
    assert c[1].tolist() == want["fired_pos"].tolist()
    assert c[2].tolist() == want["sin_spikes"].long().tolist()
    assert c[3].tolist() == want["spikes"].long().tolist()
    assert stats.negative_spikes()["x"] == want["negative"]
    assert torch.equal(cl, s)                                      # the observer never writes the spikes
    contiguous = SpikeStats()
    feed(contiguous, {"x": pre}, {"x": s}, chunks)
    assert contiguous.curves() == stats.curves()


def test_spike_stats_rejects_bad_input():
    stats = SpikeStats()
    stats.begin_batch({"a": A_PRE}, 4)
    with pytest.raises(ValueError, match="do not match"):
        stats.on_spikes("a", torch.zeros(4, 3, 2), 0)
    with pytest.raises(ValueError, match="integer counts"):
        stats.on_spikes("a", A_SPIKES * 0.5, 0)
    with pytest.raises(KeyError, match="no ANN pre-activation"):
        stats.on_spikes("zz", A_SPIKES, 0)
    stats.on_spikes("a", A_SPIKES[:2], 0)
    with pytest.raises(ValueError, match="expected to start at 2"):
        stats.on_spikes("a", A_SPIKES[3:], 3)
    with pytest.raises(RuntimeError, match="before T=4"):
        stats.on_batch_end()
    with pytest.raises(ValueError, match="T=4"):
        stats.begin_batch({"a": A_PRE}, 5)


# -- accuracy curve ------------------------------------------------------------------------------

def test_accuracy_curve_is_sample_weighted():
    # batch 1: one sample, label 0; cumulative outputs [0,1] then [3,1] -> wrong, then right.
    out1 = torch.tensor([[[0.0, 1.0]], [[3.0, 0.0]]])                # (T=2, B=1, 2)
    # batch 2: three samples, label 1, always predicted 0.
    out2 = torch.tensor([[1.0, 0.0]]).expand(2, 3, 2).clone()
    acc = AccuracyCurve()
    acc.update(out1, torch.tensor([0]))
    acc.update(out2, torch.tensor([1, 1, 1]))
    assert acc.curve() == pytest.approx([0.0, 0.25])                  # mean of batch accuracies: 0.5
    assert int(acc.total) == 4


def test_accuracy_curve_observer_chunks_match_update():
    torch.manual_seed(1)
    out, y = torch.randn(9, 5, 4), torch.randint(0, 4, (5,))
    direct = AccuracyCurve()
    direct.update(out, y)
    obs = AccuracyCurve()
    obs.set_labels(y)
    obs.on_batch_start(None, torch.zeros(5, 1), 9)
    for t0 in range(0, 9, 4):
        obs.on_output(out[t0:t0 + 4], t0)
    obs.on_batch_end()
    assert obs.curve() == direct.curve()
    want = [(out[:t + 1].sum(0).argmax(-1) == y).float().mean().item() for t in range(9)]
    assert direct.curve() == pytest.approx(want)
    with pytest.raises(ValueError, match="set_labels"):
        AccuracyCurve().on_batch_start(None, torch.zeros(5, 1), 9)


# -- SC p -----------------------------------------------------------------------------------

def test_parse_sc_p_is_the_one_parser():
    from msat.config import ConfigError, parse_sc_p

    layers = ["l1", "l2"]
    assert parse_sc_p(None, layers) is None
    assert parse_sc_p(0.5, layers) == {"l1": 0.5, "l2": 0.5}
    assert parse_sc_p([0.1, 0.2], layers) == {"l1": 0.1, "l2": 0.2}
    assert parse_sc_p({"l2": 1, "l1": 0}, layers) == {"l1": 0.0, "l2": 1.0}
    assert parse_sc_p([0.1, 1]) == [0.1, 1.0]                         # checked without layers
    with pytest.raises(ConfigError, match="2 SC layers"):
        parse_sc_p([0.1], layers)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        parse_sc_p(1.5, layers)
    with pytest.raises(ConfigError, match="unknown layers"):
        parse_sc_p({"l1": 0.1, "l3": 0.2}, layers)
    with pytest.raises(ConfigError, match=r"sc.p\[1\]"):
        parse_sc_p([0.5, True])


# -- MACs and energy -------------------------------------------------------------------------

def test_energy_ratio_table8():
    assert energy_ratio(1.77e6, 313.25e6, 1137.53e6) == pytest.approx(0.716, abs=5e-4)
    assert energy_ratio(1.77e6, 313.25e6, 1137.53e6, e_mac=4.6, e_ac=4.6) > 1
    with pytest.raises(ValueError):
        energy_ratio(0, 0, 0)


def test_layer_macs_closed_form():
    from msat import create_model
    vgg = create_model("vgg16", num_classes=100)
    macs = layer_macs(vgg, (3, 32, 32))
    assert list(macs)[0] == "features.0" and macs["features.0"] == 3 * 3 * 3 * 64 * 32 * 32 == 1_769_472
    assert list(macs)[-1] == "classifier" and macs["classifier"] == 512 * 100
    assert len(macs) == 14
    # every conv of the authors' VGG16 keeps its input size until the next pool
    size, c_in, want = 32, 3, 0
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            size //= 2
        else:
            want, c_in = want + 9 * c_in * v * size * size, v
    assert sum(macs.values()) == want + 512 * 100
    assert sum(macs.values()) / 1e6 == pytest.approx(313.25, abs=0.05)   # the paper's 313.25M


def test_layer_macs_small_layers():
    model = nn.Sequential(
        nn.Conv1d(3, 4, kernel_size=5, stride=2),       # L 20 -> 8: 3*4*5*8 = 480
        nn.ReLU(), nn.Flatten(), nn.Linear(32, 7),       # 32*7 = 224
    )
    macs = layer_macs(model, torch.zeros(6, 3, 20))      # per sample, whatever the batch
    assert macs == {"0": 480, "3": 224}
    grouped = nn.Conv2d(4, 8, 3, groups=2, bias=False)  # 6x6 -> 4x4: 3*3*4*8*16/2
    assert layer_macs(nn.Sequential(grouped), (4, 6, 6)) == {"0": 2304}
    lstm = nn.LSTM(3, 2, num_layers=2, bidirectional=True, batch_first=True)
    # per step: layer 0: 2 dirs * 4 gates * 2 * (3 + 2); layer 1: 2 * 4 * 2 * (4 + 2); 5 steps
    assert layer_macs(nn.Sequential(lstm), torch.zeros(2, 5, 3))["0"] == 5 * (80 + 96)


class _Neuron(nn.Module):
    """Stand-in for a spiking layer in a traced graph (acts as ReLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.relu()


class _ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1)
        self.n1 = _Neuron()
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.n2 = _Neuron()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * 2 * 2 + 4, 3)
        self.n_side = _Neuron()

    def forward(self, x):
        a = self.n1(self.conv1(x))                          # (B, 2, 4, 4): 32 neurons
        b = self.n2(self.conv2(a) + a)                      # residual add
        side = self.n_side(x.flatten(1)[:, :4])             # 4 neurons
        return self.fc(torch.cat([self.pool(b).flatten(1), side], 1))


def _fake_snn(model: nn.Module):
    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, _Neuron) or super().is_leaf_module(m, qualname)

    gm = fx.GraphModule(model, Tracer().trace(model))
    neurons = [(n, m) for n, m in gm.named_modules() if isinstance(m, _Neuron)]
    return types.SimpleNamespace(graph_module=gm, neuron_layers=lambda: neurons)


def test_energy_report_walks_the_graph():
    model = _ResNetLike()
    snn = _fake_snn(model)
    macs = layer_macs(model, (1, 4, 4))
    assert macs == {"conv1": 9 * 2 * 16, "conv2": 9 * 4 * 16, "fc": 12 * 3}
    fed = spike_feeders(snn.graph_module, [m for _, m in snn.neuron_layers()], macs)
    assert fed["conv1"] is None and fed["conv2"] == ["n1"] and sorted(fed["fc"]) == ["n2", "n_side"]
    counts = {"n1": 2.0, "n2": 0.5, "n_side": 3.0}
    rep = energy_report(snn, macs, counts, neurons={"n1": 32, "n2": 32, "n_side": 4})
    fc_rate = (32 * 0.5 + 4 * 3.0) / 36
    assert rep["op_snn"] == pytest.approx({"conv1": 288, "conv2": 2.0 * 576, "fc": fc_rate * 36})
    e_snn = 4.6 * 288 + 0.9 * (2.0 * 576 + fc_rate * 36)
    assert rep["e_snn_pj"] == pytest.approx(e_snn)
    assert rep["ratio"] == pytest.approx(e_snn / (4.6 * (288 + 576 + 36)))
    assert rep["ratio"] == pytest.approx(energy_ratio(288, 900, 2.0 * 576 + fc_rate * 36))
    with pytest.raises(ValueError, match="neurons="):
        energy_report(snn, macs, counts)
    with pytest.raises(KeyError, match="not called"):
        energy_report(snn, {"nope": 1}, counts)


def _rank_main(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    pre, spikes = torch.randn(6, 5), (torch.rand(8, 6, 5) < 0.4).float()
    out = torch.randn(8, 6, 3)
    y = torch.randint(0, 3, (6,))
    part = slice(0, 1) if rank == 0 else slice(1, 6)          # unequal shards: 1 and 5 samples
    stats, acc = SpikeStats(), AccuracyCurve()
    feed(stats, {"x": pre[part]}, {"x": spikes[:, part]}, [8])
    acc.update(out[:, part], y[part])
    stats.all_reduce()
    acc.all_reduce()
    if rank == 0:
        torch.save({"curves": stats.curves(), "acc": acc.curve()}, out_file)
    dist.destroy_process_group()


def test_all_reduce_across_processes_equals_single_process(tmp_path):
    import torch.multiprocessing as mp
    out_file = str(tmp_path / "rank0.pt")
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), out_file), nprocs=2)
    got = torch.load(out_file)
    torch.manual_seed(0)
    pre, spikes = torch.randn(6, 5), (torch.rand(8, 6, 5) < 0.4).float()
    out = torch.randn(8, 6, 3)
    y = torch.randint(0, 3, (6,))
    stats, acc = SpikeStats(), AccuracyCurve()
    feed(stats, {"x": pre}, {"x": spikes}, [8])
    acc.update(out, y)
    assert got["curves"] == stats.curves()
    assert got["acc"] == acc.curve()


# -- end to end with the real engine on digits -------------------------------------------------

W = 8     # digits_cnn width in the end-to-end tests


@pytest.fixture(scope="module")
def digits():
    """A digits_cnn (width 8) trained for 3 quick epochs (~99 % train accuracy) and the data."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0   # (1797, 1, 8, 8)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    model = msat.create_model("digits_cnn", width=W)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    assert (model(x).argmax(-1) == y).float().mean() > 0.9
    return model, x, y


class _Recorder(Observer):
    def __init__(self):
        self.spikes: dict[str, list[torch.Tensor]] = {}

    def on_spikes(self, name, spikes, t0):
        self.spikes.setdefault(name, []).append(spikes.clone())


def _brute_force(a: torch.Tensor, spikes: torch.Tensor) -> dict[str, list[float]]:
    """SPEC 3 formulas step by step, neuron sets as boolean masks: a (B, ...), spikes (T, B, ...)."""
    out = {k: [] for k in ("sin_ratio", "q", "ans", "firing_rate")}
    neg = a <= 0
    for t in range(1, spikes.shape[0] + 1):
        n = spikes[:t].sum(0)
        sin = (n > 0) & neg
        pos = (n > 0) & ~neg
        out["sin_ratio"].append(sin.sum().item() / neg.sum().item() if neg.any() else 0.0)
        out["q"].append(sin.sum().item() / (sin.sum() + pos.sum()).item() if (sin | pos).any() else 0.0)
        out["ans"].append(n[sin].sum().item() / sin.sum().item() if sin.any() else 0.0)
        out["firing_rate"].append(n.sum().item() / (n.numel() * t))
    return out


def test_engine_observers_match_brute_force(digits):
    model, x, y = digits
    snn = msat.convert(model, x[:256], {"method": "msat"})
    xb, yb = x[:40], y[:40]
    plain = msat.simulate(snn, xb, 12, chunk=5)
    stats, acc, rec = SpikeStats(), AccuracyCurve(), _Recorder()
    acc.set_labels(yb)
    out = msat.simulate(snn, xb, 12, chunk=5, observers=(stats, acc, rec))
    assert torch.equal(out, plain)                              # observers change nothing
    pre = snn.ann_preactivations(xb)
    curves = stats.curves()
    assert list(curves) == [n for n, _ in snn.neuron_layers()]
    for name, chunks in rec.spikes.items():
        want = _brute_force(pre[name], torch.cat(chunks))
        for k in want:
            assert curves[name][k] == pytest.approx(want[k], abs=1e-12), (name, k)
    assert stats.mean_spike_count() == pytest.approx(
        {n: torch.cat(c).sum().item() / pre[n].numel() for n, c in rec.spikes.items()})
    ref = AccuracyCurve()
    ref.update(out, yb)
    assert acc.curve() == ref.curve()
    assert acc.curve()[-1] > 0.8
    assert any(curves[n]["sin_ratio"][-1] > 0 for n in curves)  # SIN does occur on real data


def test_derive_sc_p_end_to_end(digits):
    model, x, _ = digits
    cfg = {"method": "msat", "sc": {"enabled": True, "E": 8}}
    snn = msat.convert(model, x[:256], cfg)
    p = derive_sc_p(snn, x[:64], 8)
    assert list(p) == snn.sc_layers() == ["classifier.2"]
    assert all(0.0 <= v <= 1.0 for v in p.values())
    assert derive_sc_p(snn, x[:64], 8) == p                     # reproducible
    assert snn.sc_layers() == ["classifier.2"]                  # SC settings restored
    # measured with SC off: the same as a conversion without SC
    plain = msat.convert(model, x[:256], {"method": "msat"})
    stats = SpikeStats()
    msat.simulate(plain, x[:64], 8, observers=(stats,))
    assert p == {"classifier.2": 1.0 - stats.at(8)["classifier.2"]["q"]}
    everyone = derive_sc_p(snn, x[:64], 8, layers=[n for n, _ in snn.neuron_layers()])
    assert everyone == {n: 1.0 - v["q"] for n, v in stats.at(8).items()}
    snn.set_sc_p(p)                                             # the engine accepts the result
    gen = torch.Generator().manual_seed(3)
    a = msat.simulate(snn, x[:64], 16, generator=gen.manual_seed(3))
    assert torch.equal(a, msat.simulate(snn, x[:64], 16, generator=gen.manual_seed(3)))
    with pytest.raises(ValueError, match="no spike-confidence layers"):
        derive_sc_p(plain, x[:64], 8)


def test_energy_report_on_converted_digits(digits):
    model, x, _ = digits
    snn = msat.convert(model, x[:256], {"method": "if_max"})
    stats = SpikeStats()
    msat.simulate(snn, x[:32], 16, observers=(stats,))
    macs = layer_macs(model, x[:1])
    assert macs == {"features.0": 9 * W * 64, "features.3": 9 * W * W * 64, "features.7": 9 * W * 2 * W * 16,
                    "classifier.1": 2 * W * 4 * 128, "classifier.4": 128 * 10}
    counts = stats.mean_spike_count()
    rep = energy_report(snn, macs, counts, neurons=stats.neurons_per_sample())
    assert rep["fed_by"] == {"features.0": None, "features.3": ["features.2"], "features.7": ["features.5"],
                             "classifier.1": ["features.9"], "classifier.4": ["classifier.2"]}
    rest = sum(counts[f[0]] * macs[n] for n, f in rep["fed_by"].items() if f)
    assert rep["ratio"] == pytest.approx(energy_ratio(macs["features.0"], sum(macs.values()), rest))
