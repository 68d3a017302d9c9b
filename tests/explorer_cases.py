"""Small offline models with a tokenizer for the explorer tests, on every TransformerLens version.

``gpt2``: a random GPT-2-style model of the installed TL's own class (a ``HookedTransformer`` on TL < 4, the
TL-native ``TransformerBridge`` on TL 4: LayerNorm, learned positions, GELU) with a word-level tokenizer;
``llama``: a random HF Llama booted as a ``TransformerBridge`` (TL >= 3: GQA, rotary, gated MLP). Each case is
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
from tests._tl_version import HAS_BRIDGE, TL_VERSION

__all__ = ["KINDS", "Case", "explorer_case"]

#: The cases the installed TL can build (TL 2.x: gpt2; 3.x and 4.x: both), so nothing is parametrised that can
#: only skip; ``explorer_case`` still skips a kind asked for by name where it is missing.
KINDS = ("gpt2",) + (("llama",) if HAS_BRIDGE else ())
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


def _gpt2() -> tuple[Any, torch.Tensor]:
    from tests.models import make_model, word_tokenizer

    model = make_model("gpt2", n_layers=3, n_heads=4, d_model=16, d_mlp=32, d_vocab=20, n_ctx=24,
                       dtype=torch.float32, tokenizer=word_tokenizer(WORDS), default_padding_side="right")
    return model, model.to_tokens(PROMPT)


def _llama() -> tuple[Any, torch.Tensor]:
    from tests.bridge_models import bridge_tokens, build_bridge

    model, _ = build_bridge("llama")
    return model, bridge_tokens(batch=1, pos=9, seed=3)


@functools.cache
def _build(kind: str) -> Case:
    model, tokens = _gpt2() if kind == "gpt2" else _llama()
    with torch.no_grad():
        clean = model(tokens)[0, -1].detach().double()
    order = torch.argsort(clean, descending=True).tolist()
    target, contrast = order[1], order[0]  # the runner-up against the top prediction
    decode = lambda i: model.tokenizer.decode([i])  # noqa: E731
    run = depass_tl.capture(model, tokens, extra_hooks=viz.explorer_hooks(model.cfg.n_layers))
    caches = viz.explorer_caches(run, progress=False)
    str_tokens = tuple(model.to_str_tokens(tokens[0]))
    data = viz.explorer_data(caches, target=target, contrast=contrast, top_k=4, decode=decode, str_tokens=str_tokens,
                             prompt=PROMPT if kind == "gpt2" else None, model=f"a random {kind} model")
    return Case(kind, model, tokens, str_tokens, target, contrast, decode, run, caches, data, clean)


def explorer_case(kind: str) -> Case:
    """The case of ``kind``, skipped (with the reason) where this TransformerLens cannot build it."""
    if kind == "llama" and not HAS_BRIDGE:
        pytest.skip(f"TransformerBridge does not exist in TransformerLens {TL_VERSION} (added in 3.0)")
    return _build(kind)
