"""``attention_score_attrs`` on a TransformerBridge (TL 3.x / 4.x): exact where it can be, refused by name elsewhere.

The function checks itself (the parts must add up to ``q · k / attn_scale``, and those scores must
reproduce the model's own pattern); these tests check it independently: against TL's
``hook_attn_scores`` on Bridges booted from Hugging Face models (where that hook holds the scores),
and, on TL 3.x, against the same split through a ``HookedTransformer`` of the same toy weights.
"""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl import toy
from depass_tl.attention_scores import attention_score_attrs
from depass_tl.errors import DePassError
from depass_tl.toy.data import repeated_sequences
from tests._tl_version import HAS_HOOKED, TL_VERSION, requires_bridge

pytestmark = requires_bridge


def _split(model, tokens, side="key", key_pos=2):
    _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(0))
    _, cache = model.run_with_cache(tokens)
    return attention_score_attrs(model, dc, cache, 1, key_pos=key_pos, side=side), cache


@pytest.mark.parametrize("side", ["key", "query"])
@pytest.mark.parametrize(("family", "compat"),
                         [("gpt2", False), ("gpt2", True), ("llama", False), ("llama", True), ("neox", False)])
def test_parts_add_up_to_tls_own_scores(family: str, compat: bool, side: str) -> None:
    """GPT-2 (learned positions, biases), Llama (rotary, GQA, no biases), raw and in compatibility mode, and
    NeoX (partial rotary, which its Bridge hooks as cos / sin only: the split rotates with those tables)."""
    from tests.bridge_models import bridge_tokens, build_bridge

    model, _ = build_bridge(family, compat=compat)
    tokens = bridge_tokens(batch=2, pos=7)
    att, cache = _split(model, tokens, side=side, key_pos=torch.tensor([2, 4]))
    scores = cache["blocks.1.attn.hook_attn_scores"][torch.arange(2)[:, None], torch.arange(model.cfg.n_heads)[None],
                                                      6, torch.tensor([2, 4])[:, None]]
    sums = att.values.reshape(-1, att.group_size, 2, model.cfg.n_heads).sum(1)  # one group: heads(0)
    torch.testing.assert_close(sums[0], scores.to(sums.dtype), rtol=1e-5, atol=1e-4)
    assert att.labels[-1] == "bias" and att.completeness_error() < 1e-4


def test_the_induction_toys_keys_are_built_by_its_previous_token_head() -> None:
    """Known answer on TL's native Bridge, whose hook_attn_scores holds the pattern (TL 4.3), not the scores."""
    model, _ = toy.load("induction", model_class="bridge")
    half = 16
    tokens = repeated_sequences(4, half_len=half, d_vocab=model.cfg.d_vocab, seed=3)[:, : half + 8]
    att, _ = _split(model, tokens, key_pos=8)
    assert att.completeness_error() < 1e-4
    assert [att.labels[int(c)] for c in att.values.mean(1).argmax(0)] == ["L0H0"] * model.cfg.n_heads
    query_side, _ = _split(model, tokens, side="query", key_pos=8)
    assert {att.labels[int(c)] for c in query_side.values.mean(1).argmax(0)} == {"rest"}


@pytest.mark.skipif(not HAS_HOOKED, reason=f"compares with HookedTransformer, which TransformerLens {TL_VERSION} lacks")
def test_bridge_and_hooked_transformer_split_the_same() -> None:
    tokens = repeated_sequences(2, half_len=10, d_vocab=201, seed=5)
    splits = [_split(toy.load("induction", model_class=c)[0], tokens, key_pos=-9)[0] for c in ("hooked", "bridge")]
    torch.testing.assert_close(splits[0].values, splits[1].values, rtol=0, atol=1e-4)
    torch.testing.assert_close(splits[0].clean, splits[1].clean, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("family", "match"),
    [("gemma2", "attn_scores_soft_cap")],
)
def test_what_cannot_be_split_is_refused_by_name(family: str, match: str) -> None:
    from tests.bridge_models import bridge_tokens, build_bridge

    model, _ = build_bridge(family)
    with pytest.raises(DePassError, match=match):
        _split(model, bridge_tokens(batch=1, pos=5))


def test_a_cache_from_another_input_is_caught() -> None:
    model, _ = toy.load("induction", model_class="bridge")
    tokens = repeated_sequences(1, half_len=6, d_vocab=model.cfg.d_vocab, seed=1)
    _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(0))
    _, other = model.run_with_cache(repeated_sequences(1, half_len=6, d_vocab=model.cfg.d_vocab, seed=2))
    with pytest.raises(DePassError, match="miss"):
        attention_score_attrs(model, dc, other, 1, key_pos=3)
