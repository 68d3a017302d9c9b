"""Mixture-of-experts MLPs (Mixtral) with frozen routing, per component.

TL's ``MoE`` routes each token to ``experts_per_token`` experts with weights from a softmax over the
router logits (renormalised over the chosen experts when ``cfg.norm_topk_prob``); each expert is a
bias-free gated MLP ``W_out(act(x W_gate) * (x W_in))`` and its output is scaled by the token's routing
weight. With the routing (which experts, which weights) and each expert's ``act(x W_gate)`` frozen at
their clean values (captured by :mod:`depass_tl.capture`), the layer is linear in ``x W_in``: the
``ratio`` rule. Any rule splits each expert's clean ``hook_post`` like a dense gated MLP
(:mod:`depass_tl.replay.mlp`): ``softmax`` / ``max`` by the gate contributions ``γ_c = x_c W_gate``.
A competitive rule spans every component of a group, so a MoE layer under one is replayed on whole
groups (no chunking); a linear rule may be chunked freely.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from depass_tl.model_view import MoEView
from depass_tl.replay.mlp import credit_to_row
from depass_tl.replay.rules import MLPRule, Neurons

__all__ = ["moe"]


def moe(
    x_ln: Tensor,
    moe_view: MoEView,
    *,
    coeffs: Mapping[str, Tensor],
    prefix: str,
    rule: MLPRule,
    bias_rows: Tensor,
    group_size: int,
    credit: tuple[tuple[int, ...], int] | None = None,
) -> Tensor:
    """MoE output per component, ``[component, batch, pos, d_model]``.

    Args:
        x_ln: normed components ``[component, batch, pos, d_model]``.
        moe_view: the experts' weights and routing settings.
        coeffs: the frozen run's tensors; per expert e it reads ``{prefix}experts.e.tokens`` (flat
            ``batch * pos`` index of each routed row), ``route_weight``, ``gate_act`` and ``hook_post``.
        prefix: ``blocks.{l}.mlp.``.
        rule: the allocation rule.
        bias_rows: the bias components (one per group of ``group_size`` consecutive components).
        group_size: components compete (competitive rules) only within their group.
        credit: as in :func:`depass_tl.replay.mlp.mlp_chunk`.
    """
    C, B, P, D = x_ln.shape
    flat = x_ln.reshape(C, B * P, D)
    out = torch.zeros_like(flat)
    for e, expert in enumerate(moe_view.experts):
        q = f"{prefix}experts.{e}."
        tokens = coeffs[q + "tokens"]
        if tokens.numel() == 0:
            continue
        x_e = flat.index_select(1, tokens)  # [component, routed, d_model]
        keys = x_e @ (expert.W_in if rule.gated_keys == "in" else expert.W_gate)  # [component, routed, d_mlp]
        neurons = Neurons(coeffs[q + "hook_post"], coeffs[q + "hook_gate"], gated=True, gate_act=coeffs[q + "gate_act"])
        post_c = rule.split(keys, neurons, bias_rows, group_size)
        out_e = (post_c @ expert.W_out) * coeffs[q + "route_weight"][:, None]  # [component, routed, d_model]
        out = out.index_add(1, tokens, out_e)
    return credit_to_row(out.reshape(C, B, P, D), credit)
