"""``softmax`` (DePass's default): ``α_c = softmax(γ/T)`` over the active components of a group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassError
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

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise DePassError(f"temperature must be > 0, got {self.temperature}.")

    def with_temperature(self, temperature: float) -> MLPRule:
        return self if temperature == self.temperature else Softmax(temperature)

    def init_stats(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> RuleStats:
        return SoftmaxStats(self.temperature, shape, dtype, device)

    def stats_bytes(self, itemsize: int) -> int:
        return 2 * itemsize + 1  # m, s, and the bool "none active" mask

    def share(self, keys: Tensor, target: Tensor, bias_rows: Tensor, group_size: int) -> Tensor:
        k = keys.reshape(keys.shape[0] // group_size, group_size, *keys.shape[1:])  # [group, component, ...]
        active = k != 0
        none_active = ~active.any(1)  # [group, batch, pos, d_mlp]
        scores = torch.where(active, k / self.temperature, torch.full_like(k, float("-inf")))
        alpha = torch.softmax(scores, dim=1)
        alpha = torch.where(none_active[:, None], torch.zeros_like(alpha), alpha)  # all -inf → NaN; drop it
        out = alpha.reshape(keys.shape) * target
        out[bias_rows] += torch.where(none_active, target, torch.zeros_like(target))
        return out

    def __repr__(self) -> str:
        return f"Softmax(temperature={self.temperature})"
