"""Bad input raises DePassError; hooks never stay attached; the user's model is never modified."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch

import depass_tl
import depass_tl.decompx.api as api_module
from depass_tl.backends import read_encoder
from depass_tl.decompx import MLMHead, SequenceClassificationHead, hooked_encoder_from_hf_bert, run_decompx
from depass_tl.decompx.capture import capture_encoder
from depass_tl.errors import DePassError, UnsupportedModelError
from tests._tl_version import HAS_HOOKED
from tests.decompx.conftest import random_bert, requires_bridge, requires_hooked_encoder


def _attached_hooks(model) -> int:
    """Forward / backward (pre-)hooks on every submodule (TL hook points are modules too)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def _kw(clf, **over):
    kw = dict(head=clf.head, token_type_ids=clf.token_type_ids, attention_mask=clf.attention_mask)
    kw.update(over)
    return kw


@pytest.fixture(scope="module")
def mlm32():
    return random_bert("BertForMaskedLM")


@pytest.mark.parametrize(
    "tokens,match",
    [
        (torch.tensor([[1.0, 2.0]]), "integer dtype"),
        (torch.tensor([1, 2, 3]), r"\[batch, pos\]"),
        (torch.tensor([[1, 99]]), r"values in \[0, 50\)"),
        (torch.zeros(1, 17, dtype=torch.long), "n_ctx"),
        ([[1, 2]], "integer tensor"),
    ],
)
def test_bad_tokens(clf32, tokens, match):
    with pytest.raises(DePassError, match=match):
        run_decompx(clf32.encoder, tokens, head=clf32.head)


def test_bad_masks_and_segments(clf32):
    tokens = clf32.tokens
    with pytest.raises(DePassError, match="token_type_ids must hold values in"):
        run_decompx(clf32.encoder, tokens, **_kw(clf32, token_type_ids=torch.full_like(tokens, 2)))
    with pytest.raises(DePassError, match="attention_mask has shape"):
        run_decompx(clf32.encoder, tokens, **_kw(clf32, attention_mask=torch.ones(2, 6, dtype=torch.long)))
    with pytest.raises(DePassError, match="attention_mask must have an integer dtype"):
        run_decompx(clf32.encoder, tokens, **_kw(clf32, attention_mask=torch.ones(2, 7)))
    empty = clf32.attention_mask.clone()
    empty[1] = 0
    with pytest.raises(DePassError, match=r"rows \[1\] have no real token"):
        run_decompx(clf32.encoder, tokens, **_kw(clf32, attention_mask=empty))


def test_bad_options(clf32):
    with pytest.raises(DePassError, match="bias_policy='abssim' is not known"):
        run_decompx(clf32.encoder, clf32.tokens, **_kw(clf32, bias_policy="abssim"))
    with pytest.raises(DePassError, match="dtype must be torch.float32 or torch.float64"):
        run_decompx(clf32.encoder, clf32.tokens, **_kw(clf32, dtype=torch.float16))
    with pytest.raises(DePassError, match="unknown hook names"):
        run_decompx(clf32.encoder, clf32.tokens, **_kw(clf32, names_filter=["blocks.9.hook_resid_mid"]))
    with pytest.raises(DePassError, match=r"ffn_approx='GeLU_LA' is not known; choose one of \['zo', 'gelu_la', 'relu'\]"):
        run_decompx(clf32.encoder, clf32.tokens, **_kw(clf32, ffn_approx="GeLU_LA"))
    with pytest.raises(DePassError, match=r"tanh_approx='gelu_la' is not known; choose one of \['zo', 'la'\]"):
        run_decompx(clf32.encoder, clf32.tokens, **_kw(clf32, tanh_approx="gelu_la"))
    with pytest.raises(DePassError, match="include_ffn must be bool; got 0"):
        run_decompx(clf32.encoder, clf32.tokens, **_kw(clf32, include_ffn=0))


def test_bad_heads(clf32):
    with pytest.raises(DePassError, match="head must be a SequenceClassificationHead or an MLMHead"):
        run_decompx(clf32.encoder, clf32.tokens, **_kw(clf32, head=clf32.hf.classifier))
    small = SequenceClassificationHead(
        W_pool=torch.eye(4), b_pool=torch.zeros(4), W_cls=torch.ones(4, 2), b_cls=torch.zeros(2)
    )
    with pytest.raises(DePassError, match="head reads d_model=4 but the encoder has d_model=16"):
        run_decompx(clf32.encoder, clf32.tokens, **_kw(clf32, head=small))
    with pytest.raises(DePassError, match="shapes do not fit"):
        SequenceClassificationHead(W_pool=torch.eye(4), b_pool=torch.zeros(4), W_cls=torch.ones(2, 4), b_cls=torch.zeros(2))
    sd = dict(clf32.hf.state_dict())
    del sd["classifier.bias"]
    with pytest.raises(DePassError, match="no key 'classifier.bias'"):
        SequenceClassificationHead.from_hf_state_dict(sd)


def test_bad_mlm_heads(clf32, mlm32):
    with pytest.raises(DePassError, match="BertForSequenceClassification has no MLM head"):
        MLMHead.from_encoder(clf32.hf, token_ids=[1])
    with pytest.raises(DePassError, match=r"token_ids must be a non-empty list of ids in \[0, 50\)"):
        MLMHead.from_encoder(mlm32, token_ids=[50])
    with pytest.raises(DePassError, match="needs a head"):
        run_decompx(mlm32, clf32.tokens)  # a masked LM has no classification head of its own
    head = MLMHead.from_encoder(mlm32, token_ids=[1])
    with pytest.raises(DePassError, match="the MLM head has no tanh"):
        run_decompx(mlm32, clf32.tokens, head=head, tanh_approx="la")


@requires_hooked_encoder
def test_hooked_encoder_mlm_token_ids(build_random_encoder):
    with pytest.raises(DePassError, match=r"token_ids must be a non-empty list of ids in \[0, 30\)"):
        MLMHead.from_encoder(build_random_encoder(dtype=torch.float32), token_ids=[30])


def test_bad_result_queries(clf32, mlm32):
    _, result = run_decompx(clf32.encoder, clf32.tokens, **_kw(clf32))
    with pytest.raises(DePassError, match="out of range"):
        result.explanation(3)
    with pytest.raises(DePassError, match="only for the MLM head"):
        result.explanation(0, position=1)
    with pytest.raises(DePassError, match="use result.class_logits"):
        result.token_logits
    with pytest.raises(KeyError, match="was not decomposed"):
        result["blocks.0.attn.hook_pattern"]
    with pytest.raises(KeyError, match="was not decomposed"):
        result.residual("blocks.0.attn.hook_pattern")
    with pytest.raises(TypeError):
        result["hook_full_embed"] = torch.zeros(1)  # read-only mapping
    mlm = MLMHead.from_encoder(mlm32, token_ids=[1])
    _, mres = run_decompx(mlm32, clf32.tokens, head=mlm)
    with pytest.raises(DePassError, match="needs position="):
        mres.explanation(0)
    with pytest.raises(DePassError, match="use result.token_logits"):
        mres.class_logits
    with pytest.raises(DePassError, match="no pooler"):
        mres.pooler


@requires_hooked_encoder
def test_converter_errors(clf32):
    import transformers

    cfg = clf32.hf.config
    sd = dict(clf32.hf.state_dict())
    del sd["bert.encoder.layer.1.output.dense.weight"]
    with pytest.raises(DePassError, match="no key 'bert.encoder.layer.1.output.dense.weight'"):
        hooked_encoder_from_hf_bert(sd, cfg)
    bad = transformers.BertConfig(**{**cfg.to_dict(), "type_vocab_size": 3})
    with pytest.raises(UnsupportedModelError, match="type_vocab_size=3"):
        hooked_encoder_from_hf_bert(clf32.hf.state_dict(), bad)
    wide = transformers.BertConfig(**{**cfg.to_dict(), "intermediate_size": 40})
    with pytest.raises(DePassError, match="does hf_config match the state dict"):
        hooked_encoder_from_hf_bert(clf32.hf.state_dict(), wide)


@requires_hooked_encoder
def test_not_an_encoder(clf32):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    dec = HookedTransformer(
        HookedTransformerConfig(d_model=16, d_head=4, n_heads=4, n_layers=1, n_ctx=8, d_vocab=50, act_fn="gelu", device="cpu")
    )
    with pytest.raises(UnsupportedModelError, match="DecompX needs a BERT encoder.*got HookedTransformer"):
        run_decompx(dec, clf32.tokens, head=clf32.head)


def test_unsupported_transformers_models(clf32):
    import transformers

    with pytest.raises(UnsupportedModelError, match="DecompX needs a BERT encoder.*got Linear"):
        run_decompx(torch.nn.Linear(2, 2), clf32.tokens)
    roberta = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32,
    )).eval()
    with pytest.raises(UnsupportedModelError, match=r"got RobertaForSequenceClassification \(model_type='roberta'\)"):
        run_decompx(roberta, clf32.tokens)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=4, vocab_size=50)).eval()
    with pytest.raises(UnsupportedModelError, match="got GPT2LMHeadModel.*For a decoder, wrap it: TransformerBridge"):
        depass_tl.run_with_depass(gpt2, clf32.tokens)
    tagger = random_bert("BertForTokenClassification")
    with pytest.raises(UnsupportedModelError, match="BertForTokenClassification is not supported"):
        run_decompx(tagger, clf32.tokens)
    relative = random_bert(position_embedding_type="relative_key")
    with pytest.raises(UnsupportedModelError, match="position_embedding_type='relative_key'"):
        run_decompx(relative, clf32.tokens)
    silu = random_bert(hidden_act="silu")
    with pytest.raises(UnsupportedModelError, match="hidden_act='silu' is not supported"):
        run_decompx(silu, clf32.tokens)


def test_sdpa_and_training_mode_are_refused_without_touching_the_model(clf32):
    sdpa = random_bert(attn_implementation="sdpa")
    with pytest.raises(UnsupportedModelError, match='runs attention with .sdpa.*attn_implementation="eager"'):
        run_decompx(sdpa, clf32.tokens)
    assert sdpa.config._attn_implementation == "sdpa"
    training = copy.deepcopy(clf32.hf).train()
    with pytest.raises(UnsupportedModelError, match=r"in training mode .*call model.eval\(\) first"):
        run_decompx(training, clf32.tokens)
    assert training.training


@requires_bridge
def test_bert_bridge_in_compatibility_mode_is_refused():
    from tests.bridge_models import bridge_tokens, build_bridge

    bridge, _ = build_bridge("bert", compat=True)
    with pytest.raises(UnsupportedModelError, match="in compatibility mode"):
        depass_tl.run_with_depass(bridge, bridge_tokens(), head=MLMHead.from_encoder(build_bridge("bert")[0], token_ids=[5]))


def test_transformer_lens_4_without_hooked_encoder(clf32, monkeypatch):
    """On TL 4 ``HookedEncoder`` is gone: importing still works, the converter says what to do, and
    DecompX still runs on the transformers model (its backend needs no TL class)."""
    import transformer_lens

    def removed(name):  # what TransformerLens 4's module __getattr__ does
        raise AttributeError(f"{name!r} was removed in TransformerLens 4.0.")

    if HAS_HOOKED:  # simulate TL 4 (on TL 4 itself the class is really gone)
        monkeypatch.delattr(transformer_lens, "HookedEncoder")
        monkeypatch.setattr(transformer_lens, "__getattr__", removed, raising=False)
    with pytest.raises((AttributeError, ImportError)):  # TL 4.3 raises ImportError
        transformer_lens.HookedEncoder
    importlib.reload(api_module)  # importing the module must not need HookedEncoder
    with pytest.raises(UnsupportedModelError, match="removed in TransformerLens 4.0.*transformer-lens<4"):
        hooked_encoder_from_hf_bert(clf32.hf.state_dict(), clf32.hf.config)
    logits, result = api_module.run_decompx(clf32.hf, clf32.tokens, attention_mask=clf32.attention_mask)
    assert result.backend == "transformers" and torch.allclose(result.class_logits.sum(0), logits, atol=1e-5)


def test_no_hooks_left_and_model_untouched(clf32, mlm32):
    for model, head in ((clf32.encoder, clf32.head), (mlm32, MLMHead.from_encoder(mlm32, token_ids=[2, 3]))):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            model(clf32.tokens)  # a TL 4 Bridge wires its own capture hooks on its first forward (and keeps them)
        own = _attached_hooks(model)
        assert own == 0 or clf32.backend == "TransformerBridge", own
        for policy in ("bias", "absdot"):
            run_decompx(model, clf32.tokens, head=head, bias_policy=policy, ffn_approx="gelu_la")
            assert _attached_hooks(model) == own
        # a forward that raises inside the scoped hooks (token id out of range reaches the embedding)
        with pytest.raises(IndexError):
            capture_encoder(
                read_encoder(model), torch.tensor([[1, 500]]), token_type_ids=None, attention_mask=None,
                dtype=torch.float32, with_head=False,
            )
        assert _attached_hooks(model) == own
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert not model.training


def test_queries_and_options_that_were_refused_by_mistake(clf64):
    """Found by a review: completeness_error('logits') said 'logits' was not decomposed (the dict form had it);
    names_filter='one hook' was split into its characters."""
    _, result = run_decompx(clf64.encoder, clf64.tokens, **_kw(clf64))
    assert result.completeness_error("logits") == result.completeness_error()["logits"] < 1e-8
    assert result.completeness_error("pooler") == result.completeness_error()["pooler"]
    _, one = run_decompx(clf64.encoder, clf64.tokens, names_filter="blocks.1.hook_resid_post", **_kw(clf64))
    assert list(one) == ["blocks.1.hook_resid_post"]


def test_a_transformers_bert_configured_to_return_tuples_runs():
    """config.return_dict=False made the model return a tuple and DecompX failed on `.logits`."""
    hf = random_bert(dtype=torch.float64, return_dict=False)
    tokens = torch.tensor([[1, 5, 7, 2]])
    logits, result = depass_tl.run_with_depass(hf, tokens)
    with torch.no_grad():
        torch.testing.assert_close(logits, hf(tokens)[0], rtol=0, atol=0)
    assert result.exact and result.completeness_error("logits") < 1e-8
