"""Subspace activation patching that plugs into TransformerLens.

The patch replaces the base (TL: *corrupted*) activation's coordinates inside a subspace by the source
(TL: *clean*) activation's coordinates and keeps the orthogonal complement:

    h_patch = h + V Vᵀ (h' − h),    V ∈ R^{d×k} with orthonormal columns,

at the chosen positions (and head) only (Makelov et al., *Is This the Subspace You Are Looking For?*,
ICLR 2024). Everything here is out of place, so gradients flow through the patch (DAS needs them).

Three entry points:

* :func:`subspace_patch` — the pure tensor operation.
* :func:`subspace_patch_hook` — a hook function for ``model.run_with_hooks(fwd_hooks=[(name, fn)])``.
* :func:`subspace_patch_setter` — a ``patch_setter`` for
  ``transformer_lens.patching.generic_activation_patch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.subspace_patching.linalg import ORTHONORMAL_ATOL, as_basis

__all__ = ["Positions", "position_mask", "subspace_patch", "subspace_patch_hook", "subspace_patch_setter"]

Positions = int | Sequence[int] | Int[Tensor, " n_examples"] | None
"""Where to patch: ``None`` (every position), one position, a list of positions (same for every
example; negative indices count from the end), or one position per example (``[batch]`` tensor)."""


def position_mask(
    pos: Positions, *, n_batch: int, n_pos: int, device: torch.device | str | None = None
) -> Tensor:
    """Boolean ``[batch, pos]`` mask of the positions to patch.

    Raises:
        DePassError: If a position is out of range or ``pos`` has the wrong type or shape.
    """
    mask = torch.zeros(n_batch, n_pos, dtype=torch.bool, device=device)
    if pos is None:
        return mask | True
    if isinstance(pos, Tensor):
        if pos.ndim == 0:
            pos = int(pos)
        elif pos.ndim == 1 and pos.shape[0] == n_batch and not torch.is_floating_point(pos):
            idx = pos.to(device=mask.device, dtype=torch.long)
            if bool(((idx < -n_pos) | (idx >= n_pos)).any()):
                raise DePassError(
                    f"per-example positions {pos.tolist()} out of range for sequence length {n_pos}"
                )
            mask[torch.arange(n_batch, device=mask.device), idx % n_pos] = True
            return mask
        else:
            raise DePassError(
                f"a tensor pos must be an integer tensor of shape [batch={n_batch}], got dtype "
                f"{pos.dtype} and shape {tuple(pos.shape)}"
            )
    positions = [pos] if isinstance(pos, int) else list(pos)
    if not positions:
        raise DePassError("pos is an empty sequence; pass None to patch every position")
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int):
            raise DePassError(f"positions must be ints, got {p!r} of type {type(p).__name__}")
        if not -n_pos <= p < n_pos:
            raise DePassError(f"position {p} out of range for sequence length {n_pos}")
        mask[:, p % n_pos] = True
    return mask


def subspace_patch(
    base: Float[Tensor, "batch pos *rest"],
    source: Float[Tensor, "*shape"],
    basis: Any,
    *,
    pos: Positions = None,
    head: int | None = None,
) -> Float[Tensor, "batch pos *rest"]:
    """Return ``base + V Vᵀ (source − base)`` at the selected positions (out of place).

    Args:
        base: The activation to patch (TL: corrupted), ``[batch, pos, d]`` or
            ``[batch, pos, head, d_head]``.
        source: The activation supplying the subspace coordinates (TL: clean), same shape (checked).
        basis: Orthonormal ``[d, k]`` basis or unit vector ``[d]``, validated with
            :data:`~depass_tl.subspace_patching.linalg.ORTHONORMAL_ATOL`.
        pos: Positions to patch (see :data:`Positions`).
        head: For 4-D activations, the head to patch (``None``: every head).

    Returns:
        The patched activation; gradients flow to ``base``, ``source`` and ``basis``.

    Examples:
        >>> import torch
        >>> h = torch.tensor([[[1.0, 0.0, 1.0]]]); h2 = torch.tensor([[[2.0, 0.0, 2.0]]])
        >>> v = torch.tensor([1.0, 1.0, 0.0]) / 2**0.5
        >>> subspace_patch(h, h2, v)
        tensor([[[1.5000, 0.5000, 1.0000]]])
    """
    if base.shape != source.shape:
        raise DePassError(
            f"base and source activations differ in shape: {tuple(base.shape)} vs "
            f"{tuple(source.shape)}; run both inputs with the same batch size and length"
        )
    if base.ndim not in (3, 4):
        raise DePassError(
            f"subspace patching needs a [batch, pos, d] or [batch, pos, head, d_head] activation, "
            f"got shape {tuple(base.shape)}"
        )
    if head is not None and base.ndim != 4:
        raise DePassError(f"head={head} given but the activation has no head axis: {tuple(base.shape)}")
    v = as_basis(basis, d=base.shape[-1]).to(dtype=base.dtype, device=base.device)
    delta = ((source - base) @ v) @ v.T
    mask = position_mask(pos, n_batch=base.shape[0], n_pos=base.shape[1], device=base.device)
    if base.ndim == 4:
        head_mask = torch.zeros(base.shape[2], dtype=torch.bool, device=base.device)
        if head is None:
            head_mask |= True
        else:
            if not -base.shape[2] <= head < base.shape[2]:
                raise DePassError(f"head {head} out of range for {base.shape[2]} heads")
            head_mask[head] = True
        mask = mask[:, :, None] & head_mask[None, None, :]
    return base + delta * mask[..., None].to(base.dtype)


def subspace_patch_hook(
    basis: Any,
    source_activation: Float[Tensor, "batch pos *rest"],
    *,
    pos: Positions = None,
    head: int | None = None,
) -> Callable[[Tensor, Any], Tensor]:
    """A TL forward hook that subspace-patches the hooked activation from ``source_activation``.

    Args:
        basis: Orthonormal ``[d, k]`` basis or unit vector ``[d]`` (validated now).
        source_activation: The source (clean) activation at the same hook, e.g.
            ``clean_cache["blocks.0.mlp.hook_post"]``.
        pos: Positions to patch.
        head: Head to patch for 4-D activations.

    Returns:
        ``fn(activation, hook) -> patched activation`` for
        ``model.run_with_hooks(tokens, fwd_hooks=[(hook_name, fn)])``.

    Examples:
        >>> fn = subspace_patch_hook(torch.tensor([1.0, 0.0]), torch.ones(1, 2, 2), pos=-1)
        >>> fn(torch.zeros(1, 2, 2), None)
        tensor([[[0., 0.],
                 [1., 0.]]])
    """
    checked = as_basis(basis, d=source_activation.shape[-1], atol=ORTHONORMAL_ATOL)
    source = source_activation.detach()

    def hook_fn(activation: Tensor, hook: Any) -> Tensor:
        return subspace_patch(activation, source, checked, pos=pos, head=head)

    return hook_fn


def subspace_patch_setter(
    basis: Any,
) -> Callable[[Tensor, Sequence[int], Tensor], Tensor]:
    """A ``patch_setter`` for ``transformer_lens.patching.generic_activation_patch``.

    The index TL passes is ``[layer]`` (patch every position), ``[layer, pos]`` or, for
    ``[batch, pos, head, d_head]`` activations, ``[layer, pos, head]``, i.e. use
    ``index_axis_names=["layer"]``, ``["layer", "pos"]`` or ``["layer", "pos", "head_index"]``.

    Args:
        basis: Orthonormal ``[d, k]`` basis or unit vector ``[d]`` (validated now).

    Returns:
        ``setter(corrupted_activation, index, clean_activation) -> patched activation``.

    Examples:
        >>> import transformer_lens.patching as tlp
        >>> from depass_tl.subspace_patching.examples import distilled_model, distilled_tokens, logit_diff
        >>> model = distilled_model()
        >>> _, clean_cache = model.run_with_cache(distilled_tokens(2))
        >>> v = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2**0.5
        >>> tlp.generic_activation_patch(model, distilled_tokens(1), clean_cache,
        ...     lambda logits: logit_diff(logits).mean(), patch_setter=subspace_patch_setter(v),
        ...     activation_name="post", index_axis_names=["layer", "pos"])  # doctest: +ELLIPSIS
        tensor([[1., 2.]]...)
    """
    checked = as_basis(basis)

    def setter(corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor) -> Tensor:
        idx = [int(i) for i in index]
        if len(idx) == 1:
            return subspace_patch(corrupted_activation, clean_activation, checked)
        if len(idx) == 2 and corrupted_activation.ndim == 3:
            return subspace_patch(corrupted_activation, clean_activation, checked, pos=idx[1])
        if len(idx) == 3 and corrupted_activation.ndim == 4:
            return subspace_patch(
                corrupted_activation, clean_activation, checked, pos=idx[1], head=idx[2]
            )
        raise DePassError(
            f"subspace_patch_setter got index {idx} for an activation of shape "
            f"{tuple(corrupted_activation.shape)}; use index_axis_names ['layer'], ['layer', 'pos'] "
            "(3-D activations) or ['layer', 'pos', 'head_index'] (4-D activations)"
        )

    return setter
