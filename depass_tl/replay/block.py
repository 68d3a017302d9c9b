"""One transformer block's sublayers, per component (pure tensor code).

A pre-norm block is ``resid_mid = resid_pre + attn(ln1(resid_pre))`` and ``resid_post = resid_mid +
mlp(ln2(resid_mid))``. Variants handled here, each with frozen coefficients:

* ``parallel_attn_mlp`` (GPT-J, NeoX): the MLP reads ``ln2(resid_pre)``; ``resid_post = resid_pre +
  attn_out + mlp_out`` and there is no ``hook_resid_mid``.
* Gemma-2/3 post-norms (``use_normalization_before_and_after``): ``attn_out = ln1_post(attn(...))`` and
  ``mlp_out = ln2_post(mlp(...))``, RMS norms with their own frozen ``hook_scale``.
* MLP kinds: standard / gated / SoLU (:mod:`~depass_tl.replay.mlp`) and Mixtral MoE
  (:mod:`~depass_tl.replay.moe`).
* Padding: :func:`pad_to_bias` puts everything at padded positions into the bias component.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from depass_tl.model_view import BlockView, MoEView
from depass_tl.replay.attention import attention
from depass_tl.replay.mlp import mlp
from depass_tl.replay.moe import moe
from depass_tl.replay.norm import apply_norm

__all__ = ["attn_sublayer", "mlp_sublayer", "pad_to_bias"]


def pad_to_bias(t: Tensor, pad: Tensor | None, group_size: int) -> Tensor:
    """Move, per group, the whole of ``t`` ``[component, batch, pos, d]`` at padded positions to the bias row.

    ``pad`` is ``[batch, pos]`` bool (True = padding) or None. The group sums are unchanged, so
    completeness holds; every other component is exactly zero at padded positions. TL's mask keeps
    real query positions from attending padded keys, so nothing moved here reaches a real position.
    """
    if pad is None:
        return t
    C = t.shape[0]
    g = t.reshape(C // group_size, group_size, *t.shape[1:])  # [group, component, batch, pos, d]
    total = g.sum(1)  # [group, batch, pos, d]
    at_pad = pad[None, :, :, None]
    g = torch.where(at_pad[:, None], torch.zeros_like(g), g)
    last = torch.where(at_pad, total, g[:, -1])
    return torch.cat([g[:, :-1], last[:, None]], dim=1).reshape(t.shape)


def attn_sublayer(
    x: Tensor,
    block: BlockView,
    acts: Mapping[str, Tensor],
    prefix: str,
    bias_rows: Tensor,
    credit: tuple[tuple[int, ...], tuple[int, ...]] | None,
) -> Tensor:
    """``hook_attn_out`` per component (after the Gemma post-norm when the block has one)."""
    x_ln = apply_norm(x, acts.get(prefix + "ln1.hook_scale"), block.ln1, bias_rows)
    out = attention(
        x_ln, acts[prefix + "attn.hook_pattern"], block.attn, bias_rows, credit=credit,
        clip_ratio=acts.get(prefix + "attn.clip_ratio"),
    )
    if block.ln1_post is not None:
        out = apply_norm(out, acts.get(prefix + "ln1_post.hook_scale"), block.ln1_post, bias_rows)
    return out


def mlp_sublayer(
    x: Tensor,
    block: BlockView,
    acts: Mapping[str, Tensor],
    prefix: str,
    *,
    rule: str,
    temperature: float,
    bias_rows: Tensor,
    group_size: int,
    credit: tuple[tuple[int, ...], int] | None,
) -> Tensor:
    """``hook_mlp_out`` per component; ``x`` is ``resid_mid`` (``resid_pre`` for parallel blocks)."""
    assert block.mlp is not None and block.ln2 is not None
    x_ln = apply_norm(x, acts.get(prefix + "ln2.hook_scale"), block.ln2, bias_rows)
    q = prefix + "mlp."
    if isinstance(block.mlp, MoEView):
        out = moe(
            x_ln, block.mlp, coeffs=acts, prefix=q, rule=rule, temperature=temperature, bias_rows=bias_rows,
            group_size=group_size, credit=credit,
        )
    else:
        out = mlp(
            x_ln,
            block.mlp,
            pre=acts[q + "hook_pre"],
            post=acts[q + "hook_post"],
            gate_act=acts.get(q + "gate_act"),
            rule=rule,
            temperature=temperature,
            bias_rows=bias_rows,
            group_size=group_size,
            credit=credit,
            solu_softmax=acts.get(q + "solu_softmax"),
            mid=acts.get(q + "hook_mid"),
            inner_scale=acts.get(q + "ln.hook_scale"),
        )
    if block.ln2_post is not None:
        out = apply_norm(out, acts.get(prefix + "ln2_post.hook_scale"), block.ln2_post, bias_rows)
    return out
