"""DecompX replay: push per-token components through a post-LN BERT encoder and its head.

Pure tensor code (no hooks, no model), on the decoder replay's kernels: attention with a frozen
pattern (:func:`depass_tl.replay.attention.attention`), LayerNorm with a frozen scale
(:func:`depass_tl.replay.norm.apply_norm`), the FFN's ``x W`` (:func:`depass_tl.replay.mlp.linear`)
and an activation split by a rule object (:mod:`depass_tl.decompx.approx`; ``"zo"`` is the registry's
``ratio``). Notation as in Modarressi et al. (ACL 2023): the state ``X[k, b, i]`` is the part of
position ``i``'s vector that comes from input token ``k``; it starts at the embedding output,
``X[k, b, i] = δ_ik · e_i`` (position, segment and embedding-LN terms belong to token ``i``). Per layer,
with the frozen pattern ``A``, LN scales ``σ`` and the activation's frozen slope:

* attention (mixed in head space before ``W_O``): ``out_k = Σ_h A^h (X_k W_V^h) W_O^h``,
  ``R = X + out``, then the attention bias;
* LN#1: ``L_k = γ1 ⊙ (R_k − mean R_k) / σ1``, then ``β1``;
* FFN: ``U_k = L_k W_in`` then ``b_in``; ``F_k = act_k(U) W_out`` then ``b_out``, where ``act_k`` is
  the component's share of the activation (``ffn_approx``); ``include_ffn=False`` leaves ``F`` out;
* LN#2 on ``S = L + F``: ``X'_k = γ2 ⊙ (S_k − mean S_k) / σ2``, then ``β2``;
* head: pooler ``P_k = X_k[CLS] W_pool`` then ``b_pool``, the tanh's share (``tanh_approx``), then
  ``Y_k = P_k W_cls`` then ``b_cls``; or the MLM head (dense, the GELU's share, LN, unembed columns).

"then b" means :func:`~depass_tl.decompx.bias.add_bias` under the chosen policy (under ``"bias"``
the kernels put every bias in the bias component directly). Attention biases follow the official
code: under the DecompX policies the first layer's ``b_V`` rides with the attended token (it is part
of that token's value vector) and ``b_O`` is distributed; later layers distribute ``W_O b_V + b_O``
(this uses ``Σ_j A_ij = 1``). Under ``"bias"`` the bias component's value vector gets ``b_V`` in every
layer, so that path is exact without the row-sum identity. With the exact options every step is
linear given the frozen coefficients, hence ``Σ_k X_k`` equals the clean activation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from depass_tl.decompx.approx import Approx
from depass_tl.decompx.bias import BiasPolicy, add_bias
from depass_tl.decompx.capture import EncoderRun, layer_norm_scale
from depass_tl.decompx.heads import MLMHead, SequenceClassificationHead
from depass_tl.model_view import AttnView, EncoderLayerView, NormView
from depass_tl.replay.attention import attention
from depass_tl.replay.mlp import linear
from depass_tl.replay.norm import apply_norm

__all__ = ["Approximations", "ReplayOutput", "replay_encoder"]


@dataclass(frozen=True, eq=False)
class ReplayOutput:
    """Decomposed activations: ``hooks`` maps hook name to ``[component, batch, pos, d_model]``;
    ``pooler`` is ``[component, batch, d_model]`` (classification only); ``head_logits`` is
    ``[component, batch, n_classes]`` or, for the MLM head, ``[component, batch, pos, n_tokens]``."""

    hooks: dict[str, Tensor]
    pooler: Tensor | None
    head_logits: Tensor


@dataclass(frozen=True)
class Approximations:
    """The activation linearisations (:func:`~depass_tl.decompx.approx.activation_approx`) and whether the
    FFN is part of the decomposition."""

    ffn: Approx
    head: Approx  # the pooler's tanh, or the MLM head's GELU
    include_ffn: bool = True


def _cast(layer: EncoderLayerView, dtype: torch.dtype) -> EncoderLayerView:
    """The layer's tensors in the replay dtype (dataclass fields that are tensors, recursively)."""

    def cast(obj: object) -> object:
        if isinstance(obj, Tensor):
            return obj.to(dtype) if obj.is_floating_point() else obj
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.replace(obj, **{f.name: cast(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
        return obj

    return cast(layer)  # type: ignore[return-value]


class _Biases:
    """Adds a constant under the bias policy: to the bias component (``"bias"``) or split over tokens."""

    def __init__(self, policy: BiasPolicy, n_pos: int, dtype: torch.dtype, device: torch.device) -> None:
        self.policy = policy
        self.n_comp = n_pos + (1 if policy == "bias" else 0)
        own = torch.zeros(self.n_comp, 1, n_pos, dtype=dtype, device=device)  # [component, 1, pos]
        own[:n_pos, 0] = torch.eye(n_pos, dtype=dtype, device=device)
        self.own = own
        self.rows = torch.tensor([n_pos] if policy == "bias" else [], dtype=torch.long, device=device)
        self.none = torch.tensor([], dtype=torch.long, device=device)

    def add(self, V: Tensor, b: Tensor | None, own: Tensor | None = None) -> Tensor:
        return V if b is None else add_bias(V, b, self.policy, own=self.own if own is None else own)

    def norm(self, x: Tensor, scale: Tensor, norm: NormView) -> Tensor:
        """Frozen-scale LayerNorm of each component, then its bias ``β``."""
        if self.policy == "bias":
            return apply_norm(x, scale, norm, self.rows)
        return self.add(apply_norm(x, scale, dataclasses.replace(norm, b=None), self.none), norm.b)

    def activation(self, keys: Tensor, pre: Tensor, post: Tensor, approx: Approx, own: Tensor | None = None) -> Tensor:
        shares, offset = approx.shares(keys, pre, post, self.rows)
        return shares if offset is None else self.add(shares, offset, own)


def _attention(X: Tensor, A: Tensor, attn: AttnView, layer: int, bias: _Biases) -> Tensor:
    """``R = X + attention(X)`` with the attention biases placed as the module docstring says."""
    if bias.policy == "bias":
        return X + attention(X, A, attn, bias.rows)
    out = attention(X, A, dataclasses.replace(attn, b_V=None, b_O=None), bias.none)
    value_bias = torch.einsum("he,hed->hd", attn.b_V, attn.W_O)  # b_V^h W_O^h, [head, d_model]
    if layer == 0:  # the first layer's b_V rides with the attended token k: Σ_h A^h[i, k] b_V^h W_O^h
        n_pos = X.shape[2]
        out[:n_pos] += torch.einsum("bhik,hd->kbid", A, value_bias)
        b_att = attn.b_O
    else:
        b_att = value_bias.sum(0) + attn.b_O
    return bias.add(X + out, b_att)  # weights computed on Z + residual, as in the official code


def replay_encoder(
    run: EncoderRun,
    head: SequenceClassificationHead | MLMHead,
    *,
    policy: BiasPolicy,
    approx: Approximations,
    keep: Callable[[str], bool],
) -> ReplayOutput:
    """Replay the encoder and head per input-token component.

    Args:
        run: frozen coefficients and weights from :func:`~depass_tl.decompx.capture.capture_encoder`.
        head: the head to carry the decomposition through.
        policy: bias policy (see :mod:`depass_tl.decompx.bias`).
        approx: the activation linearisations and ``include_ffn``.
        keep: which hook names to store.

    Returns:
        The :class:`ReplayOutput`; components are ``tok0 … tok{pos-1}`` (+ ``bias`` under ``"bias"``).
    """
    embed = run.embed
    batch, n_pos, d_model = embed.shape
    dtype, device = embed.dtype, embed.device
    bias = _Biases(policy, n_pos, dtype, device)
    X = torch.zeros(bias.n_comp, batch, n_pos, d_model, dtype=dtype, device=device)
    X[:n_pos] = torch.eye(n_pos, dtype=dtype, device=device)[:, None, :, None] * embed[None]  # X[k, b, i] = δ_ik e_i
    hooks: dict[str, Tensor] = {}

    def store(name: str, value: Tensor) -> None:
        if keep(name):
            hooks[name] = value

    store("hook_full_embed", X)
    for layer, view in enumerate(run.view.layers):
        lw = _cast(view, dtype)
        p = f"blocks.{layer}."
        store(p + "hook_resid_pre", X)
        R = _attention(X, run.pattern(layer), lw.attn, layer, bias)
        store(p + "hook_attn_out", R - X)
        store(p + "hook_resid_mid", R)
        L1 = bias.norm(R, run.ln1_scale(layer), lw.ln1)
        if approx.include_ffn:
            pre, post = run.mlp(layer)
            U = bias.add(linear(L1, lw.mlp.W_in), lw.mlp.b_in)  # [component, batch, pos, d_mlp]
            mlp_out = bias.add(linear(bias.activation(U, pre, post, approx.ffn), lw.mlp.W_out), lw.mlp.b_out)
        else:  # the official include_FFN=False: the FFN's output is left out of the decomposition
            mlp_out = torch.zeros_like(L1)
        store(p + "hook_mlp_out", mlp_out)
        S = L1 + mlp_out
        store(p + "hook_resid_post", S)
        X = bias.norm(S, run.ln2_scale(layer), lw.ln2)
        store(p + "hook_normalized_resid_post", X)

    final = run.final_resid
    if isinstance(head, SequenceClassificationHead):
        own_cls = bias.own[:, :, 0]  # [component, 1]: the [CLS] token
        W_pool, b_pool = head.W_pool.to(X), head.b_pool.to(X)
        pre = final[:, 0] @ W_pool + b_pool  # clean pre-tanh [batch, d_model]
        P = bias.add(X[:, :, 0] @ W_pool, b_pool, own_cls)
        P = bias.activation(P, pre, torch.tanh(pre), approx.head, own_cls)
        Y = bias.add(P @ head.W_cls.to(X), head.b_cls.to(X), own_cls)
        return ReplayOutput(hooks=hooks, pooler=P, head_logits=Y)

    pre = head.dense_pre(final)
    D = bias.add(X @ head.W.to(X), head.b.to(X))
    G = bias.activation(D, pre, F.gelu(pre), approx.head)
    ln = NormView("LN", head.ln_w.to(X), head.ln_b.to(X))
    Lm = bias.norm(G, layer_norm_scale(F.gelu(pre), head.eps), ln)
    T = Lm @ head.W_U.to(X)  # [component, batch, pos, n_tokens]
    # The unembedding bias is split per requested token, so a token's split does not depend on
    # which other ids were requested.
    T = add_bias(T[..., None], head.b_U.to(X)[:, None], policy, own=bias.own[..., None])[..., 0]
    return ReplayOutput(hooks=hooks, pooler=None, head_logits=T)
