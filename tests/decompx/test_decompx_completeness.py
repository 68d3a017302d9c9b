"""Completeness, padding and faithfulness-to-HF tests on random BERT classifiers."""

from __future__ import annotations

import pytest
import torch

from depass_tl.decompx import BIAS_POLICIES, MLMHead, run_decompx
from tests.decompx.conftest import MLM_BACKENDS, requires_hooked_encoder

LAYER_HOOKS = (
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
    "hook_normalized_resid_post",
)


def _run(clf, policy, **kw):
    return run_decompx(
        clf.encoder,
        clf.tokens,
        head=clf.head,
        token_type_ids=clf.token_type_ids,
        attention_mask=clf.attention_mask,
        bias_policy=policy,
        **kw,
    )


def _hf_logits(clf):
    with torch.no_grad():
        return clf.hf(
            input_ids=clf.tokens, token_type_ids=clf.token_type_ids, attention_mask=clf.attention_mask
        ).logits


def test_model_is_nontrivial(hf64):
    """Guard: the random model must have peaked attention, curved GELU and used segments."""
    hf = hf64.hf
    grabbed = {}
    handle = hf.bert.encoder.layer[0].intermediate.dense.register_forward_hook(
        lambda module, args, out: grabbed.__setitem__("pre", out)
    )
    try:
        with torch.no_grad():
            out = hf(input_ids=hf64.tokens, token_type_ids=hf64.token_type_ids,
                     attention_mask=hf64.attention_mask, output_attentions=True)
    finally:
        handle.remove()
    assert out.attentions[1][0].max() > 0.6  # far from uniform (1/7)
    pre = grabbed["pre"]
    assert (pre < -1).any() and (pre > 1).any()  # both GELU tails, ratio far from constant
    other = hf64.token_type_ids.clone()
    other[0] = 0
    with torch.no_grad():
        a = hf(input_ids=hf64.tokens, token_type_ids=hf64.token_type_ids).logits
        b = hf(input_ids=hf64.tokens, token_type_ids=other).logits
    assert (a[0] - b[0]).abs().max() > 1e-2


def test_encoder_plus_head_matches_hf(clf):
    tol = 1e-5 if clf.hf.dtype == torch.float32 else 1e-12
    logits, _ = _run(clf, "bias")
    expected = _hf_logits(clf)
    assert logits.shape == expected.shape == (2, 3)
    assert (logits - expected).abs().max() <= tol


@pytest.mark.parametrize("policy", BIAS_POLICIES)
def test_completeness_every_layer_and_logits(policy, clf):
    tol = 1e-5 if clf.hf.dtype == torch.float32 else 1e-10
    logits, result = _run(clf, policy)
    errors = result.completeness_error()
    expected_keys = {"hook_full_embed", "pooler", "logits"} | {
        f"blocks.{l}.{h}" for l in range(2) for h in LAYER_HOOKS
    }
    assert set(errors) == expected_keys
    assert max(errors.values()) <= tol, errors
    # independent check against HF's own logits, not just the captured ones
    assert (result.class_logits.sum(0) - _hf_logits(clf)).abs().max() <= 10 * tol
    n_comp = 8 if policy == "bias" else 7
    assert result.class_logits.shape == (n_comp, 2, 3)
    assert result.pooler.shape == (n_comp, 2, 16)
    assert result["blocks.1.hook_normalized_resid_post"].shape == (n_comp, 2, 7, 16)


@pytest.mark.parametrize("policy", BIAS_POLICIES)
def test_padding_components_are_exactly_zero(clf32, policy):
    _, result = _run(clf32, policy)
    for name, comps in result.items():
        # row 1 is padded at positions 5, 6: their components vanish at every real position
        assert torch.equal(comps[5:7, 1, :5], torch.zeros_like(comps[5:7, 1, :5])), name
    assert torch.equal(result.class_logits[5:7, 1], torch.zeros(2, 3))
    assert torch.equal(result.explanation(0)[1, 5:], torch.zeros(2))
    # padding must not change the real tokens' decomposition: run row 1 alone, unpadded
    _, alone = run_decompx(
        clf32.encoder,
        clf32.tokens[1:, :5],
        head=clf32.head,
        token_type_ids=clf32.token_type_ids[1:, :5],
        bias_policy=policy,
    )
    n = 5
    got = result.class_logits[:n, 1]
    want = alone.class_logits[:n, 0]
    assert (got - want).abs().max() < 1e-5
    if policy == "bias":
        assert (result.class_logits[-1, 1] - alone.class_logits[-1, 0]).abs().max() < 1e-5


@pytest.mark.parametrize("policy", BIAS_POLICIES)
def test_explanation_is_signed_share_of_the_logit(clf64, policy):
    logits, result = _run(clf64, policy)
    for c in range(3):
        score = result.explanation(c)
        assert score.shape == (2, 7)
        total = score.sum(-1)
        if policy == "bias":
            total = total + result.class_logits[-1, :, c]
        assert torch.allclose(total, logits[:, c], atol=1e-10)
    scores = torch.stack([result.explanation(c) for c in range(3)])
    assert (scores < 0).any() and (scores > 0).any()  # signed, not norms


def test_policies_differ_but_agree_on_totals(clf64):
    runs = {p: _run(clf64, p)[1] for p in BIAS_POLICIES}
    for p in ("absdot", "norm", "equal"):
        assert runs[p].labels == tuple(f"tok{i}" for i in range(7))
    for p, q in (("absdot", "norm"), ("norm", "equal"), ("equal", "absdot")):
        assert (runs[p].class_logits - runs[q].class_logits).abs().max() > 1e-3, (p, q)
        assert torch.allclose(runs[p].class_logits.sum(0), runs[q].class_logits.sum(0), atol=1e-10)
    assert runs["bias"].labels[-1] == "bias"


def test_float32_model_replayed_in_float64(clf32):
    _, result = _run(clf32, "absdot", dtype=torch.float64)
    assert result.class_logits.dtype == torch.float64
    assert max(result.completeness_error().values()) < 1e-5


def test_names_filter_keeps_only_requested_hooks(clf32):
    _, result = _run(clf32, "bias", names_filter=["blocks.1.hook_resid_mid"])
    assert list(result) == ["blocks.1.hook_resid_mid"]
    _, result = _run(clf32, "bias", names_filter=lambda name: name.endswith("normalized_resid_post"))
    assert sorted(result) == ["blocks.0.hook_normalized_resid_post", "blocks.1.hook_normalized_resid_post"]


def _mlm_model(backend: str, dtype: torch.dtype):
    """A random masked-LM BERT through ``backend`` (d_vocab 30)."""
    from tests.decompx.conftest import random_bert, random_encoder

    if backend == "HookedEncoder":
        return random_encoder(dtype=dtype)
    hf = random_bert("BertForMaskedLM", dtype=dtype, vocab_size=30, hidden_size=12, num_attention_heads=3,
                     intermediate_size=24, max_position_embeddings=10)
    if backend == "transformers":
        return hf
    from tests.bridge_models import boot_folder, save_hf_model

    return boot_folder(save_hf_model(hf), dtype=dtype)


@pytest.mark.parametrize("backend", MLM_BACKENDS)
@pytest.mark.parametrize("policy", BIAS_POLICIES)
def test_mlm_head_completeness(backend, policy):
    enc = _mlm_model(backend, torch.float64)
    head = MLMHead.from_encoder(enc, token_ids=[3, 17, 29])
    tokens = torch.tensor([[1, 4, 9, 2, 7, 0], [5, 6, 8, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    logits, result = run_decompx(enc, tokens, head=head, attention_mask=mask, bias_policy=policy)
    assert logits.shape == (2, 6, 30)
    n_comp = 7 if policy == "bias" else 6
    assert result.token_logits.shape == (n_comp, 2, 6, 3)
    assert max(result.completeness_error().values()) < 1e-10
    assert (result.token_logits.sum(0) - logits[..., [3, 17, 29]]).abs().max() < 1e-10
    assert torch.equal(result.token_logits[4:6, 1, :4], torch.zeros(2, 4, 3))  # padded tokens
    assert result.explanation(1, position=2).shape == (2, 6)


@requires_hooked_encoder
def test_mlm_head_matches_hf_masked_lm():
    """TL's own converter (BertForPreTraining) + MLMHead reproduce HF's MLM logits."""
    import transformers
    from transformer_lens import HookedEncoder, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_bert_weights

    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=12, attn_implementation="eager",
    )
    torch.manual_seed(3)
    hf = transformers.BertForPreTraining(cfg).eval().double()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.4)
    tl_cfg = HookedTransformerConfig(
        d_model=8, d_head=4, n_heads=2, d_mlp=16, n_layers=1, n_ctx=12, d_vocab=40, act_fn="gelu",
        attention_dir="bidirectional", eps=cfg.layer_norm_eps, dtype=torch.float64, device="cpu",
    )
    enc = HookedEncoder(tl_cfg, move_to_device=False)
    enc.load_state_dict(convert_bert_weights(hf, tl_cfg), strict=False)
    tokens = torch.tensor([[2, 11, 5, 30, 3]])
    with torch.no_grad():
        want = hf(input_ids=tokens).prediction_logits[..., [5, 30]]
    _, result = run_decompx(enc, tokens, head=MLMHead.from_encoder(enc, token_ids=[5, 30]), bias_policy="norm")
    assert (result.token_logits.sum(0) - want).abs().max() < 1e-10
