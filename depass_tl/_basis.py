"""Validation of an orthonormal basis, shared by subspace components and subspace patching."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from depass_tl.errors import DePassError

__all__ = ["as_basis"]


def as_basis(basis: Any, *, d: int | None = None, atol: float, what: str = "basis") -> Float[Tensor, "d k"]:
    """Validate a direction or an orthonormal basis and return it as a ``[d, k]`` matrix.

    Args:
        basis: A unit vector ``[d]`` (taken as ``k = 1``) or a matrix ``[d, k]`` with orthonormal
            columns. Typed ``Any`` on purpose: checking it is this function's job.
        d: The dimension the basis must live in (the last dimension of the hooked activation).
        atol: Tolerance on ``max |VᵀV − I|``.
        what: How error messages name the argument.

    Returns:
        The basis as a ``[d, k]`` tensor (a view of the input, not a copy).

    Raises:
        DePassError: If the input is not a tensor, not 1-D/2-D, empty, not finite, of the wrong
            dimension, or not orthonormal within ``atol``.

    Examples:
        >>> import torch
        >>> as_basis(torch.tensor([0.6, 0.8]), atol=1e-5).shape
        torch.Size([2, 1])
    """
    if not isinstance(basis, Tensor):
        raise DePassError(
            f"{what} must be a torch.Tensor of shape [d, k] or [d], got {type(basis).__name__}; "
            "wrap it with torch.tensor(...)"
        )
    if not torch.is_floating_point(basis):
        raise DePassError(f"{what} must be a floating-point tensor, got dtype {basis.dtype}")
    if basis.ndim == 1:
        basis = basis[:, None]
    if basis.ndim != 2:
        raise DePassError(f"{what} must be a vector [d] or a matrix [d, k], got shape {tuple(basis.shape)}")
    if basis.shape[0] == 0 or basis.shape[1] == 0:
        raise DePassError(f"{what} must be non-empty, got shape {tuple(basis.shape)}")
    if d is not None and basis.shape[0] != d:
        raise DePassError(
            f"{what} has dimension {basis.shape[0]} but the activation's last dimension is {d}; "
            "pass a basis of shape [d, k] living in the hooked activation's space"
        )
    if basis.shape[1] > basis.shape[0]:
        raise DePassError(f"{what} has k={basis.shape[1]} columns in dimension d={basis.shape[0]}; need k <= d")
    if not bool(torch.isfinite(basis).all()):
        raise DePassError(f"{what} contains NaN or inf values")
    gram = basis.detach().double().T @ basis.detach().double()
    err = float((gram - torch.eye(basis.shape[1], dtype=torch.float64, device=gram.device)).abs().max())
    if err > atol:
        raise DePassError(
            f"{what} columns are not orthonormal: max |VᵀV − I| = {err:.3g} > atol = {atol:g}; "
            "normalise a direction with v / v.norm(), or orthonormalise a set of vectors with "
            "torch.linalg.qr(V).Q or depass_tl.subspace_patching.orthonormalize(vectors)"
        )
    return basis
