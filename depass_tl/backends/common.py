"""Config checks and weight helpers shared by the TransformerLens backends (HookedTransformer, Bridge)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import UnsupportedModelError
from depass_tl.model_state import largest_magnitudes

__all__ = ["check_supported", "maybe_bias", "zero_biases_known", "soft_cap"]

_ZERO: ContextVar[dict[tuple[int, int, torch.dtype, torch.device], bool] | None] = ContextVar(
    "depass_tl_zero_biases", default=None)


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    return getattr(cfg, name, default)


def check_supported(cfg: Any) -> None:
    """Raise :class:`UnsupportedModelError` naming the first config field the replay cannot handle.

    Supported (see docs/architectures.md): LN / LNPre / RMS / RMSPre / no norm, ``final_rms``,
    ``post_embedding_ln``, ``parallel_attn_mlp``, ``attn_only``, GQA, ``use_split_qkv_input``,
    ``use_attn_in``, ``use_attn_result``, ``use_normalization_before_and_after`` (Gemma-2/3),
    attention sinks, ``clip_qkv``, every activation incl. ``solu`` / ``solu_ln``, gated MLPs,
    Mixtral-style MoE, output logit soft caps, every pattern-only feature, and models split over
    several devices (``n_devices > 1``, an HF ``device_map``: each block replays on its weights' device).

    Args:
        cfg: a ``HookedTransformerConfig`` or a TransformerBridge's config.

    Raises:
        UnsupportedModelError: the field, its value, and what to do.
    """
    if _get(cfg, "load_in_4bit", False):
        raise UnsupportedModelError(
            "cfg.load_in_4bit=True: 4-bit quantised weights cannot be read as plain tensors by the replay. "
            "Load the model unquantised (load_in_4bit=False), e.g. in bfloat16."
        )
    arch = _get(cfg, "original_architecture", None) or _get(cfg, "architecture", None)  # Bridge: architecture
    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES  # type: ignore  (TL 3.x, 4.x)
    except ImportError:  # older TL: no post-norm decoder architectures at all
        POST_NORM_ARCHITECTURES = ()
    if arch is not None and arch in POST_NORM_ARCHITECTURES:
        raise UnsupportedModelError(
            f"cfg.original_architecture={arch!r} is a post-norm decoder (ln1/ln2 act on the sublayer outputs, "
            "so ln1.hook_scale is not the input norm); it is not replayed yet. Use a pre-norm model."
        )


def maybe_bias(t: Any) -> Tensor | None:
    """A detached bias, or None when it is absent or all zeros (then the replay skips it).

    Inside :func:`zero_biases_known` a model's bias parameters are answered from one batched check."""
    if t is None:
        return None
    known = _ZERO.get()
    t = t.detach()
    zero = None if known is None else known.get(_memory(t))  # also a whole-tensor view (a Bridge's reshaped b_V)
    if zero is None:
        zero = bool((t == 0).all())
    return None if zero else t


def _memory(t: Tensor) -> tuple[int, int, torch.dtype, torch.device]:
    """What a tensor's values are: its memory (views of a whole parameter share it), not its identity."""
    return (t.data_ptr(), t.numel(), t.dtype, t.device)


def _bias_like(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last in ("b", "bias") or last.startswith(("b_", "_b_"))


@contextmanager
def zero_biases_known(model: Any) -> Iterator[None]:
    """Decide which of ``model``'s bias parameters are all zeros at once, for :func:`maybe_bias` within.

    Reading a view asks this of every bias (about 50 for GPT-2 small); one at a time that is one host
    synchronisation each on a GPU. Here: the largest magnitude of each (``torch._foreach_norm``, fused)
    and one synchronisation per device and dtype.
    """
    biases = (p for name, p in model.named_parameters() if _bias_like(name) and p.is_floating_point() and p.numel())
    known: dict[tuple[int, int, torch.dtype, torch.device], bool] = {}
    for ps, norms in largest_magnitudes(biases):
        known.update(zip(map(_memory, ps), (norms == 0).tolist()))
    token = _ZERO.set(known)
    try:
        yield
    finally:
        _ZERO.reset(token)


def soft_cap(cfg: Any) -> float | None:
    """``cfg.output_logits_soft_cap`` as a float, None when off (TL uses -1 or 0 for "off")."""
    cap = _get(cfg, "output_logits_soft_cap", None)
    return float(cap) if cap is not None and cap > 0 else None
