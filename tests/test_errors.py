"""Bad input and unsupported models raise DePassError with a message that says what to do."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import depass_tl
from depass_tl import DePassError, UnsupportedModelError
from tests.models import make_model, random_tokens


@pytest.fixture(scope="module")
def model() -> Any:
    return make_model("gpt2")


def test_wrong_model_type() -> None:
    with pytest.raises(DePassError, match="expected a transformer_lens.HookedTransformer, got Linear"):
        depass_tl.run_with_depass(nn.Linear(2, 2), torch.tensor([[1, 2]]))


@pytest.mark.parametrize(
    "tokens, match",
    [
        (torch.tensor([[1.0, 2.0]]), "integer tensor, got dtype torch.float32"),
        (torch.zeros(1, 2, 3, dtype=torch.long), r"shape \[batch, pos\]"),
        (torch.tensor([[1, 999]]), r"ids must lie in \[0, 40\)"),
        (torch.zeros(1, 0, dtype=torch.long), "non-empty"),
        ([1, 2, 3], "must be a string, a list of strings"),
    ],
)
def test_bad_tokens(model: Any, tokens: object, match: str) -> None:
    with pytest.raises(DePassError, match=match):
        depass_tl.run_with_depass(model, tokens)


def test_one_dimensional_tokens_are_one_prompt(model: Any) -> None:
    _, dc = depass_tl.run_with_depass(model, torch.tensor([1, 2, 3]))
    assert dc["unembed.hook_in"].shape[1:3] == (1, 3)


def test_string_without_tokenizer(model: Any) -> None:
    with pytest.raises(DePassError, match="needs a model with a tokenizer"):
        depass_tl.run_with_depass(model, "hello")


def test_unknown_rule_and_bad_temperature(model: Any) -> None:
    toks = random_tokens(model)
    with pytest.raises(DePassError, match="unknown mlp_rule 'nope'; choose one of softmax, ratio, max, taylor"):
        depass_tl.run_with_depass(model, toks, mlp_rule="nope")
    with pytest.raises(DePassError, match="temperature must be > 0"):
        depass_tl.run_with_depass(model, toks, temperature=0.0)


def test_bad_logit_queries(model: Any) -> None:
    _, dc = depass_tl.run_with_depass(model, random_tokens(model, batch=2))
    with pytest.raises(DePassError, match="no tokenizer"):
        dc.logit_attrs(" Mary")
    with pytest.raises(DePassError, match="one per prompt"):
        dc.logit_attrs(torch.tensor([1, 2, 3]))
    with pytest.raises(DePassError, match="out of range"):
        dc.logit_attrs(1, pos=50)
    with pytest.raises(DePassError, match=r"lie in \[0, 40\)"):
        dc.logit_attrs(40)
    with pytest.raises(DePassError, match="no component labelled 'tok99'"):
        dc.component("tok99")


def test_custom_spec_validation(model: Any) -> None:
    toks = random_tokens(model)
    _, cache = model.run_with_cache(toks)
    h = cache["blocks.0.hook_resid_post"]
    with pytest.raises(DePassError, match="do not sum to the clean activation .* Add a remainder component"):
        depass_tl.run_with_depass(model, toks, components=depass_tl.custom("blocks.0.hook_resid_post", torch.stack([h, h]), ["a", "b"]))
    with pytest.raises(DePassError, match="reserved for the bias component"):
        depass_tl.custom("blocks.0.hook_resid_post", h[None], ["bias"])
    with pytest.raises(DePassError, match="unique"):
        depass_tl.custom("blocks.0.hook_resid_post", torch.stack([h, h]), ["a", "a"])
    with pytest.raises(DePassError, match="not a residual-stream hook"):
        depass_tl.run_with_depass(model, toks, components=depass_tl.custom("blocks.0.attn.hook_z", h[None], ["a"]))
    with pytest.raises(DePassError, match="has 2 layers"):
        depass_tl.run_with_depass(model, toks, components=depass_tl.custom("blocks.5.hook_resid_pre", h[None], ["a"]))
    with pytest.raises(DePassError, match="must have shape"):
        depass_tl.run_with_depass(model, toks, components=depass_tl.custom("blocks.0.hook_resid_post", h[None, :, :2], ["a"]))
    with pytest.raises(DePassError, match="got 2 labels for 1 components"):
        depass_tl.run_with_depass(model, toks, components=depass_tl.custom("blocks.0.hook_resid_post", h[None], ["a", "b"]))
    with pytest.raises(DePassError, match="components must be a spec"):
        depass_tl.run_with_depass(model, toks, components="tokens")  # type: ignore[arg-type]
