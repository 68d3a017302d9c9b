"""depass_tl against an independent re-implementation of the official DePass code (tests/official_depass.py).

A tiny random Hugging Face Llama (float64, RMSNorm, GQA, rotary, gated SiLU MLP, no biases: the
official code's domain) is decomposed twice: by the re-implementation of the official recurrence on
the HF modules, and by depass_tl on the same weights (a HookedTransformer converted with TL's own
code on TL 2/3, a TransformerBridge on TL 4). They agree at the token level for ``softmax`` (with and
without ``ignore_special_token``), ``max`` and ``taylor``, and at the head level once
``official_position0=True`` reproduces the official position-0 gate; without it the head scores
differ by about a percent, the difference reported against the official head-level numbers.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tr

import depass_tl
from tests._tl_version import HAS_BRIDGE, HAS_HOOKED
from tests.official_depass import official_head_scores, official_token_scores

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
torch.set_num_threads(1)

VOCAB = 64
TOKENS = torch.tensor([[5, 17, 3, 42, 8, 29, 11]])
TARGET = 7
#: float64 throughout; the two sides differ only by the rotary tables (TL computes its sin/cos in
#: float32 from a float32 arange: the clean logits differ by ~1e-6 relative).
RTOL = 2e-5


def _randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_((0.5 if "embed" in name else 0.25) * noise)


@functools.cache
def _hf_llama(seed: int = 0) -> Any:
    cfg = tr.LlamaConfig(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=32, rms_norm_eps=1e-6, hidden_act="silu",
    )
    cfg.architectures = ["LlamaForCausalLM"]
    cfg._attn_implementation = "eager"  # the attention probabilities are read from the forward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = tr.LlamaForCausalLM(cfg).to(torch.float64).eval()
    _randomise(hf, seed)
    hf.requires_grad_(False)
    return hf


def _neutral_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="depass_official_")) / "model"  # no "llama" in the path (TL sniffs names)


@functools.cache
def _tl_model(seed: int = 0) -> Any:
    """depass_tl's view of the same weights: HookedTransformer (TL 2/3) or TransformerBridge (TL 4)."""
    hf = _hf_llama(seed)
    if HAS_HOOKED:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens import loading_from_pretrained as tl_loading

        folder = _neutral_folder()
        hf.config.save_pretrained(folder)
        cfg_dict = tl_loading.convert_hf_model_config(str(folder))
        cfg_dict.update(device="cpu", init_weights=False, dtype=torch.float64, tokenizer_name=None, seed=seed)
        cfg = HookedTransformerConfig.from_dict(cfg_dict)
        state = tl_loading.get_pretrained_state_dict(str(folder), cfg, hf_model=hf, dtype=torch.float64)
        model = HookedTransformer(cfg)
        model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                          fold_value_biases=False)
        return model.eval()
    assert HAS_BRIDGE
    from tests.bridge_models import boot_folder, save_hf_model

    return boot_folder(save_hf_model(hf), dtype=torch.float64)


def _ours(**kwargs: Any) -> Any:
    _, dc = depass_tl.run_with_depass(_tl_model(), TOKENS, names_filter=[], **kwargs)
    return dc


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    err = float((got - want).abs().max() / want.abs().max())
    print(f"relative max difference to the official code: {err:.2e}")
    assert err < RTOL, (got, want)


@torch.no_grad()
def test_the_two_models_compute_the_same_logits() -> None:
    logits = _tl_model()(TOKENS)
    hf_logits = _hf_llama()(TOKENS).logits
    assert float((logits - hf_logits).abs().max() / hf_logits.abs().max()) < RTOL / 4


@pytest.mark.parametrize("ignore_special_token", [True, False])
@pytest.mark.parametrize(("rule", "temperature"), [("softmax", 0.1), ("softmax", 1.0), ("max", 0.1)])
def test_token_level_matches_the_official_code(rule: str, temperature: float, ignore_special_token: bool) -> None:
    want = official_token_scores(_hf_llama(), TOKENS, TARGET, rule=rule, temperature=temperature,
                                 ignore_special_token=ignore_special_token)
    dc = _ours(mlp_rule=rule, temperature=temperature, ignore_special_token=ignore_special_token)
    got = dc.logit_attrs(TARGET)[:-1, 0]  # tok0 .. tok6 (the bias component is 0 on this bias-free model)
    assert float(dc.logit_attrs(TARGET)[-1].abs().max()) == 0.0
    _assert_close(got, want)
    if ignore_special_token:  # the option matters on this model (BOS's share with it off)
        off = official_token_scores(_hf_llama(), TOKENS, TARGET, rule=rule, temperature=temperature,
                                    ignore_special_token=False)
        assert float((off - want).abs().max() / want.abs().max()) > 1e-3


def test_taylor_matches_the_official_code_and_differs_from_ratio() -> None:
    want = official_token_scores(_hf_llama(), TOKENS, TARGET, rule="taylor")
    got = _ours(mlp_rule="taylor").logit_attrs(TARGET)[:-1, 0]
    _assert_close(got, want)
    ratio = _ours(mlp_rule="ratio").logit_attrs(TARGET)[:-1, 0]
    assert float((ratio - want).abs().max() / want.abs().max()) > 0.05  # gated: a different (exact) allocation


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize(("rule", "temperature"), [("softmax", 0.1), ("softmax", 1.0), ("max", 0.1)])
def test_head_level_matches_the_official_code_with_official_position0(layer: int, rule: str,
                                                                      temperature: float) -> None:
    """The official head-level scores are ours with the official position-0 gate; without it they differ.

    In module / head mode the official code's component 0 is the rest of the residual, and its MLP
    key at position 0 is overwritten with 1 in every MLP (``gate_ratio[0, :, 0] = 1``), so at
    position 0 the rest competes with the heads with key 1 instead of its own.
    """
    want = official_head_scores(_hf_llama(), TOKENS, layer, TARGET, rule=rule, temperature=temperature)
    spec = depass_tl.heads(layer=layer)
    dc = _ours(components=spec, mlp_rule=rule, temperature=temperature, official_position0=True)
    assert dc.labels[-2:] == ("rest", "bias")
    _assert_close(dc.logit_attrs(TARGET)[:-2, 0], want)
    default = _ours(components=spec, mlp_rule=rule, temperature=temperature).logit_attrs(TARGET)[:-2, 0]
    assert float((default - want).abs().max() / want.abs().max()) > 1e-3
    # both are exact: the difference is only in which component is credited (float64; the Bridge's
    # captured attention pattern is rounded through float32 by HF's eager softmax: ~1e-7 there)
    assert max(dc.completeness_error(relative=True).values()) < 1e-6


def test_official_position0_changes_nothing_at_the_token_level_on_a_bias_free_model() -> None:
    """At position 0 only tok0 is present (the bias component is 0 here): key 1 or its own, it takes all."""
    a = _ours(mlp_rule="softmax").logit_attrs(TARGET)
    b = _ours(mlp_rule="softmax", official_position0=True).logit_attrs(TARGET)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
