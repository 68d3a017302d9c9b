"""``depass_tl.toy.random_model``: a model of the installed TL from HookedTransformerConfig fields, never a silent substitute."""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl.backends.bridge import is_bridge
from depass_tl.errors import DePassError, UnsupportedModelError
from depass_tl.toy import random_model
from depass_tl.toy.random_model import bridge_unsupported_fields
from tests._tl_version import HAS_HOOKED
from tests.models import word_tokenizer

BASE = dict(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_mlp=24, d_vocab=30, seed=0, dtype=torch.float64)


def test_builds_the_installed_class_with_the_config() -> None:
    model = random_model(**BASE, act_fn="silu", normalization_type="RMS", gated_mlp=True,
                         positional_embedding_type="rotary", n_key_value_heads=2)
    assert is_bridge(model) != HAS_HOOKED  # HookedTransformer on TL <= 3, a Bridge on TL 4
    assert (model.cfg.n_layers, model.cfg.d_mlp, model.cfg.n_key_value_heads) == (2, 24, 2)
    assert model.W_U.dtype == torch.float64 and not model.training
    assert model.blocks[0].mlp.W_gate.shape == (16, 24)
    _, dc = depass_tl.run_with_depass(model, torch.tensor([[1, 2, 3, 4]]))
    assert max(dc.completeness_error(relative=True).values()) < 1e-6  # float32 RMS on the Bridge (tests/models.py)


def test_same_seed_same_weights() -> None:
    a, b = random_model(**BASE, act_fn="gelu"), random_model(**BASE, act_fn="gelu")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize(
    "fields, refused",
    [
        ({"parallel_attn_mlp": True}, ["parallel_attn_mlp"]),
        ({"num_experts": 4, "experts_per_token": 2}, ["num_experts"]),
        ({"positional_embedding_type": "alibi"}, ["positional_embedding_type"]),
        ({"act_fn": "gelu_fast"}, ["act_fn"]),
        ({"use_attn_scale": False}, ["use_attn_scale"]),
        ({"rotary_adjacent_pairs": False, "positional_embedding_type": "rotary"}, ["rotary_adjacent_pairs"]),
        ({"use_normalization_before_and_after": True, "attn_scores_soft_cap": 5.0}, ["use_normalization_before_and_after"]),
        ({"act_fn": "relu", "gated_mlp": True, "final_rms": True, "attn_scores_soft_cap": 5.0}, []),
        ({"attn_only": True, "act_fn": "gelu_fast"}, []),  # no MLP: the activation is never used
    ],
)
def test_bridge_unsupported_fields_names_each_field(fields: dict, refused: list[str]) -> None:
    assert list(bridge_unsupported_fields({"act_fn": "gelu", **fields})) == refused


@pytest.mark.skipif(HAS_HOOKED, reason="a HookedTransformer builds every field; the refusal is the native Bridge's")
def test_an_unbuildable_config_is_refused_with_the_field() -> None:
    with pytest.raises(UnsupportedModelError, match=r"parallel_attn_mlp=True: parallel attention .*boot_transformers"):
        random_model(**BASE, act_fn="gelu", parallel_attn_mlp=True)


def test_tokenizer_and_padding_side() -> None:
    tok = word_tokenizer(["When", " Mary", " and", " John", " went"])
    side = tok.padding_side
    for padding in ("left", "right"):
        model = random_model(**{**BASE, "d_vocab": len(tok)}, act_fn="gelu", tokenizer=tok,
                             default_padding_side=padding)
        tokens = model.to_tokens(["When Mary", "When Mary and John went"])
        pad = tok.pad_token_id
        assert (tokens[0, 0] == pad) == (padding == "left") and (tokens[0, -1] == pad) == (padding == "right")
    assert tok.padding_side == side  # the caller's tokenizer is not modified
    with pytest.raises(DePassError, match="default_padding_side must be 'left' or 'right'"):
        random_model(**BASE, act_fn="gelu", default_padding_side="middle")


def test_building_and_running_leave_the_callers_generators_and_logging_alone() -> None:
    """TL 3.x's config seeds torch, random and numpy globally and TL logs through the root logger when given a
    padding side without a tokenizer; beartype's container checks draw from random. A seeded script's
    sequence is unchanged by random_model + run_with_depass, and logging is not configured."""
    import logging
    import random

    import numpy as np

    import depass_tl

    def draws() -> tuple[float, float, float]:
        return random.random(), float(torch.rand(1)), float(np.random.rand())

    handlers = list(logging.getLogger().handlers)
    random.seed(1), torch.manual_seed(1), np.random.seed(1)
    want = draws()
    random.seed(1), torch.manual_seed(1), np.random.seed(1)
    model = random_model(**BASE, act_fn="gelu")
    depass_tl.run_with_depass(model, torch.tensor([[1, 2, 3]]))
    assert draws() == want
    assert logging.getLogger().handlers == handlers
