"""One model, every backend: transformers' BERT, a BERT TransformerBridge and TL's HookedEncoder give
the same DecompX numbers, each exact to 1e-5 relative in float32."""

from __future__ import annotations

import pytest
import torch

from depass_tl.decompx import BIAS_POLICIES, MLMHead, hooked_encoder_from_hf_bert, run_decompx
from tests.decompx.conftest import MLM_BACKENDS, make_classifier, random_bert, requires_bridge, requires_hooked_encoder

OPTIONS = [dict(), dict(ffn_approx="gelu_la", tanh_approx="la"), dict(ffn_approx="relu", include_ffn=False)]


def _same(a, b, tol: float) -> None:
    assert list(a) == list(b) and a.labels == b.labels
    for hook in a:
        assert (a[hook] - b[hook]).abs().max() <= tol * max(1.0, float(a.clean[hook].abs().max())), hook
    assert (a.class_logits - b.class_logits).abs().max() <= tol * max(1.0, float(a.class_logits.abs().max()))
    assert (a.residual("logits") - b.residual("logits")).abs().max() <= tol * max(1.0, float(a.class_logits.abs().max()))


@requires_hooked_encoder
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_transformers_and_hooked_encoder_give_the_same_numbers(dtype, tol):
    clf = make_classifier(dtype=dtype, n_layers=3)
    encoder = hooked_encoder_from_hf_bert(clf.hf.state_dict(), clf.hf.config, dtype=dtype)
    for policy in BIAS_POLICIES:
        for options in OPTIONS:
            kw = dict(token_type_ids=clf.token_type_ids, attention_mask=clf.attention_mask, bias_policy=policy,
                      **options)
            hf_logits, hf = run_decompx(clf.hf, clf.tokens, **kw)
            he_logits, he = run_decompx(encoder, clf.tokens, head=clf.head, **kw)
            assert (hf.backend, he.backend) == ("transformers", "HookedEncoder")
            assert (hf_logits - he_logits).abs().max() <= tol, (policy, options)
            _same(hf, he, tol)
            assert hf.exact == he.exact == (options.get("include_ffn", True)), (policy, options)


@requires_bridge
@pytest.mark.parametrize("policy", ["bias", "absdot"])
def test_transformers_and_bridge_give_the_same_numbers(policy):
    from tests.bridge_models import boot_folder, save_hf_model

    hf = random_bert("BertForMaskedLM", n_layers=3)
    bridge = boot_folder(save_hf_model(hf))
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(tokens)
    mask[0, 7:] = 0
    ids = [4, 11, 42]
    kw = dict(attention_mask=mask, bias_policy=policy, ffn_approx="gelu_la")
    hf_logits, a = run_decompx(hf, tokens, head=MLMHead.from_encoder(hf, token_ids=ids), **kw)
    br_logits, b = run_decompx(bridge, tokens, head=MLMHead.from_encoder(bridge, token_ids=ids), **kw)
    assert (a.backend, b.backend) == ("transformers", "TransformerBridge")
    assert (hf_logits - br_logits).abs().max() <= 1e-5
    assert list(a) == list(b)
    for hook in a:
        assert (a[hook] - b[hook]).abs().max() <= 1e-5 * float(a.clean[hook].abs().max()), hook
    assert (a.token_logits - b.token_logits).abs().max() <= 1e-5 * float(a.token_logits.abs().max())


def _float32_model(backend: str):
    """``(model, head, tokens, mask)``: a 4-layer float32 BERT through ``backend``."""
    clf = make_classifier(dtype=torch.float32, n_layers=4, seed=2, backend="HookedEncoder" if backend == "HookedEncoder"
                          else "transformers")
    if backend == "transformers":
        return clf.hf, None, clf.tokens, clf.attention_mask
    if backend == "HookedEncoder":
        return clf.encoder, clf.head, clf.tokens, clf.attention_mask
    from tests.bridge_models import boot_folder, save_hf_model

    bridge = boot_folder(save_hf_model(random_bert("BertForMaskedLM", n_layers=4, seed=2)))
    return bridge, MLMHead.from_encoder(bridge, token_ids=[1, 2, 3]), clf.tokens, clf.attention_mask


@pytest.mark.parametrize("backend", MLM_BACKENDS)
@pytest.mark.parametrize("policy", ["bias", "absdot"])
def test_float32_completeness_within_1e5_relative(backend, policy):
    model, head, tokens, mask = _float32_model(backend)
    variants = [dict(), dict(ffn_approx="gelu_la")] + ([] if isinstance(head, MLMHead) else [dict(tanh_approx="la")])
    for options in variants:
        _, result = run_decompx(model, tokens, head=head, attention_mask=mask, bias_policy=policy, **options)
        errors = result.completeness_error(relative=True)
        assert max(errors.values()) <= 1e-5, (options, errors)


def test_relu_variant_is_exact_on_a_relu_model():
    """On a ReLU BERT, ReLU's slope 1[ζ > 0] is the frozen ratio ReLU(ζ)/ζ: the "relu" variant is
    the paper's "zo" and exact."""
    clf = make_classifier(dtype=torch.float64, hidden_act="relu")
    kw = dict(token_type_ids=clf.token_type_ids, attention_mask=clf.attention_mask, bias_policy="absdot")
    _, zo = run_decompx(clf.hf, clf.tokens, **kw)
    _, relu = run_decompx(clf.hf, clf.tokens, ffn_approx="relu", **kw)
    assert relu.exact and max(relu.completeness_error().values()) < 1e-10
    torch.testing.assert_close(relu.class_logits, zo.class_logits, rtol=0, atol=1e-12)
    _, gelu_model = run_decompx(make_classifier(dtype=torch.float64).hf, clf.tokens, ffn_approx="relu", **kw)
    assert not gelu_model.exact and gelu_model.completeness_error()["logits"] > 1e-3


@requires_hooked_encoder
def test_a_converted_masked_lm_keeps_its_mlm_head():
    """hooked_encoder_from_hf_bert read only bert.*: a BertForMaskedLM's head and unembedding became zeros and
    DecompX explained all-zero logits as exact. They are converted now (same logits and decomposition as the
    HF model), and an all-zero head (a converted classifier) is refused."""
    from depass_tl import DePassError

    hf = random_bert("BertForMaskedLM", n_layers=2, dtype=torch.float64)
    encoder = hooked_encoder_from_hf_bert(hf.state_dict(), hf.config, dtype=torch.float64)
    tokens = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(encoder(tokens), hf(input_ids=tokens).logits, rtol=0, atol=1e-10)
    ids = [4, 11, 42]
    _, a = run_decompx(hf, tokens, head=MLMHead.from_encoder(hf, token_ids=ids))
    _, b = run_decompx(encoder, tokens, head=MLMHead.from_encoder(encoder, token_ids=ids))
    assert float(a.token_logits.abs().max()) > 0.1
    torch.testing.assert_close(b.token_logits, a.token_logits, rtol=0, atol=1e-10)
    import tempfile

    from safetensors.torch import load_file

    folder = tempfile.mkdtemp()
    hf.save_pretrained(folder)  # drops the decoder weight tied to the word embeddings
    on_disk = load_file(f"{folder}/model.safetensors")
    assert "cls.predictions.decoder.weight" not in on_disk
    loaded = hooked_encoder_from_hf_bert(on_disk, hf.config, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), hf(input_ids=tokens).logits, rtol=0, atol=1e-10)
    classifier = hooked_encoder_from_hf_bert(make_classifier(dtype=torch.float64).hf.state_dict(), hf.config,
                                             dtype=torch.float64)
    with pytest.raises(DePassError, match="MLM head or unembedding is all zeros"):
        MLMHead.from_encoder(classifier, token_ids=ids)
