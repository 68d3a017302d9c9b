"""A seeded random model of whichever TransformerLens is installed, from ``HookedTransformerConfig`` fields.

``random_model(**config)`` is the one-liner for examples, doctests and experiments that need *a* small
model and not a trained one:

* TL 2.x / 3.x: ``HookedTransformer(HookedTransformerConfig(**config))``;
* TL 4.x (no ``HookedTransformer``): ``TransformerBridge.boot_native(config)``, TL's own random
  TL-native model behind a Bridge, built in a fraction of a second with no Hugging Face model and no
  download. It registers the HookedTransformer hook names, so everything in depass_tl works on it.

The native Bridge supports LN / RMS / LNPre / RMSPre / no normalisation, ``final_rms``, ``gated_mlp``,
``attn_only``, GQA (``n_key_value_heads``), learned or rotary positions, attention and output soft caps
and the activations ``gelu``, ``gelu_new``, ``relu``, ``silu``, ``solu``, ``solu_ln``. Asking it for a
feature it cannot build (parallel attention + MLP, Gemma post-norms, mixture of experts, ALiBi,
shortformer, local attention, ...) raises :class:`~depass_tl.errors.UnsupportedModelError` naming the
field, never a silently different model. Two differences from ``HookedTransformer`` remain by TL's
design: its rotary embedding rotates adjacent pairs of dimensions (HookedTransformer's
``rotary_adjacent_pairs=True``), and its RMS norms and param-free norms compute in float32 whatever
the model's dtype. The same seed gives different weights on the two classes (different initialisers).

Examples:
    >>> import torch, depass_tl
    >>> from depass_tl.toy import random_model
    >>> model = random_model(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_vocab=10,
    ...                      act_fn="gelu", seed=0)
    >>> logits, dc = depass_tl.run_with_depass(model, torch.tensor([[1, 2, 3]]))
    >>> logits.shape, dc.labels
    (torch.Size([1, 3, 10]), ('tok0', 'tok1', 'tok2', 'bias'))
"""

from __future__ import annotations

import contextlib
import copy
import random
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from depass_tl.errors import DePassError, UnsupportedModelError

__all__ = ["NATIVE_BRIDGE_ACTIVATIONS", "bridge_unsupported_fields", "random_model"]

#: ``act_fn`` values the TL-native Bridge model computes.
NATIVE_BRIDGE_ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu", "swish", "solu", "solu_ln")

_POSITIONS = ("standard", "rotary")

#: ``HookedTransformerConfig`` fields (with the values that are *not* a problem) that the TL-native
#: Bridge model does not implement, and what each one is.
_NOT_NATIVE: dict[str, tuple[Any, str]] = {
    "parallel_attn_mlp": (False, "parallel attention and MLP (GPT-J / NeoX blocks)"),
    "use_normalization_before_and_after": (False, "Gemma-2 post-norms"),
    "num_experts": (None, "mixture of experts"),
    "post_embedding_ln": (False, "a LayerNorm after the embedding (BLOOM)"),
    "use_attention_sinks": (False, "attention sinks"),
    "clip_qkv": (None, "clamped q/k/v (OLMo)"),
    "use_local_attn": (False, "local (sliding-window) attention"),
    "use_qk_norm": (False, "query/key norms"),
    "use_split_qkv_input": (False, "per-head q/k/v input hooks (a HookedTransformer hook layout)"),
    "use_attn_result": (False, "per-head attention result hooks (a HookedTransformer hook layout)"),
    "use_hook_mlp_in": (False, "the optional hook_mlp_in toggle (a HookedTransformer hook layout)"),
    "use_attn_in": (False, "the optional hook_attn_in toggle (a HookedTransformer hook layout)"),
    "scale_attn_by_inverse_layer_idx": (False, "attention scaled by 1/(layer + 1)"),
    "use_NTK_by_parts_rope": (False, "NTK-by-parts rotary scaling (use rope_scaling on the Bridge)"),
    "use_dynamic_ntk_rope": (False, "dynamic NTK rotary scaling (use rope_scaling on the Bridge)"),
    "rmsnorm_uses_offset": (False, "offset RMS norm weights (Gemma)"),
    "ungroup_grouped_query_attention": (False, "ungrouped GQA hooks (a HookedTransformer hook layout)"),
    "rotary_adjacent_pairs": (None, "(the native Bridge always rotates adjacent pairs; pass True or nothing)"),
}


def _has_hooked_transformer() -> bool:
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:  # TL 4 removed it (the attribute access raises ImportError there)
        return False
    return True


def bridge_unsupported_fields(config: dict[str, Any]) -> dict[str, str]:
    """The fields of ``config`` that ``TransformerBridge.boot_native`` cannot build, each with what it is.

    Args:
        config: ``HookedTransformerConfig`` keyword arguments.

    Returns:
        ``{field: description}``; empty when the native Bridge builds the same architecture.

    Examples:
        >>> bridge_unsupported_fields({"parallel_attn_mlp": True, "act_fn": "gelu"})
        {'parallel_attn_mlp': 'parallel attention and MLP (GPT-J / NeoX blocks)'}
        >>> bridge_unsupported_fields({"positional_embedding_type": "alibi", "act_fn": "gelu_fast"})
        {'positional_embedding_type': "'alibi' positions (the native Bridge has 'standard' and 'rotary')", \
'act_fn': "'gelu_fast' (the native Bridge computes gelu, gelu_new, relu, silu, swish, solu, solu_ln)"}
    """
    refused: dict[str, str] = {}
    for field, (harmless, what) in _NOT_NATIVE.items():
        value = config.get(field, harmless)
        if field == "rotary_adjacent_pairs":
            if value is False:
                refused[field] = "rotate-half rotary pairs " + what
        elif value not in (harmless, None, False, 0):
            refused[field] = what
    if config.get("use_attn_scale", True) is False:
        refused["use_attn_scale"] = "unscaled attention scores (the native Bridge always divides by attn_scale or sqrt(d_head))"
    positions = config.get("positional_embedding_type", "standard")
    if positions not in _POSITIONS:
        refused["positional_embedding_type"] = f"{positions!r} positions (the native Bridge has 'standard' and 'rotary')"
    act_fn = config.get("act_fn")
    if act_fn is not None and not config.get("attn_only", False) and act_fn not in NATIVE_BRIDGE_ACTIVATIONS:
        refused["act_fn"] = f"{act_fn!r} (the native Bridge computes {', '.join(NATIVE_BRIDGE_ACTIVATIONS)})"
    return refused


def random_model(*, tokenizer: Any = None, default_padding_side: str = "right", **config: Any) -> Any:
    """Build a seeded random model of the installed TransformerLens from ``HookedTransformerConfig`` fields.

    Args:
        tokenizer: Optional Hugging Face tokenizer (for string input); the model gets a copy.
        default_padding_side: ``"right"`` or ``"left"``: how a batch of strings is padded.
        **config: ``HookedTransformerConfig`` keyword arguments (``n_layers``, ``d_model``, ``n_ctx``,
            ``d_head``, ``n_heads``, ``d_vocab``, ``act_fn``, ``seed``, ``dtype``, ...). ``device``
            defaults to ``"cpu"``.

    Returns:
        A ``HookedTransformer`` (TL 2.x / 3.x) or a TL-native ``TransformerBridge`` (TL 4.x), in eval mode.

    Raises:
        UnsupportedModelError: On TL 4, a config field the native Bridge cannot build (named).
        DePassError: ``default_padding_side`` is neither ``"left"`` nor ``"right"``.

    Examples:
        >>> from depass_tl.toy import random_model
        >>> model = random_model(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_vocab=50,
        ...                      normalization_type="RMS", gated_mlp=True, act_fn="silu",
        ...                      positional_embedding_type="rotary", n_key_value_heads=2, seed=0)
        >>> model.cfg.n_layers, model.cfg.n_key_value_heads
        (2, 2)
    """
    if default_padding_side not in ("left", "right"):
        raise DePassError(f"default_padding_side must be 'left' or 'right', got {default_padding_side!r}")
    config.setdefault("device", "cpu")
    if tokenizer is not None:  # both classes set the padding side on their tokenizer: never on the caller's
        tokenizer = copy.deepcopy(tokenizer)
    if _has_hooked_transformer():
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        # TL's config seeds torch, random and numpy globally (set_seed_everywhere): the caller's generators
        # are restored afterwards; and the padding side goes only with a tokenizer (else TL logs through the
        # root logger, which configures logging behind the caller's back)
        padding = {} if tokenizer is None else {"default_padding_side": default_padding_side}
        with warnings.catch_warnings(), _global_rng_kept():
            warnings.simplefilter("ignore")
            model = HookedTransformer(HookedTransformerConfig(**config), tokenizer=tokenizer, **padding)
        return model.eval()
    return _native_bridge(config, tokenizer, default_padding_side)


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """The global torch (CPU and CUDA), ``random`` and numpy generators as they were before the block."""
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _native_bridge(config: dict[str, Any], tokenizer: Any, default_padding_side: str) -> Any:
    refused = bridge_unsupported_fields(config)
    if refused:
        listed = "; ".join(f"{field}={config.get(field)!r}: {what}" for field, what in refused.items())
        raise UnsupportedModelError(
            f"TransformerBridge.boot_native cannot build this config ({listed}). Use transformer-lens<4 "
            "(HookedTransformer), or boot a Hugging Face model of that family with "
            "TransformerBridge.boot_transformers."
        )
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources import native  # noqa: F401  (registers boot_native)

    # TransformerBridgeConfig.from_dict keeps the fields it (or its parent config) knows
    cfg = {k: v for k, v in config.items() if k not in ("dtype", "device", "rotary_adjacent_pairs")}
    dtype = config.get("dtype", torch.float32)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if tokenizer is not None:  # the Bridge pads on its tokenizer's side (a copy: see random_model)
        tokenizer.padding_side = default_padding_side
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_native(cfg, tokenizer=tokenizer, device=config["device"], dtype=dtype)
    model.cfg.default_padding_side = default_padding_side
    return model.eval()
