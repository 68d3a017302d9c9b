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

__all__ = [
    "NormView", "AttnView", "MLPView", "ExpertView", "MoEView", "BlockView", "ModelView", "read_model_view",
    "check_supported",
]

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


def check_supported(cfg: Any) -> None:
    """Raise :class:`UnsupportedModelError` naming the first config field the replay cannot handle.

    Supported (see docs/architectures.md): LN / LNPre / RMS / RMSPre / no norm, ``final_rms``,
    ``post_embedding_ln``, ``parallel_attn_mlp``, ``attn_only``, GQA, ``use_split_qkv_input``,
    ``use_attn_in``, ``use_attn_result``, ``use_normalization_before_and_after`` (Gemma-2/3),
    attention sinks, ``clip_qkv``, every activation incl. ``solu`` / ``solu_ln``, gated MLPs,
    Mixtral-style MoE, output logit soft caps, and every pattern-only feature.

    Args:
        cfg: a ``HookedTransformerConfig``.

    Raises:
        UnsupportedModelError: the field, its value, and what to do.
    """
    n_devices = _get(cfg, "n_devices", 1) or 1
    if n_devices > 1:
        raise UnsupportedModelError(
            f"cfg.n_devices={n_devices}: models split over several devices are not replayed yet. "
            "Load the model on one device (n_devices=1) and run depass_tl there."
        )
    if _get(cfg, "load_in_4bit", False):
        raise UnsupportedModelError(
            "cfg.load_in_4bit=True: 4-bit quantised weights cannot be read as plain tensors by the replay. "
            "Load the model unquantised (load_in_4bit=False), e.g. in bfloat16."
        )
    arch = _get(cfg, "original_architecture", None)
    try:
        from transformer_lens.loading_from_pretrained import POST_NORM_ARCHITECTURES  # type: ignore
    except ImportError:  # older TL: no post-norm decoder architectures at all
        POST_NORM_ARCHITECTURES = ()
    if arch is not None and arch in POST_NORM_ARCHITECTURES:
        raise UnsupportedModelError(
            f"cfg.original_architecture={arch!r} is a post-norm decoder (ln1/ln2 act on the sublayer outputs, "
            "so ln1.hook_scale is not the input norm); it is not replayed yet. Use a pre-norm model."
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


def _attn_view(attn: Any, n_heads: int, clip_qkv: float | None) -> AttnView:
    W_V = attn._W_V if hasattr(attn, "_W_V") else attn.W_V
    b_V = attn._b_V if hasattr(attn, "_b_V") else attn.b_V
    n_kv = W_V.shape[0]
    if n_heads % n_kv != 0:
        raise UnsupportedModelError(f"n_heads={n_heads} is not a multiple of the {n_kv} key/value heads.")
    kv_of_head = torch.arange(n_heads, device=W_V.device) // (n_heads // n_kv)
    return AttnView(W_V.detach(), _maybe(b_V), attn.W_O.detach(), _maybe(attn.b_O), kv_of_head, clip_qkv)


def _mlp_view(mlp: Any, cfg: Any) -> MLPView | MoEView:
    name = type(mlp).__name__
    act_fn = str(_get(cfg, "act_fn", "") or "")
    if name == "MoE":
        experts = tuple(
            ExpertView(e.W_gate.weight.detach().T, e.W_in.weight.detach().T, e.W_out.weight.detach().T)
            for e in mlp.experts
        )
        return MoEView(experts, int(cfg.experts_per_token), bool(_get(cfg, "norm_topk_prob", False)))
    if name not in ("MLP", "GatedMLP"):
        raise UnsupportedModelError(
            f"MLP module of type {name!r} (cfg.num_experts={_get(cfg, 'num_experts', None)}, "
            f"cfg.act_fn={act_fn!r}) is not replayed; supported: MLP, GatedMLP and the Mixtral-style MoE. "
            "GPT-OSS experts clamp their inputs and add a router bias: use a dense or Mixtral-style model."
        )
    ln = None
    if getattr(mlp, "ln", None) is not None and getattr(mlp, "hook_mid", None) is not None:
        ln = _norm_view(mlp.ln)
    if name == "GatedMLP" and ln is None:
        return MLPView(
            "gated", mlp.W_in.detach(), _maybe(mlp.b_in), mlp.W_gate.detach(), mlp.W_out.detach(),
            _maybe(mlp.b_out), act_fn, None,
        )
    if name == "GatedMLP":  # TL computes ln(solu(x W_gate)) W_out + b_out: W_in and b_in are unused
        return MLPView("standard", mlp.W_gate.detach(), None, None, mlp.W_out.detach(), _maybe(mlp.b_out), act_fn, ln)
    return MLPView(
        "standard", mlp.W_in.detach(), _maybe(mlp.b_in), None, mlp.W_out.detach(), _maybe(mlp.b_out), act_fn, ln
    )


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
    clip = _get(cfg, "clip_qkv", None)
    clip = None if clip is None else float(clip)
    parallel = bool(_get(cfg, "parallel_attn_mlp", False))
    blocks = []
    for block in model.blocks:
        ln2 = None if cfg.attn_only else _norm_view(block.ln2)
        mlp = None if cfg.attn_only else _mlp_view(block.mlp, cfg)
        # Gemma-2/3 post-norms: detected by module (a Bridge in 3.9 leaves the config flag False)
        ln1_post = _norm_view(block.ln1_post) if hasattr(block, "ln1_post") else None
        ln2_post = _norm_view(block.ln2_post) if hasattr(block, "ln2_post") and mlp is not None else None
        attn = _attn_view(block.attn, cfg.n_heads, clip)
        blocks.append(BlockView(_norm_view(block.ln1), attn, ln2, mlp, ln1_post, ln2_post, parallel and mlp is not None))
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
