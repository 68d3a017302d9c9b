"""Norms with a frozen scale, applied per component.

For every kind the map from a component to its normed image is linear once the scale ``s`` (captured
``hook_scale``, ``[batch, pos, 1]``) is frozen: centring by the component's own mean is linear, and the
division uses the clean scale. The norm's bias ``b`` is a constant and goes to the bias component, so
``Σ_c norm_c = norm(Σ_c x_c)`` exactly.
"""

from __future__ import annotations

from torch import Tensor

from depass_tl.model_view import NormView

__all__ = ["apply_norm"]


def apply_norm(x: Tensor, scale: Tensor | None, norm: NormView, bias_rows: Tensor) -> Tensor:
    """Normalise each component of ``x`` ``[component, batch, pos, d]`` with the frozen ``scale``.

    ``bias_rows`` are the bias components (one per group) that receive the norm's bias ``b``.
    Returns a new tensor (or ``x`` itself for "no norm"); ``x`` is not modified.
    """
    if norm.kind in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    if norm.kind == "none":
        return x  # identity (a "none" norm has no weights)
    assert scale is not None, "a norm needs its captured scale"
    x = x / scale  # scale [batch, pos, 1] broadcasts over components; x is now a new tensor
    if norm.w is not None:
        x = x * norm.w
    if norm.b is not None:
        x[bias_rows] += norm.b
    return x
