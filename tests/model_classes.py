"""Small float32 models of every model class the installed TL has, with a tokenizer.

Tests that must hold on every model class parametrise over :data:`CLASSES`:

* ``random_model``: a 2-layer GPT-2-like model from the test factory (tests/models.py: a
  ``HookedTransformer`` on TL 2.x / 3.x, a TL-native ``TransformerBridge`` on TL 4; random biases and
  norm weights) with an offline word-level tokenizer;
* ``bridge``: a 2-layer random Hugging Face GPT-2 booted as a ``TransformerBridge`` from a local folder
  with its word-level tokenizer (tests/bridge_models.py; TL 3.x / 4.x).

Both tokenizers know the words of :func:`known_word` and map anything else to ``<unk>``.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

import pytest
import torch

from tests._tl_version import requires_bridge

__all__ = ["CLASSES", "model_of", "known_word", "n_hooks", "snapshot", "assert_untouched"]

CLASSES = ["random_model", pytest.param("bridge", marks=requires_bridge)]
_WORDS = [f" w{i}" for i in range(37)]  # with <bos> <pad> <unk>: 40 = d_vocab


@functools.cache
def _cached(kind: str) -> tuple[Any, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "random_model":
            from tests.models import make_model, random_tokens, word_tokenizer

            model = make_model("gpt2", dtype=torch.float32, tokenizer=word_tokenizer(_WORDS))
            return model, random_tokens(model, batch=2, pos=6)
        from tests.bridge_models import bridge_tokens, build_bridge

        model, _ = build_bridge("gpt2", fresh=True)
        return model, bridge_tokens(batch=2, pos=6)


def model_of(kind: str, *, fresh: bool = False) -> tuple[Any, torch.Tensor]:
    """``(model, tokens [2, 6])`` of a class; ``fresh=True``: a copy the test may change."""
    model, tokens = _cached(kind)
    return (copy.deepcopy(model) if fresh else model), tokens


def known_word(model: Any, i: int = 1) -> str:
    """A string that is one known token of the model's tokenizer."""
    return f" w{i}" if " w0" in model.tokenizer.get_vocab() else f" t{i}"


def n_hooks(model: Any) -> int:
    """Hooks of every kind on the model's hook points (each counted once, also under several names)."""
    points = {id(hp): hp for hp in model.hook_dict.values()}.values()
    return sum(len(hp._forward_hooks) + len(hp._forward_pre_hooks) + len(hp._backward_hooks) for hp in points)


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, cloned."""
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_untouched(model: Any, before: dict[str, torch.Tensor], training: bool = False) -> None:
    """No hook left on the model, every parameter and buffer bit-identical, the mode unchanged."""
    assert n_hooks(model) == 0
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert after[name].dtype == value.dtype and torch.equal(_bits(after[name]), _bits(value)), name
    assert model.training == training
