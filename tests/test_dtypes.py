"""Half-precision models: capture in the model dtype, accumulate components in float32 by default.

Measured on 2-layer models (d_model 32, batch 2 x 7 tokens; GPT-2-like, Llama-like, attention-only,
no-norm), every MLP rule. Completeness is relative to the clean half-precision activations TL
computed, and that error is TL's own half-precision rounding, not the replay's: accumulating in
float32 or float64 gives the same error (seen: bf16 <= 1.0e-2, fp16 <= 9.3e-4; bf16 has 8 mantissa
bits, fp16 11). Bounds asserted:

* default (float32 accumulation): bf16 ``2e-2``, fp16 ``2e-3`` relative to the clean activation;
* float32 vs float64 accumulation of the same half model: ``1e-5`` relative (the float32 replay is
  itself accurate);
* ``dtype=`` the model's half dtype (accumulate in half, configurable): bf16 ``3e-2``, fp16 ``4e-3``
  (seen: 1.3e-2, 1.9e-3).
"""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl.replay.rules import rule_names
from tests._tl_version import requires_bridge
from tests.models import make_model, random_tokens

HALF = {torch.bfloat16: 2e-2, torch.float16: 2e-3}
HALF_ACCUMULATION = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
ARCHS = ("gpt2", "llama", "attn_only", "no_norm")


def _model(arch: str, dtype: torch.dtype):
    model = make_model(arch, dtype=dtype, n_layers=2, d_model=32, n_heads=4, d_mlp=64)
    return model, random_tokens(model, batch=2, pos=7)


@pytest.mark.parametrize("rule", rule_names())
@pytest.mark.parametrize("dtype", list(HALF), ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_half_models_accumulate_in_float32(arch: str, dtype: torch.dtype, rule: str) -> None:
    model, toks = _model(arch, dtype)
    logits, dc = depass_tl.run_with_depass(model, toks, mlp_rule=rule)
    assert logits.dtype == dtype
    assert all(v.dtype == torch.float32 for v in dc.values())
    errors = dc.completeness_error(relative=True)
    assert max(errors.values()) <= HALF[dtype], errors
    _, dc64 = depass_tl.run_with_depass(model, toks, mlp_rule=rule, dtype=torch.float64)
    for name, value in dc.items():
        ref = dc64[name]
        gap = float((value.double() - ref).abs().max() / ref.abs().max())
        assert gap <= 1e-5, (name, gap)


@pytest.mark.parametrize("dtype", list(HALF), ids=["bf16", "fp16"])
def test_half_accumulation_is_configurable(dtype: torch.dtype) -> None:
    model, toks = _model("gpt2", dtype)
    _, dc = depass_tl.run_with_depass(model, toks, dtype=dtype)
    assert dc["unembed.hook_in"].dtype == dtype
    assert max(dc.completeness_error(relative=True).values()) <= HALF_ACCUMULATION[dtype]


def test_frozen_norm_scales_stay_float32() -> None:
    """TL computes norms of half models in float32; the capture keeps that scale unrounded."""
    run = depass_tl.capture(*_model("gpt2", torch.bfloat16))
    assert run.acts["blocks.0.ln1.hook_scale"].dtype == torch.float32
    assert run.acts["blocks.0.attn.hook_pattern"].dtype == torch.bfloat16


SPECS = {
    "heads(0)": lambda: depass_tl.heads(0),
    "heads()": lambda: depass_tl.heads(),
    "modules()": lambda: depass_tl.modules(),
    "neurons(0)": lambda: depass_tl.neurons(0, top_k=4),
    "sources()": lambda: depass_tl.sources(),
    "tokens()": lambda: depass_tl.tokens(),
}


@pytest.mark.parametrize("spec", sorted(SPECS))
@pytest.mark.parametrize("dtype", list(HALF), ids=["bf16", "fp16"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_component_spec_runs_on_half_models(arch: str, dtype: torch.dtype, spec: str) -> None:
    """The specs' own completeness checks (components vs the clean activation they start from) allow
    for the model's half-precision rounding; before, heads() on a bf16 model failed its check by 4e-3."""
    model, toks = _model(arch, dtype)
    _, dc = depass_tl.run_with_depass(model, toks, components=SPECS[spec]())
    assert max(dc.completeness_error(relative=True).values()) <= HALF[dtype]


def test_custom_components_on_a_half_model_allow_its_rounding() -> None:
    """Off by 5e-4 relative (under bf16's rounding, over the float tolerance 1e-4): accepted; 10% off: refused."""
    model, toks = _model("llama", torch.bfloat16)
    _, cache = model.run_with_cache(toks)
    resid = cache["blocks.1.hook_resid_pre"].float()
    parts = torch.stack([resid * 0.5, resid * 0.5 * (1 + 1e-3)])
    spec = depass_tl.custom("blocks.1.hook_resid_pre", parts, ["a", "b"])
    depass_tl.run_with_depass(model, toks, components=spec)
    with pytest.raises(depass_tl.DePassError, match="do not sum to the clean activation"):
        depass_tl.run_with_depass(model, toks, components=depass_tl.custom("blocks.1.hook_resid_pre", parts * 1.1, ["a", "b"]))
    float_model, float_toks = _model("llama", torch.float32)
    _, cache = float_model.run_with_cache(float_toks)
    resid = cache["blocks.1.hook_resid_pre"]
    with pytest.raises(depass_tl.DePassError, match="do not sum to the clean activation"):  # float32 stays strict
        depass_tl.run_with_depass(float_model, float_toks, components=depass_tl.custom(
            "blocks.1.hook_resid_pre", torch.stack([resid * 0.5, resid * 0.5 * (1 + 1e-3)]), ["a", "b"]))


def test_residual_identity_allows_the_models_own_addition_order_in_bfloat16() -> None:
    """Known answer: a model that adds ``resid_pre + (attn_out + mlp_out)`` in bfloat16 (HF's GPT-NeoX does)
    lands one bfloat16 unit (2**-5 at 6.0) from ``(resid_pre + attn_out) + mlp_out``; the capture check must
    take that for rounding, and still refuse a gap that is not rounding."""
    from depass_tl.clean_checks import check_residual_identity
    from depass_tl.errors import UnsupportedModelError

    model, toks = _model("gpt2", torch.bfloat16)
    run = depass_tl.capture(model, toks)
    acts = dict(run.acts)
    p = "blocks.0."
    pre, attn, mlp = (torch.full_like(acts[p + "hook_resid_pre"], v) for v in (6.0, 0.02, 0.02))
    post = pre + (attn + mlp)  # rounded in bfloat16, in the other order
    assert float(((pre + attn) + mlp - post).abs().max()) == 2.0 ** -5  # the orders do differ here
    acts.update({p + "hook_resid_pre": pre, p + "hook_attn_out": attn, p + "hook_mlp_out": mlp,
                 p + "hook_resid_post": post})
    check_residual_identity(acts, run.view)  # rounding: accepted
    acts[p + "hook_resid_post"] = post + 0.5  # 8 % of the stream: not rounding
    with pytest.raises(UnsupportedModelError, match="layer 0: hook_resid_pre"):
        check_residual_identity(acts, run.view)


@requires_bridge
def test_a_bfloat16_parallel_bridge_is_decomposed() -> None:
    """HF's GPT-NeoX (parallel attention and MLP) in bfloat16: refused by the capture's residual check before
    its tolerance followed the model's dtype (a one-unit gap from HF's order of the three-term sum)."""
    from tests.bridge_models import bridge_tokens, build_bridge

    model, _ = build_bridge("neox", dtype=torch.bfloat16)
    _, dc = depass_tl.run_with_depass(model, bridge_tokens(batch=2, pos=6))
    assert max(dc.completeness_error(relative=True).values()) <= HALF[torch.bfloat16]
