"""Spiking pools: LIPool's cumulative output is the window max of the cumulative input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msat.pooling import SpikingPool


def simulate_pool(pool: SpikingPool, xs: torch.Tensor, chunk: int, consume: bool = False) -> torch.Tensor:
    """xs: (T, B, C, ...) -> (T, B, C, ...out), chunk by chunk."""
    T, B = xs.shape[:2]
    outs = []
    for t0 in range(0, T, chunk):
        c = xs[t0:t0 + chunk]
        c = c.clone() if consume else c
        o = pool.run_chunk(c.reshape(c.shape[0] * B, *c.shape[2:]), c.shape[0], B, consume=consume)
        outs.append(o.view(c.shape[0], B, *o.shape[1:]))
    return torch.cat(outs)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_lipool_cumulative_is_window_max_of_cumulative_input(dims, kernel, stride):
    g = torch.Generator().manual_seed(kernel * 10 + stride)
    T, B, C = 9, 2, 3
    shape = (T, B, C, 11) if dims == 1 else (T, B, C, 7, 8)
    xs = (torch.rand(shape, generator=g) < 0.3).double() * torch.rand(C, *([1] * dims), generator=g).double()
    pool = SpikingPool("lipool", dims, kernel, stride)
    out = simulate_pool(pool, xs, chunk=4)
    fn = F.max_pool1d if dims == 1 else F.max_pool2d
    cum_in = xs.cumsum(0)
    want = fn(cum_in.flatten(0, 1), kernel, stride).view(T, B, *out.shape[2:])
    torch.testing.assert_close(out.cumsum(0), want, rtol=0, atol=1e-12)


def test_lipool_by_hand_1d():
    # one window of two elements: inputs a = [1, 0, 0, 1], b = [0, 1, 1, 0]
    # cumulative a: 1 1 1 2; b: 0 1 2 2; window max: 1 1 2 2 -> outputs 1 0 1 0
    xs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]).view(4, 1, 1, 2)
    out = simulate_pool(SpikingPool("lipool", 1, 2), xs, chunk=3)
    assert out.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]


def test_gate_by_hand_1d():
    # gate passes the current input of the element with the largest cumulative input (incl. now)
    # cumulative a: 1 1 1 2; b: 0 2 3 3 -> winner a, b, b, b -> outputs 1, 2, 1, 0
    xs = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [1.0, 0.0]]).view(4, 1, 1, 2)
    out = simulate_pool(SpikingPool("gate", 1, 2), xs, chunk=3)
    assert out.flatten().tolist() == [1.0, 2.0, 1.0, 0.0]


def test_gate_2d_overlapping_matches_reference():
    g = torch.Generator().manual_seed(3)
    xs = (torch.rand(6, 2, 3, 5, 5, generator=g) < 0.4).float()
    out = simulate_pool(SpikingPool("gate", 2, 3, 2, padding=1), xs, chunk=4)
    cum = xs.cumsum(0)
    for t in range(6):
        _, idx = F.max_pool2d(cum[t], 3, 2, 1, return_indices=True)
        want = xs[t].flatten(2).gather(2, idx.flatten(2)).view_as(idx)
        assert torch.equal(out[t], want)


def test_avg_variant_is_avg_pool_and_ann_mode_is_max():
    x = torch.rand(4, 3, 6, 6)
    p = SpikingPool("avg", 2, 2)
    assert torch.equal(p.run_chunk(x, 2, 2), F.avg_pool2d(x, 2))
    assert torch.equal(p(x), F.max_pool2d(x, 2))
    p.ann_equivalent = True
    assert torch.equal(p(x), F.avg_pool2d(x, 2))


def test_lipool_chunking_invariant_with_ceil_mode_and_padding():
    g = torch.Generator().manual_seed(5)
    xs = torch.rand(10, 2, 2, 7, 7, generator=g)
    outs = [simulate_pool(SpikingPool("lipool", 2, 3, 2, padding=1, ceil_mode=True), xs, chunk=c, consume=k)
            for c in (1, 3, 10) for k in (False, True)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
