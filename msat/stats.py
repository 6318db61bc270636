"""Uncertainty of accuracies measured on a test set: intervals over images, paired tests, spread over seeds.

- :func:`wilson_interval`: the 95 % Wilson score interval of a proportion k / n (Wilson 1927), which
  stays inside [0, 1] and is accurate near 0 and 1 where the normal interval is not.
- :func:`mcnemar`: McNemar's exact test of two classifiers on the same images: only the discordant
  images count, b (A right, B wrong) and c (A wrong, B right); under H0 b ~ Binomial(b + c, 1/2) and the
  two-sided p-value is min(1, 2 P[X <= min(b, c)]).
- :func:`mean_sd`: mean and sample standard deviation (n - 1) across seeds.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054          # the 0.975 quantile of the standard normal


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval of the proportion k / n (fractions)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _binom_cdf_half(k: int, n: int) -> float:
    """P[X <= k] for X ~ Binomial(n, 1/2), summed in log space (exact for any n this code meets)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    m = max(logs)
    return min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs))


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """McNemar's exact test on paired per-image outcomes: ``{"b", "c", "p"}`` (b: A right and B wrong)."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"mcnemar needs two outcome vectors over the same images, got {a.shape} and {b.shape}")
    n01, n10 = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if n01 + n10 == 0 else min(1.0, 2 * _binom_cdf_half(min(n01, n10), n01 + n10))
    return {"b": n01, "c": n10, "p": p}


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("mean_sd of no values")
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None)


__all__ = ["wilson_interval", "mcnemar", "mean_sd", "Z95"]
