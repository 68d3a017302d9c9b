"""One clean forward pass of a ``HookedEncoder`` under scoped hooks: the frozen coefficients.

This is the only module of :mod:`depass_tl.decompx` that registers hooks. They live inside
``encoder.hooks(...)``, which removes them on exit, also when the forward raises; the encoder's
parameters and settings are never changed. What is kept is copied (``detach().clone()``) and cast
to the replay dtype:

* ``hook_full_embed``: the embedding output (token + position + token-type embedding, embedding LN);
* per layer ``l``: ``blocks.{l}.attn.hook_pattern`` (frozen attention, masked keys exactly 0),
  ``blocks.{l}.ln1.hook_scale`` / ``ln2.hook_scale`` (frozen LN scales), and the GELU ratio
  ``hook_post / hook_pre`` of ``blocks.{l}.mlp`` (DecompX "ZO"; 0 where the pre-activation is 0);
* the clean residual-stream activations the result is checked against;
* for the MLM head, ``mlm_head.ln.hook_scale`` and the model's logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedEncoder

__all__ = ["EncoderRun", "LayerWeights", "RESID_HOOKS", "capture_encoder", "frozen_ratio"]

RESID_HOOKS: tuple[str, ...] = (
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
    "hook_normalized_resid_post",
)
"""Per-block TL hooks (``blocks.{l}.<name>``) that the replay decomposes, in forward order."""


@dataclass(frozen=True, eq=False)
class LayerWeights:
    """Weights of one ``BertBlock`` in TL layout (input dimension first), cast to the replay dtype."""

    W_V: Float[Tensor, "head_index d_model d_head"]
    b_V: Float[Tensor, "head_index d_head"]
    W_O: Float[Tensor, "head_index d_head d_model"]
    b_O: Float[Tensor, " d_model"]
    ln1_w: Float[Tensor, " d_model"]
    ln1_b: Float[Tensor, " d_model"]
    W_in: Float[Tensor, "d_model d_mlp"]
    b_in: Float[Tensor, " d_mlp"]
    W_out: Float[Tensor, "d_mlp d_model"]
    b_out: Float[Tensor, " d_model"]
    ln2_w: Float[Tensor, " d_model"]
    ln2_b: Float[Tensor, " d_model"]


@dataclass(frozen=True, eq=False)
class EncoderRun:
    """Everything the replay needs from one clean forward pass (immutable by convention).

    Attributes:
        embed: ``hook_full_embed`` ``[batch, pos, d_model]``.
        patterns: per layer ``[batch, head_index, query_pos, key_pos]``.
        ln1_scale, ln2_scale: per layer ``[batch, pos, 1]``.
        mlp_ratio: per layer frozen ``post / pre`` ``[batch, pos, d_mlp]``.
        layers: per-layer weights.
        clean: clean activations keyed by full TL hook name ``[batch, pos, d_model]``.
        mlm_scale: ``mlm_head.ln.hook_scale`` ``[batch, pos, 1]`` (MLM runs only).
        model_logits: the encoder's own MLM logits ``[batch, pos, d_vocab]`` (MLM runs only).
    """

    embed: Tensor
    patterns: tuple[Tensor, ...]
    ln1_scale: tuple[Tensor, ...]
    ln2_scale: tuple[Tensor, ...]
    mlp_ratio: tuple[Tensor, ...]
    layers: tuple[LayerWeights, ...]
    clean: dict[str, Tensor]
    mlm_scale: Tensor | None
    model_logits: Tensor | None

    @property
    def final_resid(self) -> Float[Tensor, "batch pos d_model"]:
        """Clean encoder output ``blocks.{L-1}.hook_normalized_resid_post``."""
        return self.clean[f"blocks.{len(self.layers) - 1}.hook_normalized_resid_post"]


def frozen_ratio(post: Tensor, pre: Tensor) -> Tensor:
    """Elementwise ``post / pre``, and 0 where ``pre == 0`` (valid for activations with f(0) = 0)."""
    nonzero = pre != 0
    return torch.where(nonzero, post / torch.where(nonzero, pre, torch.ones_like(pre)), torch.zeros_like(pre))


def _layer_weights(block: Any, dtype: torch.dtype) -> LayerWeights:
    def get(t: Tensor) -> Tensor:
        return t.detach().to(dtype).clone()

    return LayerWeights(
        W_V=get(block.attn.W_V),
        b_V=get(block.attn.b_V),
        W_O=get(block.attn.W_O),
        b_O=get(block.attn.b_O),
        ln1_w=get(block.ln1.w),
        ln1_b=get(block.ln1.b),
        W_in=get(block.mlp.W_in),
        b_in=get(block.mlp.b_in),
        W_out=get(block.mlp.W_out),
        b_out=get(block.mlp.b_out),
        ln2_w=get(block.ln2.w),
        ln2_b=get(block.ln2.b),
    )


def capture_encoder(
    encoder: HookedEncoder,
    tokens: Int[Tensor, "batch pos"],
    *,
    token_type_ids: Int[Tensor, "batch pos"] | None,
    attention_mask: Int[Tensor, "batch pos"] | None,
    dtype: torch.dtype,
    with_mlm: bool,
) -> EncoderRun:
    """Run ``encoder`` once under scoped hooks and return the frozen coefficients.

    Inputs are assumed validated (see :func:`depass_tl.decompx.api.run_decompx`).

    Args:
        encoder: the ``HookedEncoder`` (not modified).
        tokens: token ids.
        token_type_ids: segment ids (0/1) or None.
        attention_mask: 1 for real tokens, 0 for padding, or None.
        dtype: dtype of everything returned.
        with_mlm: also run the MLM head and keep its LN scale and the model's logits.

    Returns:
        The :class:`EncoderRun`.
    """
    n_layers = int(encoder.cfg.n_layers)
    store: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> None:
        store[hook.name] = act.detach().to(dtype).clone()

    names = ["hook_full_embed"]
    for layer in range(n_layers):
        p = f"blocks.{layer}."
        names += [p + "attn.hook_pattern", p + "ln1.hook_scale", p + "ln2.hook_scale"]
        names += [p + "mlp.hook_pre", p + "mlp.hook_post"]
        names += [p + h for h in RESID_HOOKS]
    if with_mlm:
        names.append("mlm_head.ln.hook_scale")

    model_logits: Tensor | None = None
    with torch.no_grad(), encoder.hooks(fwd_hooks=[(name, keep) for name in names]):
        if with_mlm:
            out = encoder(
                tokens,
                return_type="logits",
                token_type_ids=token_type_ids,
                one_zero_attention_mask=attention_mask,
            )
            model_logits = out.detach().to(dtype).clone()
        else:
            encoder.encoder_output(tokens, token_type_ids, attention_mask)

    clean = {"hook_full_embed": store["hook_full_embed"]}
    for layer in range(n_layers):
        for h in RESID_HOOKS:
            clean[f"blocks.{layer}.{h}"] = store[f"blocks.{layer}.{h}"]
    return EncoderRun(
        embed=store["hook_full_embed"],
        patterns=tuple(store[f"blocks.{i}.attn.hook_pattern"] for i in range(n_layers)),
        ln1_scale=tuple(store[f"blocks.{i}.ln1.hook_scale"] for i in range(n_layers)),
        ln2_scale=tuple(store[f"blocks.{i}.ln2.hook_scale"] for i in range(n_layers)),
        mlp_ratio=tuple(
            frozen_ratio(store[f"blocks.{i}.mlp.hook_post"], store[f"blocks.{i}.mlp.hook_pre"])
            for i in range(n_layers)
        ),
        layers=tuple(_layer_weights(block, dtype) for block in encoder.blocks),
        clean=clean,
        mlm_scale=store.get("mlm_head.ln.hook_scale"),
        model_logits=model_logits,
    )
