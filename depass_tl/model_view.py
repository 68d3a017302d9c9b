"""A backend-neutral, read-only view of the weights the replay needs.

The replay engine never touches a model object: :func:`read_model_view` reads the config and the
weights of a ``HookedTransformer`` (TL 2.x / 3.x) or a ``TransformerBridge`` (TL 3.x / 4.x, raw or in
compatibility mode) once and returns plain tensors (no copies of unchanged weights; they share
storage with the model's parameters). The two readers live in :mod:`depass_tl.backends`; this module
holds the backend-neutral dataclasses they fill. Features the replay does not handle are refused with
an :class:`~depass_tl.errors.UnsupportedModelError` that names the config field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassError, UnsupportedModelError

__all__ = [
    "NormView", "AttnView", "MLPView", "ExpertView", "MoEView", "BlockView", "ModelView", "read_model_view",
    "check_supported", "maybe_bias", "soft_cap",
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
    """Everything the replay reads from a model, as tensors and plain values.

    ``backend`` names the TL class the view was read from (metadata only; the replay ignores it).
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
    backend: Literal["HookedTransformer", "TransformerBridge"] = "HookedTransformer"


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
        cfg: a ``HookedTransformerConfig`` or a TransformerBridge's config.

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
    arch = _get(cfg, "original_architecture", None) or _get(cfg, "architecture", None)  # Bridge: architecture
    try:  # TL 3.x and 4.x (TL 4 removed loading_from_pretrained, which re-exported it in 3.x)
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES  # type: ignore
    except ImportError:  # older TL: no post-norm decoder architectures at all
        POST_NORM_ARCHITECTURES = ()
    if arch is not None and arch in POST_NORM_ARCHITECTURES:
        raise UnsupportedModelError(
            f"cfg.original_architecture={arch!r} is a post-norm decoder (ln1/ln2 act on the sublayer outputs, "
            "so ln1.hook_scale is not the input norm); it is not replayed yet. Use a pre-norm model."
        )


def maybe_bias(t: Any) -> Tensor | None:
    """A detached bias, or None when it is absent or all zeros (then the replay skips it)."""
    if t is None:
        return None
    t = t.detach()
    return None if bool((t == 0).all()) else t


def soft_cap(cfg: Any) -> float | None:
    """``cfg.output_logits_soft_cap`` as a float, None when off (TL uses -1 or 0 for "off")."""
    cap = _get(cfg, "output_logits_soft_cap", None)
    return float(cap) if cap is not None and cap > 0 else None


def read_model_view(model: Any) -> ModelView:
    """Read a TL model's config and weights into a :class:`ModelView`.

    Args:
        model: a ``transformer_lens.HookedTransformer`` (TL 2.x / 3.x) or a
            ``transformer_lens.model_bridge.TransformerBridge`` (TL 3.x / 4.x, with or without
            ``enable_compatibility_mode()``).

    Returns:
        The view; its tensors share storage with the model (nothing is modified).

    Raises:
        DePassError: the object is neither of those model classes.
        UnsupportedModelError: a config feature the replay does not handle.
    """
    from depass_tl.backends import is_bridge

    if is_bridge(model):
        from depass_tl.backends.bridge import read_bridge_view

        return read_bridge_view(model)
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "blocks") or not hasattr(model, "unembed"):
        raise DePassError(
            f"expected a transformer_lens.HookedTransformer, got {type(model).__name__} (a TransformerBridge "
            "works too). Load one with HookedTransformer.from_pretrained(...) (TL < 4) or "
            "TransformerBridge.boot_transformers(...) (TL >= 3), or build it from a HookedTransformerConfig."
        )
    from depass_tl.backends.hooked import read_hooked_view

    return read_hooked_view(model)
