"""DecompX replay: push per-token components through a post-LN BERT encoder and its head.

Pure tensor code (no hooks, no model). Notation as in Modarressi et al. (ACL 2023): the state
``X[k, b, i]`` is the part of position ``i``'s vector that comes from input token ``k``; it starts at
the embedding output, ``X[k, b, i] = δ_ik · e_i`` (position, segment and embedding-LN terms belong to
token ``i``). Per layer, with the frozen pattern ``A``, LN scales ``σ``, and GELU ratio ``θ``:

* attention (mixed in head space before ``W_O``): ``out_k = Σ_h A^h (X_k W_V^h) W_O^h``,
  ``R = X + out``, then the attention bias;
* LN#1: ``L_k = γ1 ⊙ (R_k − mean R_k) / σ1``, then ``β1``;
* MLP: ``U_k = L_k W_in`` then ``b_in``; ``F_k = (θ ⊙ U_k) W_out`` then ``b_out``;
* LN#2 on ``S = L + F``: ``X'_k = γ2 ⊙ (S_k − mean S_k) / σ2``, then ``β2``;
* head: pooler ``P_k = X_k[CLS] W_pool`` then ``b_pool``, times ``tanh(p)/p`` (tanh "ZO"), then
  ``Y_k = P_k W_cls`` then ``b_cls``; or the MLM head (dense, GELU ratio, LN, unembed columns).

"then b" means :func:`~depass_tl.decompx.bias.add_bias` under the chosen policy. Attention biases
follow the official code: under the DecompX policies the first layer's ``b_V`` rides with the
attended token (it is part of that token's value vector) and ``b_O`` is distributed; later layers
distribute ``W_O b_V + b_O`` (this uses ``Σ_j A_ij = 1``). Under ``"bias"`` the bias component's
value vector gets ``b_V`` in every layer, so that path is exact without the row-sum identity.
Every step is linear given the frozen coefficients, hence Σ_k X_k equals the clean activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from depass_tl.decompx.bias import BiasPolicy, add_bias
from depass_tl.decompx.capture import EncoderRun, frozen_ratio
from depass_tl.decompx.heads import MLMHead, SequenceClassificationHead

__all__ = ["ReplayOutput", "replay_encoder"]


@dataclass(frozen=True, eq=False)
class ReplayOutput:
    """Decomposed activations: ``hooks`` maps hook name to ``[component, batch, pos, d_model]``;
    ``pooler`` is ``[component, batch, d_model]`` (classification only); ``head_logits`` is
    ``[component, batch, n_classes]`` or, for the MLM head, ``[component, batch, pos, n_tokens]``."""

    hooks: dict[str, Tensor]
    pooler: Tensor | None
    head_logits: Tensor


def _layer_norm(V: Tensor, scale: Tensor, w: Tensor) -> Tensor:
    """Frozen-scale LayerNorm of each component (no bias): ``w ⊙ (V − mean V) / scale``."""
    return (V - V.mean(-1, keepdim=True)) / scale * w


def replay_encoder(
    run: EncoderRun,
    head: SequenceClassificationHead | MLMHead,
    *,
    policy: BiasPolicy,
    keep: Callable[[str], bool],
) -> ReplayOutput:
    """Replay the encoder and head per input-token component.

    Args:
        run: frozen coefficients and weights from :func:`~depass_tl.decompx.capture.capture_encoder`.
        head: the head to carry the decomposition through.
        policy: bias policy (see :mod:`depass_tl.decompx.bias`).
        keep: which hook names to store.

    Returns:
        The :class:`ReplayOutput`; components are ``tok0 … tok{pos-1}`` (+ ``bias`` under ``"bias"``).
    """
    embed = run.embed
    batch, n_pos, d_model = embed.shape
    dtype, device = embed.dtype, embed.device
    n_comp = n_pos + (1 if policy == "bias" else 0)
    eye = torch.eye(n_pos, dtype=dtype, device=device)
    own = torch.zeros(n_comp, 1, n_pos, dtype=dtype, device=device)  # [component, 1, pos]
    own[:n_pos, 0] = eye

    X = torch.zeros(n_comp, batch, n_pos, d_model, dtype=dtype, device=device)
    X[:n_pos] = eye[:, None, :, None] * embed[None]  # X[k, b, i] = δ_ik e_i
    hooks: dict[str, Tensor] = {}

    def store(name: str, value: Tensor) -> None:
        if keep(name):
            hooks[name] = value

    store("hook_full_embed", X)
    for layer, (lw, A) in enumerate(zip(run.layers, run.patterns, strict=True)):
        p = f"blocks.{layer}."
        store(p + "hook_resid_pre", X)
        v = torch.einsum("cbjd,hde->cbjhe", X, lw.W_V)  # [component, batch, key_pos, head, d_head]
        if policy == "bias":
            v[-1] = v[-1] + lw.b_V
        elif layer == 0:  # DecompX: the first layer's b_V rides with the attended token k (at j = k)
            v[:n_pos] = v[:n_pos] + eye[:, None, :, None, None] * lw.b_V
        z = torch.einsum("bhij,cbjhe->cbihe", A, v)  # [component, batch, query_pos, head, d_head]
        attn_out = torch.einsum("cbihe,hed->cbid", z, lw.W_O)
        if policy == "bias" or layer == 0:
            b_att = lw.b_O
        else:
            b_att = torch.einsum("he,hed->d", lw.b_V, lw.W_O) + lw.b_O
        R = add_bias(X + attn_out, b_att, policy, own=own)  # weights computed on Z + residual
        store(p + "hook_attn_out", R - X)
        store(p + "hook_resid_mid", R)

        L1 = add_bias(_layer_norm(R, run.ln1_scale[layer], lw.ln1_w), lw.ln1_b, policy, own=own)
        U = add_bias(L1 @ lw.W_in, lw.b_in, policy, own=own)  # [component, batch, pos, d_mlp]
        mlp_out = add_bias((U * run.mlp_ratio[layer]) @ lw.W_out, lw.b_out, policy, own=own)
        store(p + "hook_mlp_out", mlp_out)
        S = L1 + mlp_out
        store(p + "hook_resid_post", S)
        X = add_bias(_layer_norm(S, run.ln2_scale[layer], lw.ln2_w), lw.ln2_b, policy, own=own)
        store(p + "hook_normalized_resid_post", X)

    final = run.final_resid
    if isinstance(head, SequenceClassificationHead):
        own_cls = own[:, :, 0]  # [component, 1]: the [CLS] token
        W_pool, b_pool = head.W_pool.to(X), head.b_pool.to(X)
        pre = final[:, 0] @ W_pool + b_pool  # clean pre-tanh [batch, d_model]
        P = add_bias(X[:, :, 0] @ W_pool, b_pool, policy, own=own_cls)
        P = P * frozen_ratio(torch.tanh(pre), pre)  # tanh "ZO"
        Y = add_bias(P @ head.W_cls.to(X), head.b_cls.to(X), policy, own=own_cls)
        return ReplayOutput(hooks=hooks, pooler=P, head_logits=Y)

    assert run.mlm_scale is not None  # internal: capture ran with with_mlm=True
    pre = head.dense_pre(final)
    D = add_bias(X @ head.W.to(X), head.b.to(X), policy, own=own)
    G = D * frozen_ratio(F.gelu(pre), pre)
    Lm = add_bias(_layer_norm(G, run.mlm_scale, head.ln_w.to(X)), head.ln_b.to(X), policy, own=own)
    T = Lm @ head.W_U.to(X)  # [component, batch, pos, n_tokens]
    # The unembedding bias is split per requested token, so a token's split does not depend on
    # which other ids were requested.
    T = add_bias(T[..., None], head.b_U.to(X)[:, None], policy, own=own[..., None])[..., 0]
    return ReplayOutput(hooks=hooks, pooler=None, head_logits=T)
