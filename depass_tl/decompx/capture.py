"""One clean forward pass of an encoder under scoped hooks: the frozen coefficients.

This is the only module of :mod:`depass_tl.decompx` that registers hooks. The encoder's backend
(:mod:`depass_tl.backends`) says which module inputs or outputs hold the clean tensors
(:class:`~depass_tl.backends.base.EncoderSource`; TL hook points for a ``HookedEncoder``, the HF
modules for transformers' BERT and a BERT ``TransformerBridge``); here a PyTorch hook is put on each,
and every hook is removed in a ``finally``, also when the forward raises. The model's parameters and
settings are never changed. What is kept is copied (``detach().clone()``) and cast to the replay dtype:

* ``hook_full_embed``: the embedding output (token + position + token-type embedding, embedding LN);
* per layer ``l``: the attention pattern (masked keys exactly 0), LN#1's and LN#2's inputs (their
  frozen scales ``sqrt(var + eps)`` are computed from these), the FFN pre-activation and activation,
  and the clean residual-stream activations the result is checked against;
* the model's own head logits, when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from depass_tl.backends.base import EncoderSource, HookSite, encoder_site_names
from depass_tl.errors import DePassError, UnsupportedModelError
from depass_tl.model_view import EncoderView

__all__ = ["EncoderRun", "RESID_HOOKS", "capture_encoder", "layer_norm_scale"]

RESID_HOOKS: tuple[str, ...] = (
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
    "hook_normalized_resid_post",
)
"""Per-block TL hooks (``blocks.{l}.<name>``) that the replay decomposes, in forward order."""


def layer_norm_scale(x: Float[Tensor, "... d"], eps: float) -> Float[Tensor, "... 1"]:
    """LayerNorm's scale ``sqrt(mean((x - mean x)^2) + eps)`` (biased variance, as in BERT and TL)."""
    centred = x - x.mean(-1, keepdim=True)
    return (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()


@dataclass(frozen=True, eq=False)
class EncoderRun:
    """Everything the replay needs from one clean forward pass (immutable by convention).

    Attributes:
        view: the encoder's weights (the backend's view; tensors shared with the model).
        clean: every captured tensor, keyed by :func:`~depass_tl.backends.base.encoder_site_names`
            (plus ``blocks.{l}.hook_resid_pre``), in the replay dtype.
        model_logits: the model's own head logits, when captured.
    """

    view: EncoderView
    clean: dict[str, Tensor]
    model_logits: Tensor | None

    @property
    def n_layers(self) -> int:
        return len(self.view.layers)

    @property
    def embed(self) -> Float[Tensor, "batch pos d_model"]:
        return self.clean["hook_full_embed"]

    def pattern(self, layer: int) -> Float[Tensor, "batch head_index query_pos key_pos"]:
        return self.clean[f"blocks.{layer}.attn.hook_pattern"]

    def ln1_scale(self, layer: int) -> Float[Tensor, "batch pos 1"]:
        return layer_norm_scale(self.clean[f"blocks.{layer}.hook_resid_mid"], self.view.eps)

    def ln2_scale(self, layer: int) -> Float[Tensor, "batch pos 1"]:
        return layer_norm_scale(self.clean[f"blocks.{layer}.hook_resid_post"], self.view.eps)

    def mlp(self, layer: int) -> tuple[Tensor, Tensor]:
        """``(pre, post)``: the FFN activation's clean input and output ``[batch, pos, d_mlp]``."""
        p = f"blocks.{layer}.mlp."
        return self.clean[p + "hook_pre"], self.clean[p + "hook_post"]

    @property
    def final_resid(self) -> Float[Tensor, "batch pos d_model"]:
        """Clean encoder output ``blocks.{L-1}.hook_normalized_resid_post``."""
        return self.clean[f"blocks.{self.n_layers - 1}.hook_normalized_resid_post"]


def _register(site: HookSite, name: str, store: dict[str, Tensor], dtype: torch.dtype) -> Any:
    def keep(value: Any) -> None:
        if site.index is not None:
            value = value[site.index] if isinstance(value, (tuple, list)) and len(value) > site.index else None
        if isinstance(value, Tensor):
            store[name] = value.detach().to(dtype).clone()

    if site.read == "input":
        def pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
            keep(args if args else tuple(kwargs.values()))

        return site.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(module: Any, args: Any, output: Any) -> None:
        keep(output)

    return site.module.register_forward_hook(hook)


def capture_encoder(
    source: EncoderSource,
    tokens: Int[Tensor, "batch pos"],
    *,
    token_type_ids: Int[Tensor, "batch pos"] | None,
    attention_mask: Int[Tensor, "batch pos"] | None,
    dtype: torch.dtype,
    with_head: bool,
) -> EncoderRun:
    """Run the encoder once with a hook on every site of ``source`` and return the frozen coefficients.

    Inputs are assumed validated (see :func:`depass_tl.decompx.api.run_decompx`).

    Args:
        source: the backend's reading of the encoder.
        tokens: token ids.
        token_type_ids: segment ids, or None.
        attention_mask: 1 for real tokens, 0 for padding, or None.
        dtype: dtype of everything returned.
        with_head: also return the model's own head logits.

    Returns:
        The :class:`EncoderRun`.

    Raises:
        UnsupportedModelError: a site produced nothing (e.g. an attention implementation that does not
            return its probabilities).
    """
    n_layers = len(source.view.layers)
    store: dict[str, Tensor] = {}
    handles = []
    try:
        for name, site in source.sites.items():
            handles.append(_register(site, name, store, dtype))
        with torch.no_grad():
            logits = source.forward(tokens, token_type_ids, attention_mask, with_head)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in encoder_site_names(n_layers) if name not in store]
    if missing:
        raise UnsupportedModelError(
            f"the {source.view.backend} encoder's forward produced no tensor at {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''}; if these are attention patterns, run the model with "
            'attn_implementation="eager".'
        )
    if with_head and logits is None:
        raise DePassError(f"the {source.view.backend} encoder returned no head logits")  # internal misuse
    for layer in range(n_layers):
        store[f"blocks.{layer}.hook_resid_pre"] = store["hook_full_embed" if layer == 0 else
                                                        f"blocks.{layer - 1}.hook_normalized_resid_post"]
    return EncoderRun(
        view=source.view,
        clean=store,
        model_logits=None if logits is None else logits.detach().to(dtype).clone(),
    )
