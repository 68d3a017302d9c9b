"""Small offline models with a tokenizer for the explorer tests, on every TransformerLens version.

``hooked``: a random GPT-2-style ``HookedTransformer`` (TL < 4) with a word-level tokenizer;
``bridge``: a random Llama ``TransformerBridge`` (TL >= 3: GQA, rotary, gated MLP). Each case is
captured once with the explorer's hooks and replayed for every MLP rule (cached per kind).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import depass_tl
from depass_tl import viz
from tests._tl_version import HAS_BRIDGE, HAS_HOOKED, TL_VERSION

__all__ = ["KINDS", "Case", "explorer_case"]

#: The model classes the installed TL has (TL 2.x: hooked; 3.x: both; 4.x: bridge), so nothing is
#: parametrised that can only skip; ``explorer_case`` still skips a kind asked for by name where it is missing.
KINDS = tuple(kind for kind, present in (("hooked", HAS_HOOKED), ("bridge", HAS_BRIDGE)) if present)
WORDS = [" When", " Mary", " and", " John", " went", " to", " the", " store", " then", " gave", " a", " drink"]
PROMPT = " When Mary and John went to the store then John gave a drink to"


@dataclass(frozen=True)
class Case:
    kind: str
    model: Any
    tokens: torch.Tensor  # [1, pos]
    str_tokens: tuple[str, ...]
    target: int
    contrast: int
    decode: Any  # id -> str
    run: Any
    caches: viz.ExplorerCaches
    data: dict[str, Any]
    clean_logits: torch.Tensor  # [d_vocab] at the last position, from the model's own forward


def _hooked() -> tuple[Any, torch.Tensor]:
    from tests.models import make_model, word_tokenizer

    model = make_model("gpt2", n_layers=3, n_heads=4, d_model=16, d_mlp=32, d_vocab=20, n_ctx=24,
                       dtype=torch.float32)
    model.set_tokenizer(word_tokenizer(WORDS), default_padding_side="right")
    return model, model.to_tokens(PROMPT)


def _bridge() -> tuple[Any, torch.Tensor]:
    from tests.bridge_models import bridge_tokens, build_bridge

    model, _ = build_bridge("llama")
    return model, bridge_tokens(batch=1, pos=9, seed=3)


@functools.cache
def _build(kind: str) -> Case:
    model, tokens = _hooked() if kind == "hooked" else _bridge()
    with torch.no_grad():
        clean = model(tokens)[0, -1].detach().double()
    order = torch.argsort(clean, descending=True).tolist()
    target, contrast = order[1], order[0]  # the runner-up against the top prediction
    decode = lambda i: model.tokenizer.decode([i])  # noqa: E731
    run = depass_tl.capture(model, tokens, extra_hooks=viz.explorer_hooks(model.cfg.n_layers))
    caches = viz.explorer_caches(run, progress=False)
    str_tokens = tuple(model.to_str_tokens(tokens[0]))
    data = viz.explorer_data(caches, target=target, contrast=contrast, top_k=4, decode=decode, str_tokens=str_tokens,
                             prompt=PROMPT if kind == "hooked" else None, model=f"a random {kind} model")
    return Case(kind, model, tokens, str_tokens, target, contrast, decode, run, caches, data, clean)


def explorer_case(kind: str) -> Case:
    """The case of ``kind``, skipped (with the reason) where this TransformerLens cannot build it."""
    if kind == "hooked" and not HAS_HOOKED:
        pytest.skip(f"HookedTransformer does not exist in TransformerLens {TL_VERSION} (removed in 4.0)")
    if kind == "bridge" and not HAS_BRIDGE:
        pytest.skip(f"TransformerBridge does not exist in TransformerLens {TL_VERSION} (added in 3.0)")
    return _build(kind)
