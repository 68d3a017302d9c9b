"""Shape aliases and the dimension vocabulary (TransformerLens's names plus ``component``).

The public entry points are annotated with these and checked at run time (:mod:`depass_tl._checks`).
Integer inputs are annotated ``Tensor`` where a hand-written check gives a clearer message for a wrong
dtype (token ids, attention masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "CompResid", "CompHidden", "Tokens", "Resid", "Pattern", "Scale", "Logits", "ClassLogits", "Model", "TextOrTokens",
    "TOKENS_HINT", "COMPONENTS_HINT",
]

CompResid = Float[Tensor, "component batch pos d_model"]
CompHidden = Float[Tensor, "component batch pos d_mlp"]
Resid = Float[Tensor, "batch pos d_model"]
Pattern = Float[Tensor, "batch head_index query_pos key_pos"]
Scale = Float[Tensor, "batch pos 1"]
Tokens = Int[Tensor, "batch pos"]
Logits = Float[Tensor, "batch pos d_vocab"]
ClassLogits = Float[Tensor, "batch n_classes"]

Model: TypeAlias = Any
"""A model object a registered backend reads (:mod:`depass_tl.backends`): a ``HookedTransformer``, a
``TransformerBridge``, a ``HookedEncoder``; which one is decided by the registry, not by the annotation."""

TextOrTokens: TypeAlias = str | Sequence[str] | Tensor
"""A prompt, a list of prompts, or token ids ``[batch, pos]`` (or ``[pos]``)."""

TOKENS_HINT = "input must be a string, a list of strings, or a [batch, pos] integer tensor"
COMPONENTS_HINT = "components must be a spec such as depass_tl.tokens() or depass_tl.custom(...)"
