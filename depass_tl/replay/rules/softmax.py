"""``softmax`` (DePass's default): ``α_c = softmax(γ/T)`` over the active components of a group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassError, DePassValueError
from depass_tl.replay.kernels import softmax_share_, use_fused
from depass_tl.replay.rules.base import DEFAULT_TEMPERATURE, MLPRule, RuleStats

__all__ = ["Softmax", "SoftmaxStats"]


def _finite(m: Tensor) -> Tensor:
    """``m`` with ``-inf`` (nothing active yet) replaced by 0."""
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


class SoftmaxStats(RuleStats):
    """Running max ``m`` and ``s = Σ exp(γ/T − m)`` over the active components (``[batch, pos, d_mlp]``)."""

    def __init__(self, temperature: float, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.temperature = temperature
        self.m = torch.full(shape, float("-inf"), dtype=dtype, device=device)
        self.s = torch.zeros(shape, dtype=dtype, device=device)

    def fold(self, keys: Tensor, row0: int, lo: int, *, keep: bool = False) -> tuple[Tensor, Tensor] | None:
        """With ``keep`` returns ``(e, m_t)``: the chunk's ``exp(γ/T − m_t)`` (0 where inactive) and the
        running max ``m_t`` it is relative to, so :meth:`allocate` is one multiplication."""
        inactive = keys == 0
        scores = (keys / self.temperature).masked_fill_(inactive, float("-inf"))
        del inactive
        m_old = self.m[:, lo:]
        m_new = torch.maximum(m_old, scores.amax(0))
        safe = _finite(m_new)
        e = scores.sub_(safe).exp_()
        self.s[:, lo:] = self.s[:, lo:] * torch.exp(m_old - safe) + e.sum(0)
        self.m[:, lo:] = m_new
        return (e, m_new) if keep else None

    def merge(self, other: RuleStats) -> None:
        assert isinstance(other, SoftmaxStats)
        m = torch.maximum(self.m, other.m)
        safe = _finite(m)
        self.s = self.s * torch.exp(self.m - safe) + other.s * torch.exp(other.m - safe)
        self.m = m

    def allocate(self, keys: Any, target: Tensor, bias_rows: Tensor, row0: int, n_rows: int, lo: int) -> Tensor:
        assert keys is not None
        none = self.s[:, lo:] == 0
        m = self.m[:, lo:]
        safe_m = _finite(m)
        safe_s = torch.where(none, torch.ones_like(self.s[:, lo:]), self.s[:, lo:])
        if isinstance(keys, tuple):  # exp(γ/T - m_t) from the first pass: rescale to the final max
            e, m_t = keys
            factor = torch.where(torch.isinf(m_t), torch.zeros_like(m_t), torch.exp(m_t - safe_m))
            share = e.mul_((factor / safe_s * target)[None])
        else:
            inactive = keys == 0
            share = keys.div_(self.temperature).masked_fill_(inactive, float("-inf")).sub_(safe_m).exp_()
            share = share.mul_((target / safe_s)[None])
        if len(bias_rows):
            share[bias_rows] += torch.where(none, target, torch.zeros_like(target))
        return share


@dataclass(frozen=True, repr=False)
class Softmax(MLPRule):
    """``softmax``: ``α_c = softmax(γ/T)`` over the active components (DePass default, ``T = 0.1``)."""

    temperature: float = DEFAULT_TEMPERATURE
    name = "softmax"
    caches_keys = True
    split_temporaries = 0.25

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise DePassValueError(f"temperature must be > 0, got {self.temperature}.")

    def with_temperature(self, temperature: float) -> MLPRule:
        return self if temperature == self.temperature else Softmax(temperature)

    def init_stats(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> RuleStats:
        return SoftmaxStats(self.temperature, shape, dtype, device)

    def stats_bytes(self, itemsize: int) -> int:
        return 2 * itemsize + 1  # m, s, and the bool "none active" mask

    def share(self, keys: Tensor, target: Tensor, bias_rows: Tensor, group_size: int) -> Tensor:
        """One-shot shares; ``keys`` (whole groups) are consumed: the shares are written into them."""
        if keys.requires_grad and torch.is_grad_enabled():
            keys = keys.clone()
        G = keys.shape[0] // group_size
        if G > 1:
            parts = [
                self.share(keys[g * group_size : (g + 1) * group_size], target,
                           bias_rows[(bias_rows >= g * group_size) & (bias_rows < (g + 1) * group_size)] - g * group_size,
                           group_size)
                for g in range(G)
            ]
            return torch.cat(parts)
        if use_fused(keys, "softmax") and softmax_share_(keys, target, bias_rows, self.temperature) is not None:
            return keys  # the same split in two passes over the keys (replay/kernels.py)
        return self.eager_share(keys, target, bias_rows)

    def eager_share(self, keys: Tensor, target: Tensor, bias_rows: Tensor) -> Tensor:
        """:meth:`share` of one group in PyTorch ops (what the fused kernel is checked against)."""
        # exp(γ/T − m) over the active components (γ ≠ 0), in place: 8 passes over [component, ...]
        inactive = keys == 0
        e = keys.div_(self.temperature).masked_fill_(inactive, float("-inf"))
        del inactive
        m = e.amax(0).nan_to_num_(neginf=0.0)  # nothing active: -inf -> 0 (every e is then 0)
        e.sub_(m).exp_()
        total = e.sum(0)
        none = total == 0
        e.mul_(target / total.masked_fill_(none, 1.0))
        if len(bias_rows):  # nothing active: the whole target to the bias component
            e.index_add_(0, bias_rows, (target * none)[None].expand(len(bias_rows), *target.shape))
        return e

    def __repr__(self) -> str:
        return f"Softmax(temperature={self.temperature})"
