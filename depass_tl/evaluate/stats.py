"""Summaries over prompts: the mean with a normal-approximation or a bootstrap confidence interval."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from depass_tl.errors import DePassError

__all__ = ["bootstrap_ci", "mean_ci"]


def _values(values: Tensor | list[float]) -> Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise DePassError("no values to summarise; run the protocol on at least one prompt.")
    if not torch.isfinite(v).all():
        raise DePassError("values contain NaN or inf; check the protocol's output before summarising.")
    return v


def mean_ci(values: Tensor | list[float], *, z: float = 1.96) -> tuple[float, float]:
    """Mean and the half-width ``z·SE`` of its normal-approximation confidence interval (95% for 1.96).

    ``SE = std(ddof=1) / sqrt(n)``. With one value the half-width is NaN (no spread to estimate).

    Examples:
        >>> mean_ci([1.0, 2.0, 3.0])  # SE = 1/sqrt(3)  # doctest: +ELLIPSIS
        (2.0, 1.13160...)
    """
    v = _values(values)
    n = v.numel()
    if n < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(z * v.std(unbiased=True) / math.sqrt(n))


def bootstrap_ci(
    values: Tensor | list[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and a percentile bootstrap interval ``(mean, low, high)`` (resampling prompts, seeded).

    Examples:
        >>> m, lo, hi = bootstrap_ci([1.0, 1.0, 1.0])
        >>> (m, lo, hi)
        (1.0, 1.0, 1.0)
    """
    if not 0 < level < 1:
        raise DePassError(f"level must lie in (0, 1); got {level}.")
    v = _values(values)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=gen)
    means = v[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(v.mean()), float(lo), float(hi)
