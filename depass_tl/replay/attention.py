"""Attention with a frozen pattern, per component.

With the clean pattern ``A [batch, head, q, k]`` frozen, attention is linear in its values:
``v_c = ln1_c W_V`` (GQA: head h reads kv head ``kv_of_head[h]``), ``z_c[q] = Σ_k A[q,k] v_c[k]``,
``out_c = Σ_h z_c,h W_O[h]``. Values are mixed in head space (``[component, batch, pos, head, d_head]``)
before ``W_O``, so no ``[component, pos, head, d_model]`` tensor is ever built. ``b_V`` and ``b_O`` are
constants of the bias components (``b_V`` is mixed by the pattern like any value, which keeps the
replay exact also for rows that do not sum to one: attention sinks, fully masked padding rows).

``clip_qkv`` (OLMo): TL clamps ``v`` to ``[-clip, clip]`` after ``hook_v``. With the frozen ratio
``r = clamp(v) / v`` of the clean run each component's value is ``r ⊙ v_c``: linear, exact, and an
entry cut by the clamp is shared among components in proportion to their contributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from depass_tl.model_view import AttnView

__all__ = ["attention", "head_values", "PreparedAttn", "attention_prepared"]


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


@dataclass(frozen=True)
class PreparedAttn:
    """The value/output weights laid out once per replay for plain matmuls (no per-call transposes).

    Shapes: ``W_V [d_model, n_kv * d_head]``, ``b_V [n_kv * d_head]``, ``W_O [n_heads * d_head, d_model]``,
    ``W_O_heads [n_heads, d_head, d_model]`` (sources mode), ``b_O [d_model]``.
    """

    W_V: Tensor
    b_V: Tensor | None
    W_O: Tensor
    W_O_heads: Tensor
    b_O: Tensor | None
    kv_of_head: Tensor | None  # None when every head has its own kv head
    n_kv: int
    n_heads: int
    d_head: int

    @staticmethod
    def build(attn: AttnView) -> "PreparedAttn":
        n_kv, D, d_head = attn.W_V.shape
        n_heads = attn.W_O.shape[0]
        W_V = attn.W_V.permute(1, 0, 2).reshape(D, n_kv * d_head).contiguous()
        b_V = None if attn.b_V is None else attn.b_V.reshape(n_kv * d_head)
        W_O = attn.W_O.reshape(n_heads * d_head, D).contiguous()
        kv = None if n_kv == n_heads else attn.kv_of_head
        return PreparedAttn(W_V, b_V, W_O, attn.W_O, attn.b_O, kv, n_kv, n_heads, d_head)


def attention_prepared(
    x_ln: Tensor,
    pattern: Tensor,
    pa: PreparedAttn,
    bias_rows: Tensor,
    *,
    credit: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    clip_ratio: Tensor | None = None,
) -> Tensor:
    """:func:`attention` on prepared weights, for a chunk of components ``[chunk, batch, n, d_model]``.

    ``pattern`` ``[batch, head, n, n]`` and ``clip_ratio`` are the clean tensors restricted to the
    chunk's positions (causal skipping: a chunk whose components are exactly zero before position
    ``lo`` only needs queries and keys ``>= lo`` when the pattern is causal).
    """
    C, B, P, D = x_ln.shape
    # v: [component, batch, key_pos, kv_head, d_head]
    v = (x_ln.reshape(C * B * P, D) @ pa.W_V).reshape(C, B, P, pa.n_kv, pa.d_head)
    if pa.b_V is not None and len(bias_rows):
        v[bias_rows] += pa.b_V.reshape(pa.n_kv, pa.d_head)
    if clip_ratio is not None:
        v = v * clip_ratio
    if pa.kv_of_head is not None:
        v = v.index_select(3, pa.kv_of_head)  # [component, batch, key_pos, head, d_head]
    # z[c, b, q, h, e] = Σ_k A[b, h, q, k] v[c, b, k, h, e]: values mixed in head space, before W_O
    z = torch.einsum("bhqk,cbkhe->cbqhe", pattern, v)
    del v
    if credit is not None:
        sources, head_rows = credit
        src = torch.tensor(sources, device=z.device)
        z_src = z.index_select(0, src).sum(0)  # [batch, pos, head, d_head]
        per_head = torch.einsum("bqhe,hed->hbqd", z_src, pa.W_O_heads)  # [head, batch, pos, d_model]
        z = z.index_fill(0, src, 0.0)
    out = (z.reshape(C * B * P, pa.n_heads * pa.d_head) @ pa.W_O).reshape(C, B, P, D)
    if credit is not None:
        out[torch.tensor(head_rows, device=out.device)] += per_head
    if pa.b_O is not None and len(bias_rows):
        out[bias_rows] += pa.b_O
    return out
