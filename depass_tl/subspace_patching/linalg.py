"""Small linear-algebra helpers for subspace patching: basis validation and rowspace/nullspace splits.

A *basis* is a ``[d, k]`` matrix ``V`` with orthonormal columns; the subspace patch is
``h + V Vᵀ (h' − h)``. The rowspace of a reading matrix ``W`` (``[d_site, n_read]``, row convention
``out = h @ W``) is ``col(W)`` inside the site space; its orthogonal complement ``ker(Wᵀ)`` is the
nullspace, whose contents never leave the site. Both are computed with an SVD and a rank tolerance,
never with a plain QR (``center_writing_weights`` makes ``W_out`` rank-deficient, and QR would then
invent a spurious rowspace direction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from depass_tl._basis import as_basis as _as_basis
from depass_tl.errors import DePassError

__all__ = [
    "ORTHONORMAL_ATOL",
    "RowNullSplit",
    "as_basis",
    "orthonormalize",
    "rank_tolerance",
    "row_null_split",
]

ORTHONORMAL_ATOL = 1e-5
"""Largest allowed ``max |VᵀV − I|`` for a basis (and ``| ‖v‖ − 1 |`` for a vector), any dtype."""


def as_basis(
    basis: Any,
    *,
    d: int | None = None,
    atol: float = ORTHONORMAL_ATOL,
) -> Float[Tensor, "d k"]:
    """Validate a direction ``[d]`` or an orthonormal basis ``[d, k]``; return it as ``[d, k]``.

    ``d`` is the dimension it must live in (the hooked activation's last dimension) and ``atol`` the
    tolerance on ``max |VᵀV − I|``. Raises a :class:`DePassError` naming the problem (not a tensor,
    wrong shape or dimension, empty, not finite, not orthonormal); the same check guards
    :func:`depass_tl.subspace` components, with their own tolerance.

    Examples:
        >>> import torch
        >>> as_basis(torch.tensor([0.6, 0.8])).shape
        torch.Size([2, 1])
    """
    return _as_basis(basis, d=d, atol=atol)


def rank_tolerance(singular_values: Tensor, shape: tuple[int, int], rtol: float | None) -> float:
    """Absolute cut-off below which singular values count as zero.

    The default ``rtol`` is ``max(shape) * eps(dtype)`` (NumPy's ``matrix_rank`` convention), relative
    to the largest singular value.
    """
    if singular_values.numel() == 0:
        return 0.0
    if rtol is None:
        rtol = max(shape) * torch.finfo(singular_values.dtype).eps
    return float(singular_values.max()) * rtol


def orthonormalize(
    vectors: Float[Tensor, "d n"], *, rtol: float | None = None, atol: float | None = None
) -> Float[Tensor, "d r"]:
    """Orthonormal basis of the column span of ``vectors``, rank-revealing (SVD).

    Args:
        vectors: Column vectors ``[d, n]``; they need not be independent.
        rtol: Relative rank tolerance (see :func:`rank_tolerance`).
        atol: Absolute cut-off on the singular values; overrides ``rtol`` when given.

    Returns:
        ``[d, r]`` with ``r`` the numerical rank (``r`` may be 0).

    Examples:
        >>> import torch
        >>> orthonormalize(torch.tensor([[1.0, 2.0], [0.0, 0.0]])).shape
        torch.Size([2, 1])
    """
    if vectors.ndim != 2:
        raise DePassError(f"vectors must be a matrix [d, n], got shape {tuple(vectors.shape)}")
    u, s, _ = torch.linalg.svd(vectors, full_matrices=False)
    if atol is None:
        tol = rank_tolerance(s, (vectors.shape[0], vectors.shape[1]), rtol)
    else:
        tol = atol
    rank = int((s > tol).sum())
    return u[:, :rank]


@dataclass(frozen=True)
class RowNullSplit:
    """A subspace split into its part in ``col(W)`` (rowspace) and in ``ker(Wᵀ)`` (nullspace).

    Attributes:
        row_projector: ``[d, d]`` orthogonal projector onto ``col(W)``.
        rank: Numerical rank of ``W``.
        v_row: ``[d, k]`` ``P_row V``.
        v_null: ``[d, k]`` ``V − P_row V``.
        row_basis: ``[d, r_row]`` orthonormalised ``P_row V`` (for ``k = 1``: ``v_row/‖v_row‖``).
        null_basis: ``[d, r_null]`` orthonormalised ``P_null V``.
        row_norm: ``‖P_row V‖_F / √k`` (``‖v_row‖`` for ``k = 1``).
        null_norm: ``‖P_null V‖_F / √k``; ``row_norm² + null_norm² = 1``.
    """

    row_projector: Tensor
    rank: int
    v_row: Tensor
    v_null: Tensor
    row_basis: Tensor
    null_basis: Tensor
    row_norm: float
    null_norm: float


def row_null_split(
    basis: Float[Tensor, "d k"] | Float[Tensor, " d"],
    reader: Float[Tensor, "d_w n_read"],
    *,
    rtol: float | None = None,
) -> RowNullSplit:
    """Split a subspace with respect to the rowspace ``col(W)`` of the downstream reading weights.

    Args:
        basis: Orthonormal ``[d, k]`` basis (validated).
        reader: ``[d, n_read]`` weights (``d_w = d``, checked) that read the site in row convention
            (``out = h @ W``),
            e.g. ``model.W_out[L]`` for ``blocks.L.mlp.hook_post``.
        rtol: Relative rank tolerance for the SVD of ``W``.

    Returns:
        A :class:`RowNullSplit`.

    Examples:
        >>> import torch
        >>> v = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2**0.5
        >>> w = torch.tensor([[0.0], [2.0], [1.0]], dtype=torch.float64)
        >>> round(row_null_split(v, w).row_norm, 4)
        0.6325
    """
    basis = as_basis(basis)
    if reader.ndim != 2 or reader.shape[0] != basis.shape[0]:
        raise DePassError(
            f"reader weights must have shape [d_site={basis.shape[0]}, n_read], got "
            f"{tuple(reader.shape)}; pass the matrix that reads the site (out = h @ W)"
        )
    if not bool(torch.isfinite(reader).all()):
        raise DePassError("reader weights contain NaN or inf values")
    w = reader.detach().to(basis.dtype)
    u, s, _ = torch.linalg.svd(w, full_matrices=False)
    tol = rank_tolerance(s, (w.shape[0], w.shape[1]), rtol)
    rank = int((s > tol).sum())
    u_row = u[:, :rank]
    projector = u_row @ u_row.T
    v = basis.detach()
    v_row = projector @ v
    v_null = v - v_row
    k = v.shape[1]
    # The parts of a unit-norm basis are O(1): cut at an absolute level, so that a part that is zero
    # up to rounding (e.g. a direction entirely in the nullspace) gets an empty basis, not noise.
    part_atol = max(v.shape) * torch.finfo(v.dtype).eps * 16
    return RowNullSplit(
        row_projector=projector,
        rank=rank,
        v_row=v_row,
        v_null=v_null,
        row_basis=orthonormalize(v_row, atol=part_atol),
        null_basis=orthonormalize(v_null, atol=part_atol),
        row_norm=float(v_row.norm()) / k**0.5,
        null_norm=float(v_null.norm()) / k**0.5,
    )
