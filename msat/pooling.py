"""Max pooling under spikes (SPEC 1.4): lateral-inhibition pooling, gate pooling, average pooling.

``SpikingPool`` replaces one MaxPool1d/2d call site (module or ``F.max_pool``) after the first
spiking layer, for any kernel, stride, padding, dilation and ceil mode:

- ``lipool``: with X(t) the cumulative input of each window element and Y(t) the cumulative
  output, the output at step t is ``maxpool(X(t)) - Y(t-1)``: the cumulative output equals the
  running window max of the cumulative input. (For non-overlapping windows this is the
  "accumulate, emit the window max, subtract it from every element" rule.)
- ``gate``: pass the current input of the window element with the largest cumulative input
  X(t) (the current step included; ties go to the first element, as in ``max_pool``).
- ``avg``: average pooling with the same kernel/stride/padding (needs an ANN trained with it).

In ANN mode (``forward``) the module is the original max pool; during calibration the
``avg`` variant runs as the average pool it simulates (``ann_equivalent``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .neurons import MemoryModule

Tensor = torch.Tensor

VARIANTS = ("lipool", "gate", "avg")


class SpikingPool(MemoryModule):
    """One max-pool call site under spikes; ``dims`` is 1 or 2."""

    def __init__(self, variant: str, dims: int, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode: bool = False, name: str = ""):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown pool variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if dims not in (1, 2):
            raise ValueError(f"SpikingPool supports 1-D and 2-D pooling, got dims={dims}")
        self.variant, self.dims, self.name = variant, dims, name
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None or stride == [] or stride == () else stride
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode
        self.ann_equivalent = False
        self._bufs: dict[str, Tensor] = {}             # state buffers, reused across batches (see _keep)
        if variant == "avg" and dilation not in (1, (1,), (1, 1), [1], [1, 1]):
            raise ValueError(f"pool {name!r}: avg replacement needs dilation 1, got {dilation}")
        self.reset_state()

    def extra_repr(self) -> str:
        return (f"{self.variant}, dims={self.dims}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode}")

    def reset_state(self) -> None:
        self.acc: Optional[Tensor] = None    # X(t-1): cumulative input, (B, C, ...)
        self.cum: Optional[Tensor] = None    # Y(t-1): cumulative output of lipool, (B, C, ...out)

    def _max(self, x: Tensor, return_indices: bool = False):
        fn = F.max_pool1d if self.dims == 1 else F.max_pool2d
        return fn(x, self.kernel_size, self.stride, self.padding, self.dilation,
                  ceil_mode=self.ceil_mode, return_indices=return_indices)

    def _avg(self, x: Tensor) -> Tensor:
        fn = F.avg_pool1d if self.dims == 1 else F.avg_pool2d
        return fn(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        """ANN mode: the max pool (or, while calibrating, the average pool ``avg`` simulates)."""
        if self.variant == "avg" and self.ann_equivalent:
            return self._avg(x)
        return self._max(x)

    def _cumulative(self, xs: Tensor, inplace: bool) -> Tensor:
        """X(t) for every step of the chunk: (Tc, B, ...), state carried across chunks (written over
        ``xs`` when ``inplace``; kept in at least fp32 when the input is bf16 / fp16)."""
        dtype = torch.promote_types(xs.dtype, torch.float32)
        inplace = inplace and dtype == xs.dtype
        acc = xs if inplace else torch.empty_like(xs, dtype=dtype)
        prev = self.acc
        for i in range(xs.shape[0]):
            if prev is None:
                prev = acc[0] if inplace else acc[0].copy_(xs[0])
            else:
                prev = torch.add(prev, xs[i], out=acc[i])
        self.acc = self._keep("acc", acc[-1])
        return acc

    def _keep(self, key: str, x: Tensor) -> Tensor:
        """A copy of ``x`` in this pool's reused state buffer ``key`` (fixed address across batches)."""
        buf = self._bufs.get(key)
        if buf is None or buf.shape != x.shape or buf.dtype != x.dtype or buf.device != x.device:
            buf = self._bufs[key] = torch.empty_like(x)
        return buf.copy_(x)

    def run_chunk(self, x: Tensor, steps: int, batch: int, consume: bool = False) -> Tensor:
        """x: (steps*B, C, ...) time-folded input -> (steps*B, C, ...out) output.

        ``consume=True``: the caller no longer needs ``x`` and its memory may be reused.
        """
        if self.variant == "avg":
            return self._avg(x)
        feat = x.shape[1:]
        inplace = consume and self.variant == "lipool"
        acc = self._cumulative(x.view(steps, batch, *feat), inplace)      # (Tc, B, C, ...)
        folded = acc.view(steps * batch, *feat)
        if self.variant == "gate":
            _, idx = self._max(folded, return_indices=True)               # (Tc*B, C, ...out)
            out = x.flatten(2).gather(2, idx.flatten(2))
            return out.view_as(idx)
        m = self._max(folded)                                             # (Tc*B, C, ...out)
        ms = m.view(steps, batch, *m.shape[1:])                           # (Tc, B, C, ...out)
        out = torch.empty_like(ms)
        if self.cum is None:
            out[0].copy_(ms[0])
        else:
            torch.sub(ms[0], self.cum, out=out[0])
        torch.sub(ms[1:], ms[:-1], out=out[1:])
        self.cum = self._keep("cum", ms[-1])
        return out.view_as(m).to(x.dtype)


__all__ = ["SpikingPool", "VARIANTS"]
