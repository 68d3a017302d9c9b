"""``depass_tl.run_with_depass`` (and the model method) forward a HookedEncoder to DecompX."""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl import DePassError
from depass_tl.decompx import run_decompx


def test_run_with_depass_dispatches_to_decompx(clf64) -> None:
    kwargs = dict(token_type_ids=clf64.token_type_ids, attention_mask=clf64.attention_mask, bias_policy="absdot")
    logits, result = depass_tl.run_with_depass(clf64.encoder, clf64.tokens, head=clf64.head, **kwargs)
    ref_logits, ref = run_decompx(clf64.encoder, clf64.tokens, head=clf64.head, **kwargs)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(result.class_logits, ref.class_logits)
    torch.testing.assert_close(result.class_logits.sum(0), clf64.hf(clf64.tokens, token_type_ids=clf64.token_type_ids,
                                                                     attention_mask=clf64.attention_mask).logits)
    method_logits, _ = clf64.encoder.run_with_depass(clf64.tokens, head=clf64.head, **kwargs)
    torch.testing.assert_close(method_logits, logits)


def test_encoder_errors(clf64) -> None:
    with pytest.raises(DePassError, match="needs a head"):
        depass_tl.run_with_depass(clf64.encoder, clf64.tokens)
    with pytest.raises(DePassError, match="components= and mlp_rule= do not apply"):
        depass_tl.run_with_depass(clf64.encoder, clf64.tokens, head=clf64.head, mlp_rule="ratio")


def test_decoder_rejects_encoder_keywords() -> None:
    from tests.models import make_model, random_tokens

    model = make_model("gpt2")
    with pytest.raises(DePassError, match="HookedEncoder"):
        depass_tl.run_with_depass(model, random_tokens(model), bias_policy="absdot")
