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
