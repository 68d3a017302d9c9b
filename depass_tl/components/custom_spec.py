"""User-supplied components at a residual-stream hook."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from depass_tl.coefficients import FrozenRun
from depass_tl.components.base import ComponentSpec, check_labels, group_with_bias
from depass_tl.errors import DePassError, DePassValueError, ForeignHookError
from depass_tl.replay.state import InitialState, parse_start_hook

__all__ = ["CustomSpec", "custom", "check_complete"]


def check_complete(
    x: Tensor, clean: Tensor, hook: str, rtol: float, what: str = "custom components",
    model_dtype: torch.dtype | None = None, edited: Sequence[str] = (),
) -> None:
    """Raise if ``x.sum(0)`` differs from ``clean``; the message shows where and by how much.

    ``model_dtype``: the dtype the clean run was computed in; for half precision the tolerance grows to
    ``8 * eps`` of that dtype (the clean activation was rounded there, the components were not).
    ``edited``: hooks the user's hooks edited that would explain a gap (then a
    :class:`~depass_tl.errors.ForeignHookError` names them instead of advising a remainder).
    """
    residual = x.sum(0) - clean
    err = float(residual.abs().max())
    if model_dtype is not None and model_dtype.is_floating_point:
        rtol = max(rtol, 8 * torch.finfo(model_dtype).eps)
    tol = rtol * max(1.0, float(clean.abs().max()))
    if not err <= tol:
        b, p, d = (int(i) for i in torch.unravel_index(residual.abs().argmax(), residual.shape))
        if edited:
            raise ForeignHookError(
                f"{what} do not sum to the clean activation at {hook!r} (max |Σ_c x_c - clean| = {err:.4g}) because "
                f"your hooks edit {', '.join(edited)}, which these components cannot hold. Remove the hook, or "
                "choose components that start after the edit (tokens(start=...) or custom())."
            )
        raise DePassError(
            f"{what} do not sum to the clean activation at {hook!r}: max |Σ_c x_c - clean| = "
            f"{err:.4g} (tolerance {tol:.3g}) at batch {b}, pos {p}, dim {d} (sum {float(x.sum(0)[b, p, d]):.6g}, "
            f"clean {float(clean[b, p, d]):.6g}). Add a remainder component (clean - sum) to make them complete."
        )


@dataclass(frozen=True)
class CustomSpec(ComponentSpec):
    """User-supplied components at a residual-stream hook."""

    hook: str
    tensor: Tensor = field(repr=False)
    labels: tuple[str, ...]
    rtol: float = 1e-4

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:
        parse_start_hook(self.hook, run.view)
        clean = run.get(self.hook).to(dtype)
        x = self.tensor.to(device=clean.device, dtype=dtype)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(clean.shape):
            raise DePassError(
                f"custom components at {self.hook!r} must have shape [component, {', '.join(map(str, clean.shape))}] "
                f"([component, batch, pos, d_model]); got {tuple(self.tensor.shape)}."
            )
        if len(self.labels) != x.shape[0]:
            raise DePassError(f"got {len(self.labels)} labels for {x.shape[0]} components; give one label each.")
        check_complete(x, clean, self.hook, self.rtol, model_dtype=run.view.dtype)
        return InitialState((group_with_bias(x, list(self.labels), self.hook),))


def custom(hook: str, tensor: Tensor, labels: list[str] | tuple[str, ...]) -> CustomSpec:
    """Components given as a tensor at a residual-stream hook, plus ``bias``.

    Args:
        hook: ``blocks.{l}.hook_resid_pre|mid|post``; the replay starts there.
        tensor: ``[component, batch, pos, d_model]`` that must sum over components to the clean
            activation at ``hook`` (checked; the error shows the residual if not).
        labels: one unique label per component (``bias`` is reserved).

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> model = random_model(**cfg)
        >>> toks = torch.tensor([[1, 2, 3]])
        >>> _, cache = model.run_with_cache(toks)
        >>> h = cache["blocks.0.hook_resid_post"]
        >>> halves = torch.stack([h / 2, h / 2])
        >>> _, dc = depass_tl.run_with_depass(model, toks, mlp_rule="ratio",
        ...     components=depass_tl.custom("blocks.0.hook_resid_post", halves, ["a", "b"]))
        >>> dc.labels
        ('a', 'b', 'bias')
    """
    labels = tuple(labels)
    check_labels(labels)
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        raise DePassError("custom components must be a floating-point torch.Tensor [component, batch, pos, d_model].")
    if not bool(torch.isfinite(tensor).all()):
        raise DePassValueError("custom components hold NaN or inf values; give finite components.")
    return CustomSpec(hook, tensor.detach(), labels)
