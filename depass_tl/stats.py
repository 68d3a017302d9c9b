"""Statistics shared by the analyses (:mod:`depass_tl.compare`, :mod:`depass_tl.evaluate`), pure tensor code.

* Agreement between two attribution maps: :func:`spearman` (rank correlation, ties averaged by
  :func:`rank`) and :func:`top_k_overlap`. Both flatten their inputs, so any two maps of the same shape
  (``[n_layers, pos]``, ``[n_layers, pos, n_heads]``, ...) are compared cell by cell.
* Summaries over prompts: :func:`mean_ci` (normal approximation) and :func:`bootstrap_ci` (seeded
  percentile bootstrap).

No scipy: everything is torch, in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from depass_tl.errors import DePassError

__all__ = ["rank", "spearman", "top_k_overlap", "mean_ci", "bootstrap_ci"]


def _flat_pair(a: Tensor, b: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise DePassError(f"{what} takes two torch tensors; got {type(a).__name__} and {type(b).__name__}.")
    if tuple(a.shape) != tuple(b.shape):
        raise DePassError(f"{what} needs two maps of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    if a.numel() == 0:
        raise DePassError(f"{what} needs at least one cell; got empty maps of shape {tuple(a.shape)}.")
    x, y = a.detach().flatten().double().cpu(), b.detach().flatten().double().cpu()
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise DePassError(f"{what}: the maps contain NaN or inf; compare finite values only.")
    return x, y


def rank(x: Tensor) -> Tensor:
    """Ranks 1..n of a 1-d tensor, ties getting the average of the ranks they span (float64).

    Examples:
        >>> import torch
        >>> rank(torch.tensor([10.0, 30.0, 20.0, 30.0])).tolist()
        [1.0, 3.5, 2.0, 3.5]
    """
    x = x.detach().flatten().double()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    _, counts = torch.unique_consecutive(sorted_x, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of the last member of each tie group
    mean_rank = ends - (counts.double() - 1) / 2  # average rank within the group
    ranks = torch.empty_like(x)
    ranks[order] = torch.repeat_interleave(mean_rank, counts)
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps of the same shape (cells flattened; ties averaged).

    It is the Pearson correlation of the ranks. It is NaN when either map is constant (undefined).

    Raises:
        DePassError: shapes differ, the maps are empty, or they hold NaN/inf.

    Examples:
        >>> import torch
        >>> round(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 25.0])), 6)
        1.0
        >>> round(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])), 6)
        -1.0
    """
    x, y = _flat_pair(a, b, "spearman")
    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    if denom == 0.0:
        return math.nan
    return float((rx * ry).sum()) / denom


def top_k_overlap(a: Tensor, b: Tensor, k: int) -> float:
    """Fraction of the ``k`` largest-magnitude cells of ``a`` that are also among those of ``b``.

    Cells are ranked by absolute value (attributions and patching effects are signed; a large
    negative effect is as important as a large positive one). Ties at the k-th place are broken by
    ``torch.topk``'s order. ``k`` larger than the number of cells is clamped to it.

    Raises:
        DePassError: ``k < 1``, shapes differ, empty maps, NaN/inf.

    Examples:
        >>> import torch
        >>> top_k_overlap(torch.tensor([5.0, -4.0, 0.1, 0.2]), torch.tensor([3.0, 0.0, -9.0, 0.1]), 2)
        0.5
    """
    x, y = _flat_pair(a, b, "top_k_overlap")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DePassError(f"top_k_overlap needs an integer k >= 1; got {k!r}.")
    k = min(k, x.numel())
    top_x = set(torch.topk(x.abs(), k).indices.tolist())
    top_y = set(torch.topk(y.abs(), k).indices.tolist())
    return len(top_x & top_y) / k


# ------------------------------------------------------------------------------------ summaries
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
