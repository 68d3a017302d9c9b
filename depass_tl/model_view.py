"""A backend-neutral, read-only view of the weights the replay needs.

The replay engine never touches a model object: :func:`read_model_view` reads the config and the
weights of a ``HookedTransformer`` once and returns plain tensors (no copies; they share storage with
the model's parameters). Features the replay does not handle are refused here with an
:class:`~depass_tl.errors.UnsupportedModelError` that names the config field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassError, UnsupportedModelError

__all__ = ["NormView", "AttnView", "MLPView", "BlockView", "ModelView", "read_model_view"]

NormKind = Literal["LN", "LNPre", "RMS", "RMSPre", "none"]
MLPKind = Literal["standard", "gated"]


@dataclass(frozen=True)
class NormView:
    """A norm layer: ``kind`` decides centring; ``w`` / ``b`` are ``[d]`` or None."""

    kind: NormKind
    w: Tensor | None
    b: Tensor | None


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


@dataclass(frozen=True)
class MLPView:
    """One MLP: ``W_in [d_model, d_mlp]``, ``W_gate`` (gated only), ``W_out [d_mlp, d_model]``."""

    kind: MLPKind
    W_in: Tensor
    b_in: Tensor | None
    W_gate: Tensor | None
    W_out: Tensor
    b_out: Tensor | None


@dataclass(frozen=True)
class BlockView:
    ln1: NormView
    attn: AttnView
    ln2: NormView | None
    mlp: MLPView | None


@dataclass(frozen=True)
class ModelView:
    """Everything the replay reads from a model, as tensors and plain values."""

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


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    return getattr(cfg, name, default)


_REFUSED_FLAGS: tuple[tuple[str, str], ...] = (
    ("parallel_attn_mlp", "the MLP reads resid_pre in parallel with attention"),
    ("use_normalization_before_and_after", "Gemma-2/3 post-norms are not replayed yet"),
    ("post_embedding_ln", "a LayerNorm after the embedding is not replayed yet"),
    ("use_split_qkv_input", "split q/k/v inputs give ln1 a per-head scale"),
    ("use_attn_in", "per-head attention inputs give ln1 a per-head scale"),
    ("use_attention_sinks", "attention sinks are not replayed yet"),
)


def check_supported(cfg: Any) -> None:
    """Raise :class:`UnsupportedModelError` naming the first config field the replay cannot handle.

    Args:
        cfg: a ``HookedTransformerConfig``.

    Raises:
        UnsupportedModelError: the field, its value, and what to do.
    """
    for field, why in _REFUSED_FLAGS:
        if _get(cfg, field, False):
            raise UnsupportedModelError(
                f"cfg.{field}=True is not supported by depass_tl yet ({why}). "
                f"Use a model without it, or follow the architecture-support issue for progress."
            )
    if _get(cfg, "num_experts", None):
        raise UnsupportedModelError(
            f"cfg.num_experts={cfg.num_experts}: mixture-of-experts MLPs are not replayed yet. "
            "Use a dense model for now."
        )
    if _get(cfg, "act_fn", None) in ("solu", "solu_ln"):
        raise UnsupportedModelError(
            f"cfg.act_fn={cfg.act_fn!r}: SoLU couples neurons through a softmax and is not replayed yet. "
            "Use an elementwise activation (gelu, gelu_new, relu, silu, ...)."
        )
    if _get(cfg, "clip_qkv", None) is not None:
        raise UnsupportedModelError(
            f"cfg.clip_qkv={cfg.clip_qkv}: clamping the values is nonlinear on the value path and is not "
            "replayed yet. Set clip_qkv=None or use another model."
        )
    n_devices = _get(cfg, "n_devices", 1) or 1
    if n_devices > 1:
        raise UnsupportedModelError(
            f"cfg.n_devices={n_devices}: models split over several devices are not replayed yet. "
            "Load the model on one device."
        )
    arch = _get(cfg, "original_architecture", None)
    try:
        from transformer_lens.loading_from_pretrained import POST_NORM_ARCHITECTURES  # type: ignore
    except ImportError:  # older TL: no post-norm decoder architectures at all
        POST_NORM_ARCHITECTURES = ()
    if arch is not None and arch in POST_NORM_ARCHITECTURES:
        raise UnsupportedModelError(
            f"cfg.original_architecture={arch!r} is a post-norm decoder (norms on the sublayer outputs); "
            "it is not replayed yet."
        )


def _norm_view(module: Any) -> NormView:
    name = type(module).__name__
    if name == "LayerNorm":
        return NormView("LN", module.w.detach(), module.b.detach())
    if name == "LayerNormPre":
        return NormView("LNPre", None, None)
    if name == "RMSNorm":
        return NormView("RMS", module.w.detach(), None)
    if name == "RMSNormPre":
        return NormView("RMSPre", None, None)
    if name == "Identity":
        return NormView("none", None, None)
    raise UnsupportedModelError(
        f"norm module of type {name!r} is not supported; expected LayerNorm, LayerNormPre, RMSNorm, "
        "RMSNormPre or no norm."
    )


def _maybe(t: Any) -> Tensor | None:
    if t is None:
        return None
    t = t.detach()
    return None if bool((t == 0).all()) else t


def _attn_view(attn: Any, n_heads: int) -> AttnView:
    W_V = attn._W_V if hasattr(attn, "_W_V") else attn.W_V
    b_V = attn._b_V if hasattr(attn, "_b_V") else attn.b_V
    n_kv = W_V.shape[0]
    if n_heads % n_kv != 0:
        raise UnsupportedModelError(f"n_heads={n_heads} is not a multiple of the {n_kv} key/value heads.")
    kv_of_head = torch.arange(n_heads, device=W_V.device) // (n_heads // n_kv)
    return AttnView(W_V.detach(), _maybe(b_V), attn.W_O.detach(), _maybe(attn.b_O), kv_of_head)


def _mlp_view(mlp: Any, gated: bool) -> MLPView:
    if gated:
        return MLPView(
            "gated", mlp.W_in.detach(), _maybe(mlp.b_in), mlp.W_gate.detach(), mlp.W_out.detach(), _maybe(mlp.b_out)
        )
    return MLPView("standard", mlp.W_in.detach(), _maybe(mlp.b_in), None, mlp.W_out.detach(), _maybe(mlp.b_out))


def _soft_cap(cfg: Any) -> float | None:
    cap = _get(cfg, "output_logits_soft_cap", None)
    return float(cap) if cap is not None and cap > 0 else None


def read_model_view(model: Any) -> ModelView:
    """Read a ``HookedTransformer``'s config and weights into a :class:`ModelView`.

    Args:
        model: a ``transformer_lens.HookedTransformer`` (or subclass).

    Returns:
        The view; its tensors share storage with the model (nothing is copied or modified).

    Raises:
        DePassError: the object is not a HookedTransformer.
        UnsupportedModelError: a config feature the replay does not handle.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "blocks") or not hasattr(model, "unembed"):
        raise DePassError(
            f"expected a transformer_lens.HookedTransformer, got {type(model).__name__}. "
            "Load one with HookedTransformer.from_pretrained(...) or build it from a HookedTransformerConfig."
        )
    check_supported(cfg)
    gated = bool(_get(cfg, "gated_mlp", False))
    blocks = []
    for block in model.blocks:
        ln2 = None if cfg.attn_only else _norm_view(block.ln2)
        mlp = None if cfg.attn_only else _mlp_view(block.mlp, gated)
        blocks.append(BlockView(_norm_view(block.ln1), _attn_view(block.attn, cfg.n_heads), ln2, mlp))
    ln_final = _norm_view(model.ln_final) if hasattr(model, "ln_final") else NormView("none", None, None)
    pos_type = _get(cfg, "positional_embedding_type", "standard")
    return ModelView(
        blocks=tuple(blocks),
        ln_final=ln_final,
        W_U=model.unembed.W_U.detach(),
        b_U=_maybe(model.unembed.b_U),
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_model=cfg.d_model,
        d_vocab=cfg.d_vocab_out if _get(cfg, "d_vocab_out", -1) > 0 else cfg.d_vocab,
        attn_only=bool(cfg.attn_only),
        has_pos_embed_in_resid=pos_type == "standard",
        output_logits_soft_cap=_soft_cap(cfg),
        dtype=model.W_U.dtype,
        device=model.W_U.device,
    )
