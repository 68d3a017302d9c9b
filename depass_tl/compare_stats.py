"""Agreement statistics between two attribution maps: Spearman rank correlation and top-k overlap.

Pure tensor code (no scipy). Both functions flatten their inputs, so any two maps of the same shape
(``[n_layers, pos]``, ``[n_layers, pos, n_heads]``, ...) can be compared cell by cell.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from depass_tl.errors import DePassError

__all__ = ["rank", "spearman", "top_k_overlap"]


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
