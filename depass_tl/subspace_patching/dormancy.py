"""Dormancy and out-of-distribution statistics of a subspace patch (reference/illusion.md §3.4).

For a subspace ``S`` (orthonormal ``[d, r]``; for ``r = 1`` a direction ``u``) and the data ``D`` (the
site activations of the base and source runs at the patched positions):

* ``variance``: total variance of the projection ``Sᵀh`` over ``D`` (population variance, summed over
  the ``r`` coordinates). A *dormant* subspace has (nearly) zero variance on the data.
* ``z_shift``: mean over patched examples of ``‖Sᵀ(h_patch − h_base)‖`` divided by ``√variance``: how
  many natural standard deviations the patch moves the projection (``inf`` for a dormant subspace
  that the patch moves, 0 when it moves nothing).
* ``out_of_range``: share of patched examples whose projection leaves the natural range, per
  coordinate ``[q_lo, q_hi]`` with the :data:`RANGE_QUANTILES` taken at the nearest data points (so a
  small sample gives its min and max), widened by :data:`RANGE_RTOL` of the coordinate's scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["RANGE_QUANTILES", "RANGE_RTOL", "DormancyStats", "dormancy_stats"]

RANGE_QUANTILES = (0.005, 0.995)
"""Quantiles of the natural projection that bound the 'in range' interval."""

RANGE_RTOL = 1e-6
"""Relative widening of the natural range, so that rounding does not count as out of range."""


@dataclass(frozen=True)
class DormancyStats:
    """Dormancy statistics of one subspace (see the module docstring)."""

    variance: float
    z_shift: float
    out_of_range: float


def dormancy_stats(
    subspace: Float[Tensor, "d r"],
    natural: Float[Tensor, "n_nat d"],
    base: Float[Tensor, "n d"],
    patched: Float[Tensor, "n d"],
) -> DormancyStats:
    """Dormancy statistics of ``subspace`` for natural activations and one patch.

    Args:
        subspace: Orthonormal ``[d, r]`` basis, ``r >= 1``.
        natural: Site activations of the data (base and source runs), one row per (example, position).
        base: Base activations at the patched (example, position) pairs.
        patched: The same rows after the patch.

    Returns:
        :class:`DormancyStats`.

    Examples:
        >>> import torch
        >>> nat = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
        >>> s = dormancy_stats(torch.tensor([[0.0], [1.0]]), nat, nat[:1], torch.tensor([[1.0, 0.5]]))
        >>> s.variance, s.z_shift, s.out_of_range
        (0.0, inf, 1.0)
    """
    z_nat = natural @ subspace  # [n_nat, r]
    variance = float(z_nat.var(dim=0, correction=0).sum())
    z_base = base @ subspace
    z_patch = patched @ subspace
    shift = float((z_patch - z_base).norm(dim=-1).mean())
    if shift == 0.0:
        z_shift = 0.0
    elif variance == 0.0:
        z_shift = float("inf")
    else:
        z_shift = shift / variance**0.5
    lo = torch.quantile(z_nat, RANGE_QUANTILES[0], dim=0, interpolation="lower")
    hi = torch.quantile(z_nat, RANGE_QUANTILES[1], dim=0, interpolation="higher")
    scale = torch.maximum(lo.abs(), hi.abs()).clamp_min(1.0)
    tol = RANGE_RTOL * scale
    outside = ((z_patch < lo - tol) | (z_patch > hi + tol)).any(dim=-1)
    return DormancyStats(
        variance=variance, z_shift=z_shift, out_of_range=float(outside.to(torch.float64).mean())
    )
