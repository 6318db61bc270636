"""The CUDA path of the engine (fused kernels, CUDA graphs, tf32/bf16, channels-last) against its eager
path; skipped without a CUDA device. Self-contained (no conftest): ``benchmarks/gpu_check.sh`` runs it
with ``pytest --noconftest -m cuda`` on a machine that has torch but not Hydra."""
from __future__ import annotations

import pytest
import torch

import msat

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


class Counts(msat.Observer):
    def __init__(self):
        self.c = {}

    def on_spikes(self, name, spikes, t0):
        self.c[name] = self.c.get(name, 0) + spikes.double().sum().item()


def _net(name: str, method: str, B: int = 64):
    torch.manual_seed(0)
    model = msat.create_model(name, num_classes=10).cuda().eval()
    x = torch.rand(2 * B, 3, 32, 32, generator=torch.Generator().manual_seed(1)).cuda()
    return msat.convert(model, x, {"method": method}), x[:B]


def _preds(out):
    return out.sum(0).argmax(-1)


@pytest.mark.parametrize("name", ["vgg16", "resnet20"])
@pytest.mark.parametrize("method", ["if_max", "msat", "msat_sc", "burst"])
def test_cuda_fast_path_agrees_with_the_eager_path(name, method):
    """fused kernels + CUDA graphs + channels-last (the CUDA defaults) vs the eager loop in fp32."""
    snn, x = _net(name, method)
    g = lambda: torch.Generator(device="cuda").manual_seed(3)  # noqa: E731
    eager = msat.simulate(snn, x, 96, chunk=32, generator=g(), fused=False, cuda_graphs=False,
                          channels_last=False)
    fast = msat.simulate(snn, x, 96, chunk=32, generator=g())
    assert (_preds(eager) == _preds(fast)).float().mean() >= 0.98
    torch.testing.assert_close(fast.cumsum(0)[-1], eager.cumsum(0)[-1], rtol=0.05, atol=0.05 * eager.abs().max())


@pytest.mark.parametrize("method", ["if_max", "msat"])
def test_cuda_graph_replay_is_exact(method):
    """A replayed chunk runs the very kernels the eager fused path runs: identical outputs and spike counts,
    over two batches (the second replays the graph captured in the first)."""
    snn, x = _net("vgg16", method)
    for batch in (x, x.flip(0)):
        a, b = Counts(), Counts()
        ref = msat.simulate(snn, batch, 128, chunk=32, observers=(a,), cuda_graphs=False)
        got = msat.simulate(snn, batch, 128, chunk=32, observers=(b,), cuda_graphs=True)
        assert torch.equal(ref, got)
        assert a.c == b.c


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_agrees_with_fp32(precision):
    snn, x = _net("vgg16", "msat", B=256)
    a = msat.simulate(snn, x, 64)
    b = msat.simulate(snn, x, 64, precision=precision)
    assert b.dtype == torch.float32
    assert (_preds(a) == _preds(b)).float().mean() >= 0.95


def test_gpu_memory_is_flat_in_T():
    snn, x = _net("vgg16", "msat")
    peaks = []
    for T in (64, 256):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        msat.simulate(snn, x, T, chunk=32, return_output=False)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    assert peaks[1] <= 1.05 * peaks[0]


def test_cuda_matches_cpu():
    snn, x = _net("resnet20", "msat", B=32)
    out_gpu = msat.simulate(snn, x, 64, fused=False, cuda_graphs=False, channels_last=False)
    snn_cpu = snn.cpu()
    out_cpu = msat.simulate(snn_cpu, x.cpu(), 64)
    assert (_preds(out_gpu).cpu() == _preds(out_cpu)).float().mean() >= 0.97
