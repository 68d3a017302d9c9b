"""``depass_tl.run_with_depass`` (and the model method) forward an encoder to DecompX."""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl import DePassError
from depass_tl.decompx import DecompXResult, run_decompx
from depass_tl.decomposition import Decomposition


def test_run_with_depass_dispatches_to_decompx(clf64) -> None:
    kwargs = dict(token_type_ids=clf64.token_type_ids, attention_mask=clf64.attention_mask, bias_policy="absdot",
                  ffn_approx="gelu_la", tanh_approx="la")
    logits, result = depass_tl.run_with_depass(clf64.encoder, clf64.tokens, head=clf64.head, **kwargs)
    ref_logits, ref = run_decompx(clf64.encoder, clf64.tokens, head=clf64.head, **kwargs)
    assert isinstance(result, DecompXResult) and isinstance(result, Decomposition)
    assert result.options["ffn_approx"] == "gelu_la" and result.options["tanh_approx"] == "la"
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(result.class_logits, ref.class_logits)
    torch.testing.assert_close(result.class_logits.sum(0), clf64.hf(clf64.tokens, token_type_ids=clf64.token_type_ids,
                                                                     attention_mask=clf64.attention_mask).logits)
    if clf64.backend != "transformers":  # TL model classes get the method; transformers' classes are left alone
        method_logits, _ = clf64.encoder.run_with_depass(clf64.tokens, head=clf64.head, **kwargs)
        torch.testing.assert_close(method_logits, logits)
    else:
        assert not hasattr(clf64.encoder, "run_with_depass")


def test_the_model_own_head_is_the_default(hf64) -> None:
    """A BertForSequenceClassification needs no head=: its pooler and classifier are read."""
    kw = dict(token_type_ids=hf64.token_type_ids, attention_mask=hf64.attention_mask)
    logits, own = depass_tl.run_with_depass(hf64.hf, hf64.tokens, **kw)
    _, given = run_decompx(hf64.hf, hf64.tokens, head=hf64.head, **kw)
    torch.testing.assert_close(own.class_logits, given.class_logits, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(logits, hf64.hf(hf64.tokens, **kw).logits, rtol=0, atol=0)  # the model's own


def test_encoder_errors(clf64) -> None:
    if clf64.backend == "HookedEncoder":
        with pytest.raises(DePassError, match="needs a head"):
            depass_tl.run_with_depass(clf64.encoder, clf64.tokens)
    with pytest.raises(DePassError, match="components=, mlp_rule= and temperature= do not apply"):
        depass_tl.run_with_depass(clf64.encoder, clf64.tokens, head=clf64.head, mlp_rule="ratio")
    with pytest.raises(DePassError, match="components=, mlp_rule= and temperature= do not apply"):  # was ignored
        depass_tl.run_with_depass(clf64.encoder, clf64.tokens, head=clf64.head, temperature=5.0)
    with pytest.raises(DePassError, match="padding_side=, precision= apply to the decoder replay"):  # were ignored
        depass_tl.run_with_depass(clf64.encoder, clf64.tokens, head=clf64.head, precision="fast", padding_side="left")
    with pytest.raises(DePassError, match="prepend_bos= apply to the decoder replay"):
        depass_tl.run_with_depass(clf64.encoder, clf64.tokens, head=clf64.head, prepend_bos=False)
    with pytest.raises(DePassError, match="chunk_size= and max_memory= apply to the decoder replay"):
        depass_tl.run_with_depass(clf64.encoder, clf64.tokens, head=clf64.head, chunk_size=2)


def _decoder():
    from tests.models import make_model, random_tokens  # the installed TL's decoder class

    model = make_model("gpt2")
    return model, random_tokens(model)


@pytest.mark.parametrize("kwargs, names", [
    (dict(bias_policy="absdot"), "bias_policy= is"),
    (dict(ffn_approx="relu", include_ffn=False), "ffn_approx=, include_ffn= are"),
    (dict(tanh_approx="la"), "tanh_approx= is"),
])
def test_decoder_rejects_encoder_keywords(kwargs, names) -> None:
    model, tokens = _decoder()
    with pytest.raises(DePassError, match=f"{names} for encoder .BERT, DecompX. models only.*HookedEncoder"):
        depass_tl.run_with_depass(model, tokens, **kwargs)
