"""Tests of the offline family models (tests/families.py): TL conversions match their HF sources.

Tolerances (max abs error on logits, or on log-softmax when weights are processed), from the errors
measured on this machine (docs/families.md) with about 10x margin:

* float32: ``3e-5`` (seen: <= 3.4e-6).
* float64, unprocessed, family whose HF code is float64 throughout (GPT-2): ``1e-10`` (seen: 4e-15).
* float64 otherwise: ``1e-5`` (seen: <= 1.4e-6). Two float32 bottlenecks make it so: HF runs some
  ops in float32 even in a float64 model (``FamilySpec.hf_float32_ops``: attention softmax, RMSNorm,
  rotary angles), and TL 3.9's ``ProcessWeights.process_weights`` casts every non-float32 weight to
  float32 while processing, so processed float64 weights carry float32 rounding.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from depass_tl.backends.bridge import is_bridge
from depass_tl.errors import DePassError, UnsupportedModelError
from tests._tl_version import HAS_HOOKED, TL_VERSION
from tests.families import (
    FAMILIES,
    FAMILY_SPECS,
    HT_CONFIG_FEATURES,
    HT_FEATURE_TWINS,
    PROCESSING_FLAGS,
    UNSUPPORTED_FAMILIES,
    build_family,
    build_ht,
    family_tokens,
    from_pretrained_flags,
    hf_config_folder,
)
from tests.models import _is_bias, _is_norm_weight
from tests.tl_cases import buildable_cases, cases_unless_bridge, NEEDS_PROCESSING_FLAGS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
torch.set_num_threads(1)

ATOL_FLOAT32 = 3e-5
ATOL_FLOAT64_EXACT = 1e-10
ATOL_FLOAT64 = 1e-5


def _tolerance(family: str, dtype: torch.dtype, *, processed: bool) -> float:
    if dtype == torch.float32:
        return ATOL_FLOAT32
    if not processed and not FAMILY_SPECS[family].hf_float32_ops:
        return ATOL_FLOAT64_EXACT
    return ATOL_FLOAT64


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
FAMILY = pytest.mark.parametrize("family", FAMILIES)


@FAMILY
@DTYPES
def test_tl_logits_equal_hf_logits_unprocessed(family: str, dtype: torch.dtype) -> None:
    model, hf_model = build_family(family, dtype=dtype)
    tokens = family_tokens()
    with torch.no_grad():
        tl_logits = model(tokens)
        hf_logits = hf_model(tokens).logits
    assert tl_logits.dtype == dtype
    assert tl_logits.shape == hf_logits.shape == (*tokens.shape, hf_model.config.vocab_size)
    error = (tl_logits - hf_logits).abs().max().item()
    assert error <= _tolerance(family, dtype, processed=False), error


@FAMILY
@DTYPES
def test_tl_log_probs_equal_hf_with_from_pretrained_defaults(family: str, dtype: torch.dtype) -> None:
    flags = from_pretrained_flags(family)
    model, hf_model = build_family(family, dtype=dtype, **flags)
    tokens = family_tokens()
    with torch.no_grad():
        tl_log_probs = model(tokens).log_softmax(-1)
        hf_log_probs = hf_model(tokens).logits.log_softmax(-1)
    error = (tl_log_probs - hf_log_probs).abs().max().item()
    assert error <= _tolerance(family, dtype, processed=True), error


@FAMILY
def test_from_pretrained_defaults_really_process_the_weights(family: str) -> None:
    model, _ = build_family(family, dtype=torch.float64, **from_pretrained_flags(family))
    plain, _ = build_family(family, dtype=torch.float64)
    assert plain.cfg.normalization_type in ("LN", "RMS")
    if is_bridge(model):  # compatibility mode folds the norm gains (the config keeps its normalization_type)
        offset = 1.0 if getattr(model.cfg, "rmsnorm_uses_offset", False) else 0.0  # Gemma: gain = 1 + w
        assert torch.all(model.blocks[0].ln1.w + offset == 1) and not torch.all(plain.blocks[0].ln1.w + offset == 1)
    else:
        assert model.cfg.normalization_type == plain.cfg.normalization_type + "Pre"
    if from_pretrained_flags(family)["center_unembed"]:
        assert model.W_U.mean(-1).abs().max().item() < 1e-6
        assert plain.W_U.mean(-1).abs().max().item() > 1e-3


@NEEDS_PROCESSING_FLAGS
@cases_unless_bridge("flag", PROCESSING_FLAGS)
def test_each_processing_flag_alone_keeps_log_probs(flag: str) -> None:
    model, hf_model = build_family("gpt2", dtype=torch.float32, **{flag: True})
    tokens = family_tokens()
    with torch.no_grad():
        error = (model(tokens).log_softmax(-1) - hf_model(tokens).logits.log_softmax(-1)).abs().max()
    assert error.item() <= ATOL_FLOAT32


@FAMILY
def test_family_is_not_trivial(family: str) -> None:
    """Random norm weights and biases, peaked attention, MLP inputs on both sides of zero."""
    model, hf_model = build_family(family, dtype=torch.float64)
    for name, param in hf_model.named_parameters():
        if "norm" in name or "ln" in name.split(".")[-2] or name.endswith("bias"):
            assert param.std().item() > 0.05, name
    _, cache = model.run_with_cache(family_tokens())
    for layer in range(model.cfg.n_layers):
        rows = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1, :]  # [batch, head, key_pos]
        largest = rows.amax(-1)
        smallest = rows.masked_fill(rows == 0, float("inf")).amin(-1)  # over visible keys
        assert (largest > 2 * smallest).all(), (layer, largest / smallest)
        pre_name = f"blocks.{layer}.mlp.hook_pre"
        if pre_name in cache:  # MoE keeps pre-activations per expert
            pre = cache[pre_name]
            assert pre.max().item() > 0.5 and pre.min().item() < -0.5, layer


def test_build_family_is_cached() -> None:
    assert build_family("gpt2") is build_family("gpt2")
    assert build_family("gpt2")[0] is not build_family("gpt2", **from_pretrained_flags("gpt2"))[0]


@pytest.mark.skipif(not HAS_HOOKED, reason=f"impossible on TransformerLens {TL_VERSION}: no family is unsupported "
                    "there (TransformerBridge.boot_transformers loads each one, Falcon included)")
@pytest.mark.parametrize("family", sorted(UNSUPPORTED_FAMILIES) or ["falcon"])
def test_unsupported_family_raises_and_reason_holds(family: str) -> None:
    from transformer_lens import loading_from_pretrained as tl_loading

    with pytest.raises(UnsupportedModelError, match=family):
        build_family(family)
    arch = FAMILY_SPECS[family].hf_class
    with pytest.raises(NotImplementedError, match=arch):
        tl_loading.convert_hf_model_config(str(hf_config_folder(family)))


def test_bad_arguments_raise_depass_error() -> None:
    with pytest.raises(DePassError, match="unknown family 'gpt5'"):
        build_family("gpt5")
    with pytest.raises(DePassError, match="float16"):
        build_family("gpt2", dtype=torch.float16)
    with pytest.raises(DePassError, match="center_unembed=False"):
        build_family("gemma2", center_unembed=True)
    with pytest.raises(DePassError, match="unknown config"):
        build_ht("nope")


def test_config_folders_are_neutral() -> None:
    for family in FAMILIES:
        path = str(hf_config_folder(family)).lower()
        assert not any(word in path for word in ("llama", "gemma", "mistral", "bert")), path


@pytest.mark.parametrize("name", buildable_cases(dict(sorted(HT_CONFIG_FEATURES.items())), twins=HT_FEATURE_TWINS))
def test_ht_config_builds_and_runs(name: str) -> None:
    model = build_ht(name)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens)
    assert logits.shape == (2, 7, model.cfg.d_vocab_out)
    assert logits.dtype == torch.float64
    assert torch.isfinite(logits).all()
    for param_name, param in model.named_parameters():
        if _is_norm_weight(model, param_name, param):
            assert (param - 1).abs().max().item() > 0.05, param_name
        elif _is_bias(model, param_name) or param_name.endswith("sinks"):
            assert param.abs().max().item() > 0.05, param_name
