"""Weight processing moves attribution exactly as theory says, and nowhere else.

Token components (and ``bias``) under each of TL's processing flags, from theory (docs/architectures.md):

* ``fold_ln``: LN weights go into the next matrices and LN biases into the next biases, which the
  replay puts in ``bias`` either way: every component is unchanged at every residual-stream hook and
  at the logits. Only ``unembed.hook_in`` (the final norm's output) changes meaning: it no longer
  includes ``w`` and ``b`` (they moved into ``W_U`` / ``b_U``).
* ``fold_value_biases``: ``b_V`` moves into ``b_O``; pattern rows sum to 1, so ``bias`` gets the same
  ``b_V W_O`` either way: every component is unchanged.
* ``center_writing_weights``: every residual write loses its mean over ``d_model``: each residual
  component becomes ``x_c - mean_d(x_c)``; LayerNorm centres anyway, so everything after a norm
  (``unembed.hook_in``, logits) is unchanged.
* ``center_unembed``: ``W_U`` / ``b_U`` lose their mean over the vocabulary: component c's logit for
  every token drops by ``x_c · mean_v(W_U)`` (``bias`` also by ``mean_v(b_U)``); logit *differences*
  are unchanged.

A TransformerBridge (TL 4) has no single flags, only all four at once (``enable_compatibility_mode``):
the tests at the end check that combination over every family and rule, on either TL (on TL 3 as
HookedTransformer's from_pretrained defaults); the single-flag tests need HookedTransformer.

TL 3.9 processes float64 weights in float32 (tests/test_families.py), so processed and unprocessed
models agree to float32 rounding only: bound ``1e-5`` relative to the largest attribution (seen:
<= 2e-6). Everything is float64 otherwise.
"""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl.replay.rules import rule_names
from tests.families import FAMILIES, build_family, family_tokens, from_pretrained_flags
from tests.tl_cases import cases_unless_bridge, NEEDS_PROCESSING_FLAGS

TOL = 1e-5
RULES = rule_names()  # every registered rule
A, B = 5, 17  # answer and wrong token ids


def _replay(family: str, rule: str, **flags: bool):
    model, _ = build_family(family, dtype=torch.float64, **flags)
    return model, depass_tl.run_with_depass(model, family_tokens(), mlp_rule=rule)[1]


def _close(x: torch.Tensor, y: torch.Tensor) -> float:
    gap = float((x - y).abs().max() / y.abs().max())
    assert gap <= TOL, gap
    return gap


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("family", FAMILIES)
def test_logit_difference_attributions_are_invariant(family: str, rule: str) -> None:
    """All of from_pretrained's processing at once: per-component logit differences agree."""
    _, raw = _replay(family, rule)
    _, processed = _replay(family, rule, **from_pretrained_flags(family))
    for pos in (-1, 2):
        _close(processed.logit_diff_attrs(A, B, pos=pos), raw.logit_diff_attrs(A, B, pos=pos))


@NEEDS_PROCESSING_FLAGS
@cases_unless_bridge("rule", RULES)
@cases_unless_bridge("flag", ["fold_ln", "fold_value_biases"])
@cases_unless_bridge("family", ["gpt2", "llama"])
def test_folding_changes_no_component(family: str, flag: str, rule: str) -> None:
    _, raw = _replay(family, rule)
    _, folded = _replay(family, rule, **{flag: True})
    for name in raw:
        if name != "unembed.hook_in" or flag != "fold_ln":
            _close(folded[name], raw[name])
    _close(folded.logit_attrs(A), raw.logit_attrs(A))


@NEEDS_PROCESSING_FLAGS
@cases_unless_bridge("rule", RULES)
def test_center_writing_weights_centres_residual_components(rule: str) -> None:
    _, raw = _replay("gpt2", rule)
    _, centred = _replay("gpt2", rule, center_writing_weights=True)
    for name in ("blocks.0.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"):
        expected = raw[name] - raw[name].mean(-1, keepdim=True)
        _close(centred[name], expected)
        assert float((raw[name] - expected).abs().max()) > 100 * TOL * float(expected.abs().max())  # it moved
    _close(centred["unembed.hook_in"], raw["unembed.hook_in"])


@NEEDS_PROCESSING_FLAGS
@cases_unless_bridge("rule", RULES)
def test_center_unembed_shifts_single_logits_by_the_mean_unembedding(rule: str) -> None:
    model, raw = _replay("gpt2", rule)
    _, centred = _replay("gpt2", rule, center_unembed=True)
    x = raw["unembed.hook_in"][:, :, -1]  # [component, batch, d_model]
    shift = x @ model.W_U.mean(-1)  # [component, batch]
    shift[-1] += model.b_U.mean()
    expected = raw.logit_attrs(A) - shift
    _close(centred.logit_attrs(A), expected)
    assert float(shift.abs().max()) > 100 * TOL * float(expected.abs().max())  # single logits did move
    _close(centred.logit_diff_attrs(A, B), raw.logit_diff_attrs(A, B))


# ------------------------------------------------------------------ all of from_pretrained's flags at once
#: Families whose norms are LayerNorms: ``center_writing_weights`` centres their residual writes (TL skips it
#: under RMSNorm, which does not subtract the mean). From the HF architectures, not from the TL config.
LAYERNORM_FAMILIES = {"gpt2", "neox", "opt", "bloom", "gptj", "falcon"}
POST_EMBEDDING_LN_FAMILIES = {"bloom"}
RESIDUAL_HOOK = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("family", FAMILIES)
def test_processing_centres_residual_components_and_nothing_else(family: str, rule: str) -> None:
    """The only processing a Bridge has (``enable_compatibility_mode``: fold_ln, center_writing_weights,
    center_unembed, fold_value_biases together; HookedTransformer's from_pretrained defaults on TL 3):
    every component at every residual-stream hook is the raw one, centred over ``d_model`` for LayerNorm
    families and untouched for RMSNorm families (folding moves nothing, see the module docstring)."""
    _, raw = _replay(family, rule)
    _, processed = _replay(family, rule, **from_pretrained_flags(family))
    centred = family in LAYERNORM_FAMILIES
    # BLOOM's residual stream starts at its post-embedding LayerNorm, whose weight and bias write it but are
    # not writing weights TL centres: that start stays, every write after it is centred.
    start = raw["blocks.0.hook_resid_pre"] if family in POST_EMBEDDING_LN_FAMILIES else 0
    checked = 0
    for name in raw:
        if not name.endswith(RESIDUAL_HOOK):
            continue
        written = raw[name] - (start if "resid" in name else 0)
        expected = raw[name] - written.mean(-1, keepdim=True) if centred else raw[name]
        _close(processed[name], expected)
        checked += 1
    assert checked == (8 if family in ("neox", "gptj", "falcon") else 10)  # 2 layers; parallel blocks: no resid_mid
    if centred:  # the raw components were not centred already, so centring is really tested
        last = raw["blocks.1.hook_resid_post"]
        assert float(last.mean(-1).abs().max()) > 100 * TOL * float(last.abs().max())


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("family", FAMILIES)
def test_processing_shifts_single_logits_by_the_mean_unembedding(family: str, rule: str) -> None:
    """fold_ln moves the final norm's weight into ``W_U`` (its bias into ``b_U``), then center_unembed takes
    the mean over the vocabulary away: component c's logit for every token drops by ``x_c · mean_v(W_U)``
    with ``x_c`` its raw ``unembed.hook_in`` (``bias`` also by ``mean_v(b_U)``); no shift without
    center_unembed (Gemma-2's capped logits)."""
    model, raw = _replay(family, rule)
    _, processed = _replay(family, rule, **from_pretrained_flags(family))
    x = raw["unembed.hook_in"][:, :, -1]  # [component, batch, d_model]
    shift = torch.zeros(x.shape[:2], dtype=x.dtype)
    if from_pretrained_flags(family)["center_unembed"]:
        shift = x @ model.W_U.mean(-1).to(x.dtype)
        if getattr(model, "b_U", None) is not None:
            shift[-1] += model.b_U.mean().to(x.dtype)
        assert float(shift.abs().max()) > 100 * TOL * float(raw.logit_attrs(A).abs().max())  # single logits move
    for token in (A, B, 0):
        _close(processed.logit_attrs(token), raw.logit_attrs(token) - shift)
