"""Read a ``TransformerBridge`` (TL 3.x / 4.x) into a :class:`~depass_tl.model_view.ModelView`.

The Bridge registers the HookedTransformer hook names (in compatibility mode and in raw mode), so
capture and the replay are shared with the HookedTransformer backend. Only the weights differ
(reference/transformerlens.md §4.3), and this module absorbs those differences:

* GQA: ``attn.W_V`` / ``b_V`` are ``[n_kv, ...]`` already (kept unexpanded, as the view wants).
* Missing biases: ``b_V`` / ``b_O`` / ``b_in`` / ``b_out`` are None, or raise (``TypeError`` in 3.9,
  ``AttributeError`` in 4.x); both read as "no bias".
* Norms: ``uses_rms_norm`` tells RMS from LN (the class name does not). After
  ``enable_compatibility_mode()`` the weights are folded (``w`` = 1, ``b`` = 0) but
  ``cfg.normalization_type`` still says ``"LN"`` / ``"RMS"``: the view reads the module, never the flag.
* Gemma-family offset norms (``cfg.rmsnorm_uses_offset``): the gain is ``1 + w``.
* Post-norms (Gemma-2/3): detected by the ``ln1_post`` / ``ln2_post`` modules (TL 3.9 leaves
  ``cfg.use_normalization_before_and_after`` False).

Refused with :class:`~depass_tl.errors.UnsupportedModelError`: mixture-of-experts blocks (the Bridge
exposes neither expert weights nor per-expert hooks), encoders (a BERT Bridge goes to DecompX,
:mod:`~depass_tl.backends.bert_bridge`, before this backend is asked), ``clip_qkv`` and any module
layout not listed above.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from depass_tl.backends.base import Backend, class_named
from depass_tl.backends.common import check_supported, maybe_bias, soft_cap, zero_biases_known
from depass_tl.errors import UnsupportedModelError
from depass_tl.model_view import AttnView, BlockView, MLPView, ModelView, NormView

__all__ = ["BACKEND", "is_bridge", "optional_tensor", "read_bridge_view"]


def optional_tensor(module: Any, name: str) -> Tensor | None:
    """A weight or bias the Bridge may not have: None when absent, None-valued or raising."""
    try:
        value = getattr(module, name)
    except (AttributeError, TypeError, KeyError):
        return None
    return value if isinstance(value, Tensor) else None


def _norm_view(module: Any, cfg: Any, where: str) -> NormView:
    if module is None or isinstance(getattr(module, "original_component", None), torch.nn.Identity):
        return NormView("none", None, None)  # absent, or an identity slot (TL's native model without norms)
    if not hasattr(module, "uses_rms_norm"):
        raise UnsupportedModelError(
            f"{where} is a {type(module).__name__}, not a TransformerBridge normalization bridge; "
            "depass_tl reads LayerNorm and RMSNorm bridges only."
        )
    rms = bool(module.uses_rms_norm)
    w = optional_tensor(module, "w")
    if w is None:
        w = optional_tensor(module, "weight")
    w = None if w is None else w.detach()
    if w is not None and bool(getattr(cfg, "rmsnorm_uses_offset", False)):
        w = 1.0 + w  # Gemma: the stored weight is an offset from 1 (a new tensor; the model is untouched)
    if rms:
        return NormView("RMS", w, None)
    b = optional_tensor(module, "b")
    if b is None:
        b = optional_tensor(module, "bias")
    return NormView("LN", w, maybe_bias(b))


def _attn_view(attn: Any, n_heads: int, layer: int) -> AttnView:
    W_V = optional_tensor(attn, "W_V")
    W_O = optional_tensor(attn, "W_O")
    if W_V is None or W_O is None:
        raise UnsupportedModelError(
            f"blocks.{layer}.attn ({type(attn).__name__}) exposes no W_V / W_O; this attention bridge is "
            "not supported by depass_tl."
        )
    n_kv = W_V.shape[0]
    if W_V.ndim != 3 or n_heads % n_kv != 0:
        raise UnsupportedModelError(
            f"blocks.{layer}.attn.W_V has shape {tuple(W_V.shape)}; expected [n_kv_heads, d_model, d_head] "
            f"with n_heads={n_heads} a multiple of n_kv_heads."
        )
    kv_of_head = torch.arange(n_heads, device=W_V.device) // (n_heads // n_kv)
    return AttnView(
        W_V.detach(), maybe_bias(optional_tensor(attn, "b_V")), W_O.detach(), maybe_bias(optional_tensor(attn, "b_O")),
        kv_of_head, None,
    )


def _is_moe(mlp: Any, cfg: Any) -> bool:
    return bool(getattr(cfg, "num_experts", None)) or "moe" in type(mlp).__name__.lower()


def _mlp_view(mlp: Any, cfg: Any, layer: int) -> MLPView:
    act_fn = str(getattr(cfg, "act_fn", "") or "")
    if _is_moe(mlp, cfg):
        raise UnsupportedModelError(
            f"blocks.{layer}.mlp is a mixture-of-experts block ({type(mlp).__name__}, "
            f"cfg.num_experts={getattr(cfg, 'num_experts', None)}). On a TransformerBridge the MoE block "
            "exposes no expert weights and no per-expert hooks (its mlp.hook_pre / hook_post are the "
            "block's d_model input and output), so the routing cannot be frozen. Use a dense model, or load "
            "the MoE model as a HookedTransformer (transformer-lens<4), where depass_tl replays it exactly."
        )
    if act_fn in ("solu", "solu_ln"):
        raise UnsupportedModelError(
            f"cfg.act_fn={act_fn!r} on a TransformerBridge is not replayed; use a HookedTransformer for SoLU models."
        )
    W_in, W_out = optional_tensor(mlp, "W_in"), optional_tensor(mlp, "W_out")
    if W_in is None or W_out is None:
        raise UnsupportedModelError(
            f"blocks.{layer}.mlp ({type(mlp).__name__}) exposes no W_in / W_out; this MLP bridge is not supported."
        )
    W_gate = optional_tensor(mlp, "W_gate")
    b_in, b_out = maybe_bias(optional_tensor(mlp, "b_in")), maybe_bias(optional_tensor(mlp, "b_out"))
    if W_gate is not None:
        if maybe_bias(optional_tensor(mlp, "b_gate")) is not None:
            raise UnsupportedModelError(
                f"blocks.{layer}.mlp has a gate bias (b_gate); gated MLPs with a gate bias are not replayed."
            )
        return MLPView("gated", W_in.detach(), b_in, W_gate.detach(), W_out.detach(), b_out, act_fn, None)
    return MLPView("standard", W_in.detach(), b_in, None, W_out.detach(), b_out, act_fn, None)


def _refuse_encoders(model: Any, cfg: Any) -> None:
    arch = str(getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None) or "")
    encoder = bool(getattr(cfg, "is_encoder", False)) or any(
        word in arch for word in ("Bert", "Roberta", "Electra", "DistilBert", "T5")
    )
    if encoder:
        raise UnsupportedModelError(
            f"this TransformerBridge wraps an encoder ({arch or type(model).__name__}). DePass on the Bridge "
            "supports decoder-only models; DecompX supports BERT: a Bridge wrapping a BertForMaskedLM, or "
            "transformers' BertForSequenceClassification / BertForMaskedLM passed to run_with_depass directly."
        )


def _clip_qkv(model: Any, cfg: Any) -> float | None:
    """The q/k/v clamp: TL's ``cfg.clip_qkv``, else the wrapped HF model's (TL 4.3 does not map OLMo's into cfg)."""
    clip = getattr(cfg, "clip_qkv", None)
    if clip is None:
        clip = getattr(getattr(getattr(model, "original_model", None), "config", None), "clip_qkv", None)
    return clip


def read_bridge_view(model: Any) -> ModelView:
    """Read a ``TransformerBridge``'s config and weights (no copies of model tensors; nothing modified).

    Raises:
        UnsupportedModelError: MoE, encoders, ``clip_qkv``, or a module layout the replay does not know.
    """
    with zero_biases_known(model):  # one batched zero check for every bias, not one sync each
        return _read_bridge_view(model)


def _read_bridge_view(model: Any) -> ModelView:
    cfg = model.cfg
    _refuse_encoders(model, cfg)
    check_supported(cfg)
    clip = _clip_qkv(model, cfg)
    if clip is not None:
        raise UnsupportedModelError(
            f"clip_qkv={clip} (q/k/v clamped, as in OLMo) on a TransformerBridge is not replayed (the pre-clamp "
            "value is not hooked); use a HookedTransformer (TransformerLens < 4)."
        )
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
    blocks = []
    for layer, block in enumerate(model.blocks):
        mlp_module = getattr(block, "mlp", None)
        mlp = None if mlp_module is None or cfg.attn_only else _mlp_view(mlp_module, cfg, layer)
        ln2_module = getattr(block, "ln2", None)
        if mlp is not None and ln2_module is None:
            raise UnsupportedModelError(
                f"blocks.{layer} has an MLP but no ln2 (one shared norm, as in GPT-J / Falcon); not supported "
                "on the TransformerBridge yet."
            )
        ln2 = None if mlp is None else _norm_view(ln2_module, cfg, f"blocks.{layer}.ln2")
        ln1_post = getattr(block, "ln1_post", None)
        ln2_post = getattr(block, "ln2_post", None)
        blocks.append(
            BlockView(
                _norm_view(getattr(block, "ln1", None), cfg, f"blocks.{layer}.ln1"),
                _attn_view(block.attn, cfg.n_heads, layer),
                ln2,
                mlp,
                None if ln1_post is None else _norm_view(ln1_post, cfg, f"blocks.{layer}.ln1_post"),
                None if ln2_post is None or mlp is None else _norm_view(ln2_post, cfg, f"blocks.{layer}.ln2_post"),
                parallel and mlp is not None,
            )
        )
    ln_final = _norm_view(getattr(model, "ln_final", None), cfg, "ln_final")
    W_U = optional_tensor(model.unembed, "W_U")
    if W_U is None:
        raise UnsupportedModelError("the TransformerBridge's unembed exposes no W_U; cannot attribute logits.")
    W_U = W_U.detach()
    d_vocab_out = getattr(cfg, "d_vocab_out", -1) or -1
    return ModelView(
        blocks=tuple(blocks),
        ln_final=ln_final,
        W_U=W_U,
        b_U=maybe_bias(optional_tensor(model.unembed, "b_U")),
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_model=cfg.d_model,
        d_vocab=d_vocab_out if d_vocab_out > 0 else cfg.d_vocab,
        attn_only=bool(getattr(cfg, "attn_only", False)),
        has_pos_embed_in_resid=getattr(cfg, "positional_embedding_type", "standard") == "standard",
        output_logits_soft_cap=soft_cap(cfg),
        dtype=W_U.dtype,
        device=W_U.device,
        backend="TransformerBridge",
        clean_dtype=_clean_dtype(model, W_U.dtype),
    )


def _clean_dtype(model: Any, dtype: torch.dtype) -> torch.dtype:
    """float32 for a float64 model with RMS norms that cast to float32 (Hugging Face's Llama-family
    ``*RMSNorm`` and TL's ``NativeRMSNorm`` normalise in float32 whatever the model's dtype), else ``dtype``."""
    if dtype != torch.float64:
        return dtype
    casts = any(type(m).__name__.endswith("RMSNorm") and "Pre" not in type(m).__name__ for m in model.modules())
    return torch.float32 if casts else dtype


def is_bridge(model: Any) -> bool:
    """True for a ``transformer_lens.model_bridge.TransformerBridge`` (or subclass).

    Matched by class name along the MRO, so the check needs no TL import and works on every TL
    version (TL 2.x has no Bridge at all).
    """
    return class_named(model, "TransformerBridge")


BACKEND = Backend(
    name="TransformerBridge",
    matches=is_bridge,
    read_view=read_bridge_view,
    classes=(("transformer_lens.model_bridge", "TransformerBridge"),),
    priority=20,
)
