"""Attention with a frozen pattern, per component.

With the clean pattern ``A [batch, head, q, k]`` frozen, attention is linear in its values:
``v_c = ln1_c W_V`` (GQA: head h reads kv head ``kv_of_head[h]``), ``z_c[q] = Σ_k A[q,k] v_c[k]``,
``out_c = Σ_h z_c,h W_O[h]``. Values are mixed in head space (``[component, batch, pos, head, d_head]``)
before ``W_O``, so no ``[component, pos, head, d_model]`` tensor is ever built. ``b_V`` and ``b_O`` are
constants of the bias component (``b_V`` is mixed by the pattern like any value, which keeps the replay
exact also for rows that do not sum to one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from depass_tl.model_view import AttnView

__all__ = ["attention"]


def attention(x_ln: Tensor, pattern: Tensor, attn: AttnView, bias_index: int) -> Tensor:
    """Attention output per component: ``[component, batch, pos, d_model]``."""
    C, B, P, D = x_ln.shape
    n_kv, _, d_head = attn.W_V.shape
    # v: [component, batch, key_pos, kv_head, d_head]
    v = (x_ln.reshape(C * B * P, D) @ attn.W_V.permute(1, 0, 2).reshape(D, n_kv * d_head)).reshape(C, B, P, n_kv, d_head)
    if attn.b_V is not None:
        v[bias_index] += attn.b_V
    n_heads = attn.W_O.shape[0]
    if n_kv != n_heads:
        v = v.index_select(3, attn.kv_of_head)  # [component, batch, key_pos, head, d_head]
    # z[c, b, q, h, e] = Σ_k A[b, h, q, k] v[c, b, k, h, e]
    z = torch.einsum("bhqk,cbkhe->cbqhe", pattern, v)
    out = (z.reshape(C * B * P, n_heads * d_head) @ attn.W_O.reshape(n_heads * d_head, D)).reshape(C, B, P, D)
    if attn.b_O is not None:
        out[bias_index] += attn.b_O
    return out
