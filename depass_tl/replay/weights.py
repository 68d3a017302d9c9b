"""A block's weights laid out once per replay, with each pre-norm folded into the matrix that reads it.

With its scale ``s`` frozen, a norm followed by a matrix is one linear map per row plus a constant:

``norm(x_c) W = (x_c W') / s``  with  ``W' = C diag(w) W``,

where ``C = I − 11ᵀ/d`` centres (``LN`` / ``LNPre``; the identity for ``RMS`` / ``RMSPre``) and ``w`` is the
norm's weight (1 when absent). The norm's bias ``b`` is a constant of the bias component: it adds
``b W`` (plus the layer's own bias) to the bias rows. So the replay multiplies each row by ``W'`` and
by the row's ``1/s`` once, instead of centring, dividing and scaling the ``[rows, d_model]`` state in
separate passes; the result is the same up to float rounding.

Examples:
    >>> import torch
    >>> from depass_tl.model_view import NormView
    >>> from depass_tl.replay.norm import apply_norm
    >>> x, s = torch.randn(3, 1, 2, 4, dtype=torch.float64), torch.rand(1, 2, 1, dtype=torch.float64) + 1
    >>> norm = NormView("LN", torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
    >>> W = torch.randn(4, 5, dtype=torch.float64)
    >>> f = fold_norm(norm, W, None)
    >>> ref = apply_norm(x, s, norm, torch.tensor([2])) @ W
    >>> got = (x @ f.W) / s
    >>> got[2] += f.const
    >>> bool(torch.allclose(got, ref))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from depass_tl.model_view import AttnView, BlockView, MLPView, NormView

__all__ = ["Folded", "fold_norm", "PreparedBlock"]


@dataclass(frozen=True)
class Folded:
    """``norm(x) W + b`` as ``(x W') / s`` plus ``const`` on the bias rows (``scaled``: divide by ``s``)."""

    W: Tensor  # [d_in, d_out]
    const: Tensor | None  # [d_out]
    scaled: bool


def fold_norm(norm: NormView | None, W: Tensor, b: Tensor | None) -> Folded:
    """Fold ``norm`` (None: no norm) into ``W`` ``[d_in, d_out]``; ``b`` ``[d_out]`` is the matrix's own bias."""
    kind = "none" if norm is None else norm.kind
    Wf = W if norm is None or norm.w is None else norm.w[:, None] * W
    if kind in ("LN", "LNPre"):
        Wf = Wf - Wf.mean(0, keepdim=True)  # (x - mean(x)) W = x (C W)
    const = None if norm is None or norm.b is None else norm.b @ W
    if b is not None:
        const = b if const is None else const + b
    return Folded(Wf.contiguous(), const, kind != "none")


@dataclass(frozen=True)
class PreparedBlock:
    """One block's matrices for the flat replay (attention ``V``/``O``; the MLP's key and output matrices).

    Attributes:
        V: ``ln1`` folded into ``W_V`` ``[d_model, n_kv * d_head]``, ``b_V`` in its constant.
        W_O: ``[n_heads * d_head, d_model]``; ``W_O_heads`` ``[n_heads, d_head, d_model]`` (sources mode).
        key: ``ln2`` folded into the matrix whose contributions the MLP rule splits (``W_in``, or
            ``W_gate`` on gated MLPs when the rule says so), ``b_in`` in its constant on standard MLPs;
            None for attention-only and MoE blocks.
    """

    V: Folded
    W_O: Tensor
    W_O_heads: Tensor
    b_O: Tensor | None
    kv_of_head: Tensor | None  # None when every head has its own kv head
    n_kv: int
    n_heads: int
    d_head: int
    key: Folded | None

    @staticmethod
    def build(block: BlockView, gated_keys: str) -> PreparedBlock:
        attn: AttnView = block.attn
        n_kv, D, d_head = attn.W_V.shape
        n_heads = attn.W_O.shape[0]
        W_V = attn.W_V.permute(1, 0, 2).reshape(D, n_kv * d_head)
        b_V = None if attn.b_V is None else attn.b_V.reshape(n_kv * d_head)
        V = fold_norm(block.ln1, W_V, b_V)
        key = None
        m = block.mlp
        if isinstance(m, MLPView):
            ln2 = block.ln2  # parallel blocks too: TL's MLP reads ln2(resid_pre)
            if m.kind == "standard":
                key = fold_norm(ln2, m.W_in, m.b_in)
            else:
                assert m.W_gate is not None
                key = fold_norm(ln2, m.W_in if gated_keys == "in" else m.W_gate, None)
        kv = None if n_kv == n_heads else attn.kv_of_head
        return PreparedBlock(V, attn.W_O.reshape(n_heads * d_head, D).contiguous(), attn.W_O, attn.b_O, kv, n_kv,
                             n_heads, d_head, key)
