"""``max``: the whole target to the component with the largest active key (lowest index on ties).

(The module is ``argmax``: a submodule named ``max`` would shadow the builtin in the package.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depass_tl.replay.kernels import max_share_, use_fused
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
    split_temporaries = 0.25

    def init_stats(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> RuleStats:
        return MaxStats(shape, dtype, device)

    def stats_bytes(self, itemsize: int) -> int:
        return itemsize + 8  # best key, int64 index

    def share(self, keys: Tensor, target: Tensor, bias_rows: Tensor, group_size: int) -> Tensor:
        """One-shot shares; ``keys`` (whole groups) are consumed: the shares are written into them."""
        if keys.requires_grad and torch.is_grad_enabled():
            keys = keys.clone()
        G = keys.shape[0] // group_size
        if G > 1:
            parts = []
            for g in range(G):
                local = bias_rows[(bias_rows >= g * group_size) & (bias_rows < (g + 1) * group_size)] - g * group_size
                parts.append(self.share(keys[g * group_size : (g + 1) * group_size], target, local, group_size))
            return torch.cat(parts)
        if use_fused(keys, "max") and max_share_(keys, target, bias_rows) is not None:
            return keys  # the same split in two passes (replay/kernels.py)
        return self.eager_share(keys, target, bias_rows)

    def eager_share(self, keys: Tensor, target: Tensor, bias_rows: Tensor) -> Tensor:
        """:meth:`share` of one group in PyTorch ops (what the fused kernel is checked against)."""
        inactive = keys == 0
        none = inactive.all(0)  # [batch, pos, d_mlp]
        winner = keys.masked_fill_(inactive, float("-inf")).argmax(0)  # first maximal index on ties
        del inactive
        if len(bias_rows):
            winner = torch.where(none, bias_rows.to(winner.dtype), winner)  # nothing active: the bias gets it all
            value = target
        else:  # nothing active and no bias component here: no component gets it
            value = torch.where(none, torch.zeros_like(target), target)
        return keys.zero_().scatter_(0, winner[None], value[None])
