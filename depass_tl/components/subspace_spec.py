"""Subspace components: the projection of a residual-stream activation onto a span, and the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from depass_tl._basis import as_basis
from depass_tl.coefficients import FrozenRun
from depass_tl.components.base import ComponentSpec, check_labels, group_with_bias
from depass_tl.errors import DePassError
from depass_tl.replay.state import InitialState, parse_start_hook

__all__ = ["SubspaceSpec", "subspace", "check_orthonormal"]

ORTHONORMAL_TOL = 1e-4


def check_orthonormal(basis: Tensor, *, what: str = "basis", tol: float = ORTHONORMAL_TOL) -> Tensor:
    """Return ``basis`` as ``[d, k]`` after checking its columns are orthonormal (max |VᵀV - I| ≤ tol)."""
    return as_basis(basis, atol=tol, what=what)


@dataclass(frozen=True)
class SubspaceSpec(ComponentSpec):
    """Projection onto span(basis) (whole, or one component per basis vector) + orthogonal complement."""

    hook: str
    basis: Tensor = field(repr=False)
    split: bool
    labels: tuple[str, ...] | None

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:
        parse_start_hook(self.hook, run.view)
        h = run.get(self.hook).to(dtype)  # [batch, pos, d_model]
        V = self.basis.to(device=h.device, dtype=dtype)
        if V.shape[0] != h.shape[-1]:
            raise DePassError(f"subspace basis has {V.shape[0]} rows but {self.hook!r} has d_model={h.shape[-1]}.")
        full = V.shape[1] == V.shape[0]
        if full and self.split:  # h = V c exactly (V V^T = I only to the basis's tolerance): the parts sum to h
            wide = torch.promote_types(dtype, torch.float32)  # linalg.solve has no half-precision kernels
            coeffs = torch.linalg.solve(V.to(wide), h.reshape(-1, h.shape[-1]).T.to(wide)).T.reshape(h.shape).to(dtype)
        else:
            coeffs = h @ V  # [batch, pos, k]
        if self.split:
            parts = coeffs.permute(2, 0, 1)[..., None] * V.T[:, None, None, :]  # [k, batch, pos, d_model]
            default = [f"subspace.{i}" for i in range(V.shape[1])]
        else:
            parts = (coeffs @ V.T)[None]
            default = ["subspace"]
        labels = list(self.labels) if self.labels is not None else default + ["complement"]
        if len(labels) != parts.shape[0] + 1:
            raise DePassError(f"subspace(): expected {parts.shape[0] + 1} labels (parts + complement), got {len(labels)}.")
        if full:
            # a full basis spans everything: the complement is exactly zero (not rounding noise, which
            # the softmax / max rules would otherwise treat as an active component)
            if not self.split:
                parts = h[None]
            complement = torch.zeros_like(h)
        else:
            complement = h - parts.sum(0)
        x = torch.cat([parts, complement[None]])
        return InitialState((group_with_bias(x, labels, self.hook),))


def subspace(
    hook: str, basis: Tensor, *, split: bool = False, labels: Sequence[str] | None = None
) -> SubspaceSpec:
    """Split the activation at ``hook`` into its projection onto span(``basis``) and the complement.

    Args:
        hook: ``blocks.{l}.hook_resid_pre|mid|post``; the replay starts there.
        basis: ``[d_model, k]`` with orthonormal columns (a ``[d_model]`` unit vector is k = 1);
            validated to ``max |VᵀV − I| ≤ 1e-4``.
        split: one component per basis vector (``subspace.{i}``) instead of one for the span.
        labels: custom labels (parts, then the complement).

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> basis = torch.linalg.qr(torch.randn(8, 2)).Q
        >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]),
        ...     components=depass_tl.subspace("blocks.1.hook_resid_pre", basis, split=True))
        >>> dc.labels
        ('subspace.0', 'subspace.1', 'complement', 'bias')
    """
    V = check_orthonormal(basis).detach()
    if labels is not None:
        check_labels(tuple(labels))
    return SubspaceSpec(hook, V, split, None if labels is None else tuple(labels))
