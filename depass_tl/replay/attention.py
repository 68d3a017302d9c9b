"""Attention with a frozen pattern, per component.

With the clean pattern ``A [batch, head, q, k]`` frozen, attention is linear in its values:
``v_c = ln1_c W_V`` (GQA: head h reads kv head ``kv_of_head[h]``), ``z_c[q] = Σ_k A[q,k] v_c[k]``,
``out_c = Σ_h z_c,h W_O[h]``. Values are mixed in head space (``[component, batch, pos, head, d_head]``)
before ``W_O``, so no ``[component, pos, head, d_model]`` tensor is ever built. ``b_V`` and ``b_O`` are
constants of the bias components (``b_V`` is mixed by the pattern like any value, which keeps the
replay exact also for rows that do not sum to one: attention sinks, fully masked padding rows).
This is the plain form (DecompX and the tests use it); the flat replay engine runs the same map on
weights laid out once per block (:class:`~depass_tl.replay.weights.PreparedBlock`, ``ln1`` folded in).

``clip_qkv`` (OLMo): TL clamps ``v`` to ``[-clip, clip]`` after ``hook_v``. With the frozen ratio
``r = clamp(v) / v`` of the clean run each component's value is ``r ⊙ v_c``: linear, exact, and an
entry cut by the clamp is shared among components in proportion to their contributions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from depass_tl.model_view import AttnView

__all__ = ["attention", "head_values"]


def head_values(
    x_ln: Tensor, pattern: Tensor, attn: AttnView, bias_rows: Tensor, clip_ratio: Tensor | None = None
) -> Tensor:
    """Mixed values ``z [component, batch, query_pos, head, d_head]`` (``b_V`` in the bias rows).

    ``clip_ratio``: frozen ``clamp(v) / v`` ``[batch, pos, kv_head, d_head]`` for ``clip_qkv`` models.
    """
    C, B, P, D = x_ln.shape
    n_kv, _, d_head = attn.W_V.shape
    # v: [component, batch, key_pos, kv_head, d_head]
    v = (x_ln.reshape(C * B * P, D) @ attn.W_V.permute(1, 0, 2).reshape(D, n_kv * d_head)).reshape(C, B, P, n_kv, d_head)
    if attn.b_V is not None:
        v[bias_rows] += attn.b_V
    if clip_ratio is not None:
        v = v * clip_ratio
    if n_kv != attn.W_O.shape[0]:
        v = v.index_select(3, attn.kv_of_head)  # [component, batch, key_pos, head, d_head]
    # z[c, b, q, h, e] = Σ_k A[b, h, q, k] v[c, b, k, h, e]
    return torch.einsum("bhqk,cbkhe->cbqhe", pattern, v)


def attention(
    x_ln: Tensor,
    pattern: Tensor,
    attn: AttnView,
    bias_rows: Tensor,
    *,
    credit: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    clip_ratio: Tensor | None = None,
) -> Tensor:
    """Attention output per component: ``[component, batch, pos, d_model]``.

    Args:
        x_ln: normed components ``[component, batch, pos, d_model]``.
        pattern: the frozen clean pattern ``[batch, head, query_pos, key_pos]``.
        attn: weights.
        bias_rows: the bias components (receive ``b_V`` and ``b_O``).
        credit: ``(source_rows, head_rows)``: move the source components' output, head by head, to
            ``head_rows[h]`` (sources mode); ``b_O`` stays with the bias rows.
        clip_ratio: see :func:`head_values`.
    """
    C, B, P, D = x_ln.shape
    z = head_values(x_ln, pattern, attn, bias_rows, clip_ratio)
    n_heads, d_head = attn.W_O.shape[0], attn.W_O.shape[1]
    if credit is not None:
        sources, head_rows = credit
        src = torch.tensor(sources, device=z.device)
        z_src = z.index_select(0, src).sum(0)  # [batch, pos, head, d_head]
        per_head = torch.einsum("bqhe,hed->hbqd", z_src, attn.W_O)  # [head, batch, pos, d_model]
        z = z.index_fill(0, src, 0.0)
    out = (z.reshape(C * B * P, n_heads * d_head) @ attn.W_O.reshape(n_heads * d_head, D)).reshape(C, B, P, D)
    if credit is not None:
        out[torch.tensor(head_rows, device=out.device)] += per_head
    if attn.b_O is not None:
        out[bias_rows] += attn.b_O
    return out
