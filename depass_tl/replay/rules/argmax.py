"""``max``: the whole target to the component with the largest active key (lowest index on ties).

(The module is ``argmax``: a submodule named ``max`` would shadow the builtin in the package.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depass_tl.replay.rules.base import MLPRule, RuleStats

__all__ = ["Max", "MaxStats"]


class MaxStats(RuleStats):
    """The best active key and its component index (the first on ties), ``[batch, pos, d_mlp]``."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.best = torch.full(shape, float("-inf"), dtype=dtype, device=device)
        self.index = torch.full(shape, -1, dtype=torch.long, device=device)

    def fold(self, keys: Tensor, row0: int, lo: int, *, keep: bool = False) -> None:
        scores = keys.masked_fill(keys == 0, float("-inf"))
        idx = scores.argmax(0)  # first maximal component on ties
        val = scores.gather(0, idx[None])[0]
        better = val > self.best[:, lo:]  # strict: an earlier chunk wins ties
        self.best[:, lo:] = torch.where(better, val, self.best[:, lo:])
        self.index[:, lo:] = torch.where(better, idx + row0, self.index[:, lo:])
        return None

    def merge(self, other: RuleStats) -> None:
        assert isinstance(other, MaxStats)
        tie = (other.best == self.best) & (other.index >= 0) & ((self.index < 0) | (other.index < self.index))
        better = (other.best > self.best) | tie
        self.best = torch.where(better, other.best, self.best)
        self.index = torch.where(better, other.index, self.index)

    def allocate(self, keys: Any, target: Tensor, bias_rows: Tensor, row0: int, n_rows: int, lo: int) -> Tensor:
        rows = torch.arange(row0, row0 + n_rows, device=target.device).view(-1, 1, 1, 1)
        share = (self.index[:, lo:][None] == rows).to(target.dtype).mul_(target)
        if len(bias_rows):
            share[bias_rows] += torch.where(self.index[:, lo:] < 0, target, torch.zeros_like(target))
        return share


@dataclass(frozen=True, repr=False)
class Max(MLPRule):
    """``max``: the whole target to ``argmax_c γ_c`` among the active components (lowest index on ties)."""

    name = "max"
    reads_keys = False

    def init_stats(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> RuleStats:
        return MaxStats(shape, dtype, device)

    def stats_bytes(self, itemsize: int) -> int:
        return itemsize + 8  # best key, int64 index

    def share(self, keys: Tensor, target: Tensor, bias_rows: Tensor, group_size: int) -> Tensor:
        k = keys.reshape(keys.shape[0] // group_size, group_size, *keys.shape[1:])  # [group, component, ...]
        active = k != 0
        none_active = ~active.any(1)
        scores = torch.where(active, k, torch.full_like(k, float("-inf")))
        winner = scores.argmax(dim=1, keepdim=True)  # first maximal index on ties
        alpha = torch.zeros_like(k).scatter_(1, winner, 1.0)
        alpha = torch.where(none_active[:, None], torch.zeros_like(alpha), alpha)
        out = alpha.reshape(keys.shape) * target
        out[bias_rows] += torch.where(none_active, target, torch.zeros_like(target))
        return out
