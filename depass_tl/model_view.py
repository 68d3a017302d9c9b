"""A backend-neutral, read-only view of the weights the replay needs: plain dataclasses of tensors.

The replay engine never touches a model object. A backend (:mod:`depass_tl.backends`: one module per
model class, e.g. ``HookedTransformer`` or ``TransformerBridge``) reads a model's config and weights
once into a :class:`ModelView` (no copies of unchanged weights; they share storage with the model's
parameters), refusing what the replay does not handle; everything downstream reads only these views.
Encoders (BERT, for DecompX) are read into an :class:`EncoderView` the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "NormView", "AttnView", "MLPView", "ExpertView", "MoEView", "BlockView", "ModelView", "EncoderLayerView",
    "MLMHeadView", "EncoderView",
]

NormKind = Literal["LN", "LNPre", "RMS", "RMSPre", "none"]
MLPKind = Literal["standard", "gated"]


@dataclass(frozen=True)
class NormView:
    """A norm layer: ``kind`` decides centring; ``w`` / ``b`` are ``[d]`` or None."""

    kind: NormKind
    w: Tensor | None
    b: Tensor | None

    def to(self, dtype: torch.dtype) -> NormView:
        """The same norm with its weights in ``dtype`` (no copy where they already are)."""
        return NormView(self.kind, None if self.w is None else self.w.to(dtype), None if self.b is None else self.b.to(dtype))


@dataclass(frozen=True)
class AttnView:
    """Value/output path of one attention layer (GQA kept unexpanded).

    Shapes: ``W_V [n_kv, d_model, d_head]``, ``b_V [n_kv, d_head]``, ``W_O [n_heads, d_head, d_model]``,
    ``b_O [d_model]``; ``kv_of_head [n_heads]`` maps each query head to its kv head.
    """

    W_V: Tensor
    b_V: Tensor | None
    W_O: Tensor
    b_O: Tensor | None
    kv_of_head: Tensor
    clip_qkv: float | None = None


@dataclass(frozen=True)
class MLPView:
    """One MLP: ``W_in [d_model, d_mlp]``, ``W_gate`` (gated only), ``W_out [d_mlp, d_model]``.

    ``act_fn`` is ``cfg.act_fn``; ``solu`` / ``solu_ln`` couple the neurons (``post = pre * softmax(pre)``)
    and ``ln`` is the inner LayerNorm over ``d_mlp`` of ``solu_ln`` (None otherwise). TL's gated MLP with
    ``solu_ln`` never reads ``W_in`` / ``b_in``; it is viewed as the standard ``solu_ln`` MLP it computes
    (``W_in`` := ``W_gate``, no ``b_in``).
    """

    kind: MLPKind
    W_in: Tensor
    b_in: Tensor | None
    W_gate: Tensor | None
    W_out: Tensor
    b_out: Tensor | None
    act_fn: str = ""
    ln: NormView | None = None

    @property
    def solu(self) -> bool:
        return self.act_fn in ("solu", "solu_ln")


@dataclass(frozen=True)
class ExpertView:
    """One MoE expert (a gated MLP without biases): ``W_gate``, ``W_in`` ``[d_model, d_mlp]``, ``W_out [d_mlp, d_model]``."""

    W_gate: Tensor
    W_in: Tensor
    W_out: Tensor


@dataclass(frozen=True)
class MoEView:
    """A Mixtral-style mixture of experts; routing is frozen from the clean run (see capture)."""

    experts: tuple[ExpertView, ...]
    experts_per_token: int
    norm_topk_prob: bool
    kind: Literal["moe"] = "moe"


@dataclass(frozen=True)
class BlockView:
    """One block. ``ln1_post`` / ``ln2_post``: Gemma-2/3 norms on the sublayer outputs (else None);
    ``parallel``: the MLP reads ``resid_pre`` like attention (GPT-J, NeoX), no ``hook_resid_mid``."""

    ln1: NormView
    attn: AttnView
    ln2: NormView | None
    mlp: MLPView | MoEView | None
    ln1_post: NormView | None = None
    ln2_post: NormView | None = None
    parallel: bool = False


@dataclass(frozen=True)
class ModelView:
    """Everything the replay reads from a model, as tensors and plain values.

    ``backend`` names the backend the view was read by (:attr:`depass_tl.backends.Backend.name`, e.g.
    ``"HookedTransformer"``; metadata only, the replay ignores it). ``clean_dtype`` is the lowest
    precision the model's own forward pass computes in: ``dtype`` except where the model's modules cast
    (e.g. a float64 Bridge whose Hugging Face / TL-native RMS norms normalise in float32); the
    completeness guard's tolerance reads it, since no replay reproduces the clean run's rounding.
    """

    blocks: tuple[BlockView, ...]
    ln_final: NormView
    W_U: Tensor
    b_U: Tensor | None
    n_layers: int
    n_heads: int
    d_model: int
    d_vocab: int
    attn_only: bool
    has_pos_embed_in_resid: bool
    output_logits_soft_cap: float | None
    dtype: torch.dtype
    device: torch.device
    backend: str = "HookedTransformer"
    clean_dtype: torch.dtype | None = None

    @property
    def clean_run_dtype(self) -> torch.dtype:
        """``clean_dtype`` when set, else ``dtype``."""
        return self.dtype if self.clean_dtype is None else self.clean_dtype


@dataclass(frozen=True)
class EncoderLayerView:
    """One post-LN encoder layer (BERT): ``resid_mid = x + attn(x)``, ``h = ln1(resid_mid)``,
    ``resid_post = h + mlp(h)``, output ``ln2(resid_post)``. ``ln1`` / ``ln2`` are ``"LN"`` norms."""

    attn: AttnView
    ln1: NormView
    mlp: MLPView
    ln2: NormView


@dataclass(frozen=True)
class MLMHeadView:
    """A BERT masked-LM head: ``ln(act(x W + b)) W_U + b_U``; ``act_fn`` names the activation."""

    W: Tensor
    b: Tensor
    act_fn: str
    ln: NormView
    eps: float
    W_U: Tensor
    b_U: Tensor | None


@dataclass(frozen=True)
class EncoderView:
    """Everything DecompX reads from a BERT-style encoder, as tensors and plain values.

    ``act`` is the FFN activation as the model computes it (a callable; its tangent slopes are taken
    by autograd for ``ffn_approx="gelu_la"``); ``act_fn`` its name. ``pooler`` / ``classifier`` are
    ``(W [d_in, d_out], b)`` of a sequence-classification head and ``mlm`` a masked-LM head, when the
    model has them (a ``HookedEncoder``'s classification head is supplied by the user instead).
    """

    layers: tuple[EncoderLayerView, ...]
    act: Callable[[Tensor], Tensor]
    act_fn: str
    eps: float
    d_model: int
    d_vocab: int
    n_ctx: int
    n_token_types: int
    dtype: torch.dtype
    device: torch.device
    pooler: tuple[Tensor, Tensor] | None = None
    classifier: tuple[Tensor, Tensor] | None = None
    mlm: MLMHeadView | None = None
    backend: str = "HookedEncoder"
