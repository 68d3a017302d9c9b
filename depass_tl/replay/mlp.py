"""MLPs with frozen activation coefficients, per component, under three allocation rules.

Let ``γ_c`` be component c's contribution to the pre-activation (``ln2_c W_in``; the bias component
also holds ``b_in`` and the LN-bias path), so ``Σ_c γ_c = pre``. The clean ``post = act(pre)`` is split
into ``post_c`` with ``Σ_c post_c = post`` exactly, then ``out_c = post_c W_out`` (``b_out`` → bias):

* ``softmax`` (DePass default, temperature T): ``post_c = α_c post`` with ``α = softmax(γ/T)`` over the
  components whose ``γ_c`` is nonzero there (exact zeros, e.g. tokens that cannot reach a position,
  get nothing); where none is active the whole ``post`` goes to the bias component.
* ``ratio`` (DecompX "ZO", DePass "taylor"): ``post_c = (post / pre) γ_c``, a frozen elementwise
  slope; where ``pre == 0`` the share goes to the bias component. Linear in the components.
* ``max``: the whole ``post`` to ``argmax_c γ_c`` among active components (lowest index on ties).

Gated MLPs (``post = act(x W_gate) * (x W_in) + b_in`` in TransformerLens): with ``act(x W_gate)``
frozen the MLP is linear in ``x W_in``, which is the ``ratio`` rule; ``softmax`` and ``max`` split
``post - b_in`` by the gate contributions ``γ_c = ln2_c W_gate`` as the official DePass code does, and
``b_in`` goes to the bias component. ``softmax`` is not additive across groupings of components.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from depass_tl.model_view import MLPView

__all__ = ["MLPRule", "MLP_RULES", "mlp"]

MLPRule = Literal["softmax", "ratio", "max"]
MLP_RULES: tuple[str, ...] = ("softmax", "ratio", "max")


def _linear(x: Tensor, W: Tensor) -> Tensor:
    C, B, P, D = x.shape
    return (x.reshape(C * B * P, D) @ W).reshape(C, B, P, W.shape[-1])


def _split_weights(keys: Tensor, rule: str, temperature: float) -> tuple[Tensor, Tensor]:
    """Allocation weights ``α [component, batch, pos, d_mlp]`` and the mask where no component is active."""
    active = keys != 0
    none_active = ~active.any(0)
    if rule == "softmax":
        scores = torch.where(active, keys / temperature, torch.full_like(keys, float("-inf")))
        alpha = torch.softmax(scores, dim=0)
    else:  # max
        scores = torch.where(active, keys, torch.full_like(keys, float("-inf")))
        winner = scores.argmax(dim=0, keepdim=True)  # first maximal index on ties
        alpha = torch.zeros_like(keys).scatter_(0, winner, 1.0)
    alpha = torch.where(none_active, torch.zeros_like(alpha), alpha)  # all -inf → NaN softmax; drop it
    return alpha, none_active


def _allocate(keys: Tensor, post: Tensor, rule: str, temperature: float, bias_index: int) -> Tensor:
    alpha, none_active = _split_weights(keys, rule, temperature)
    post_c = alpha * post
    post_c[bias_index] += torch.where(none_active, post, torch.zeros_like(post))
    return post_c


def mlp(
    x_ln: Tensor,
    mlp_view: MLPView,
    *,
    pre: Tensor,
    post: Tensor,
    gate_act: Tensor | None,
    rule: str,
    temperature: float,
    bias_index: int,
) -> Tensor:
    """MLP output per component, ``[component, batch, pos, d_model]``.

    Args:
        x_ln: ``[component, batch, pos, d_model]`` normed components (bias component included).
        mlp_view: weights.
        pre: clean ``hook_pre`` (for gated MLPs: the gate pre-activation).
        post: clean ``hook_post``.
        gate_act: frozen ``act(hook_pre)`` for gated MLPs, else None.
        rule: ``softmax`` | ``ratio`` | ``max``.
        temperature: softmax temperature.
        bias_index: index of the bias component.
    """
    if mlp_view.kind == "standard":
        gamma = _linear(x_ln, mlp_view.W_in)  # [component, batch, pos, d_mlp]
        if mlp_view.b_in is not None:
            gamma[bias_index] += mlp_view.b_in
        if rule == "ratio":
            nonzero = pre != 0
            slope = torch.where(nonzero, post / torch.where(nonzero, pre, torch.ones_like(pre)), torch.zeros_like(pre))
            post_c = slope * gamma
            post_c[bias_index] += torch.where(nonzero, torch.zeros_like(post), post)
        else:
            post_c = _allocate(gamma, post, rule, temperature, bias_index)
    else:
        assert gate_act is not None and mlp_view.W_gate is not None
        if rule == "ratio":
            post_c = gate_act * _linear(x_ln, mlp_view.W_in)
        else:
            gated = post if mlp_view.b_in is None else post - mlp_view.b_in
            post_c = _allocate(_linear(x_ln, mlp_view.W_gate), gated, rule, temperature, bias_index)
        if mlp_view.b_in is not None:
            post_c[bias_index] += mlp_view.b_in
    out = _linear(post_c, mlp_view.W_out)
    if mlp_view.b_out is not None:
        out[bias_index] += mlp_view.b_out
    return out
