"""``ignore_special_token=`` and ``official_position0=``: the official DePass code's key edits.

Known answers on the hand-set one-layer models of tests/test_known_answer.py (derived below from
the weights), then exactness, chunking and the refusals. The comparison with an independent
re-implementation of the official code is in tests/test_official.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import depass_tl
from depass_tl import DePassError
from depass_tl.api import replay
from depass_tl.capture import capture
from tests._tl_version import TL_VERSION
from tests.models import make_model, random_tokens
from tests.tl_cases import bridge_refusal, norm_tol
from tests.test_known_answer import TOKENS, _model_g, _model_k

torch.set_num_threads(1)
ATOL = 1e-12


def _softmax(values: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in values]
    return [x / sum(e) for x in e]


def _attrs(model, token: int, pos: int, **kwargs) -> list[float]:
    _, dc = depass_tl.run_with_depass(model, TOKENS, **kwargs)
    assert dc.labels == ("tok0", "tok1", "bias")
    assert max(dc.completeness_error().values()) < norm_tol(model, 1e-12)
    return dc.logit_attrs(token, pos=pos)[:, 0].tolist()


# Model K (tests/test_known_answer.py): neuron n0 (ReLU, W_out row [0, 1]) is the only one writing.
#   pos1: keys tok0 0.25, tok1 0.35, bias 0.1; post 0.7. ignore_special_token: tok0 is inactive, so
#     softmax over (tok1 0.35, bias 0.1); max: tok1. Logit 1 at pos1 (clean 5.075):
#     [0, 3.5 + a * 0.7, 0.875 + b * 0.7].
#   pos0: keys tok0 2 -> 1 (the official position-0 gate), bias 0.1; post 2.1. Logit 1 at pos0 (2.975):
#     [a' * 2.1, 0, 0.875 + b' * 2.1] with (a', b') = softmax((1, 0.1) / T); max: tok0.
#   Logit 0 (the MLP writes nothing to dim 0) is unchanged: pos1 [0.25, 0, 0.2], pos0 [2, 0, 0.2].
@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_ignore_special_token_model_k_softmax(temperature: float) -> None:
    model = _model_k()
    a, b = _softmax([0.35, 0.1], temperature)
    a0, b0 = _softmax([1.0, 0.1], temperature)
    kw = dict(mlp_rule="softmax", temperature=temperature, ignore_special_token=True)
    assert _attrs(model, 1, 1, **kw) == pytest.approx([0.0, 3.5 + a * 0.7, 0.875 + b * 0.7], abs=ATOL)
    assert _attrs(model, 1, 0, **kw) == pytest.approx([a0 * 2.1, 0.0, 0.875 + b0 * 2.1], abs=ATOL)
    assert _attrs(model, 0, 1, **kw) == pytest.approx([0.25, 0.0, 0.2], abs=ATOL)
    assert _attrs(model, 0, 0, **kw) == pytest.approx([2.0, 0.0, 0.2], abs=ATOL)


def test_ignore_special_token_model_k_max() -> None:
    model = _model_k()
    assert _attrs(model, 1, 1, mlp_rule="max", ignore_special_token=True) == pytest.approx([0.0, 4.2, 0.875], abs=ATOL)
    assert _attrs(model, 1, 0, mlp_rule="max", ignore_special_token=True) == pytest.approx([2.1, 0.0, 0.875], abs=ATOL)


# official_position0 alone: pos0 as above (key 1 instead of 2), pos1 as without any edit (tok0 keeps
#   its own key 0.25): softmax over (0.25, 0.35, 0.1).
def test_official_position0_alone_model_k() -> None:
    model = _model_k()
    a, b, c = _softmax([0.25, 0.35, 0.1], 0.1)
    a0, b0 = _softmax([1.0, 0.1], 0.1)
    assert _attrs(model, 1, 1, official_position0=True) == pytest.approx([a * 0.7, 3.5 + b * 0.7, 0.875 + c * 0.7],
                                                                         abs=ATOL)
    assert _attrs(model, 1, 0, official_position0=True) == pytest.approx([a0 * 2.1, 0.0, 0.875 + b0 * 2.1], abs=ATOL)


# Model G (gated, ReLU gate): pos1 gate keys tok0 1.0, tok1 0 (exactly: inactive), bias 0.8; the
#   split quantity post - b_in = 14.4 (b_in = 0.3; 0 on TL 4, whose native gated MLP has no biases).
#   ignore_special_token: tok0 inactive too, so the bias component is the only active one and takes 14.4:
#   logit 1 at pos1 = [0, 3.5, 0.5 + b_in + 14.4], under softmax and max alike.
#   pos0: keys tok0 8 -> 1, bias 0.8; post - b_in = 8.8: [a * 8.8, 0, 0.5 + b_in + b * 8.8], (a, b) =
#   softmax((1, 0.8) / T); max: [8.8, 0, 0.5 + b_in].
@pytest.mark.parametrize("rule", ["softmax", "max"])
def test_ignore_special_token_model_g(rule: str) -> None:
    model = _model_g(need_b_in=False)
    b_in = 0.0 if model.blocks[0].mlp.b_in is None else 0.3
    want1 = [0.0, 3.5, 0.5 + b_in + 14.4]
    assert _attrs(model, 1, 1, mlp_rule=rule, ignore_special_token=True) == pytest.approx(want1, abs=ATOL)
    a, b = _softmax([1.0, 0.8], 0.1) if rule == "softmax" else (1.0, 0.0)
    want0 = [a * 8.8, 0.0, 0.5 + b_in + b * 8.8]
    assert _attrs(model, 1, 0, mlp_rule=rule, ignore_special_token=True) == pytest.approx(want0, abs=ATOL)


# ------------------------------------------------------------------------------ exact, chunked
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("rule", ["softmax", "max"])
@pytest.mark.parametrize("option", ["ignore_special_token", "official_position0"])
def test_edits_are_exact_and_chunking_changes_nothing(arch: str, rule: str, option: str) -> None:
    model = make_model(arch, n_layers=2, dtype=torch.float64)
    toks = random_tokens(model, batch=2, pos=6)
    run = capture(model, toks)
    ref = replay(run, mlp_rule=rule, **{option: True})
    assert max(ref.completeness_error(relative=True).values()) < norm_tol(model, 1e-12)  # TL 4: float32 norms
    plain = replay(run, mlp_rule=rule)
    assert (ref.logit_attrs(3) - plain.logit_attrs(3)).abs().max() > 1e-6  # the option does something
    for chunk_size in (1, 2):
        got = replay(run, mlp_rule=rule, chunk_size=chunk_size, **{option: True})
        for hook in ref.keys():
            torch.testing.assert_close(got[hook], ref[hook], rtol=0, atol=1e-12, msg=hook)


def test_official_position0_on_heads_edits_the_rest_component_only_at_position_0() -> None:
    """heads(): the edited component is each group's rest; the edit moves credit at position 0 only."""
    model = make_model("llama", n_layers=2, dtype=torch.float64)
    toks = random_tokens(model, batch=1, pos=5)
    spec = depass_tl.heads(layer=[0, 1])
    run = capture(model, toks, extra_hooks=spec.required_hooks(2))
    dc = replay(run, spec, official_position0=True)
    assert max(dc.completeness_error(relative=True).values()) < norm_tol(model, 1e-12)
    plain = replay(run, spec)
    assert dc.labels[4] == "L0.rest" and dc.labels[10] == "L1.rest"
    # only what passes through position 0 of an MLP changes: at position 0 itself the rest gains
    moved = (dc["unembed.hook_in"] - plain["unembed.hook_in"])[:, 0, 0]
    assert moved.abs().max() > 1e-6
    torch.testing.assert_close(moved.sum(0), torch.zeros_like(moved[0]), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------ refusals
def test_refusals() -> None:
    model = make_model("gpt2", n_layers=1)
    toks = random_tokens(model)
    for rule in ("ratio", "taylor"):
        with pytest.raises(DePassError, match="linear"):
            depass_tl.run_with_depass(model, toks, mlp_rule=rule, ignore_special_token=True)
    with pytest.raises(DePassError, match="applies to token components"):
        depass_tl.run_with_depass(model, toks, components=depass_tl.heads(layer=0), ignore_special_token=True)
    mask = torch.ones_like(toks)
    mask[0, :2] = 0  # left padding
    with pytest.raises(DePassError, match="left-padded"):
        depass_tl.run_with_depass(model, toks, attention_mask=mask, ignore_special_token=True)
    mask = torch.ones_like(toks)
    mask[0, -2:] = 0  # right padding is fine
    _, dc = depass_tl.run_with_depass(model, toks, attention_mask=mask, ignore_special_token=True)
    assert max(dc.completeness_error(relative=True).values()) < 1e-5


def test_mixture_of_experts_is_refused() -> None:
    model = make_model("llama", num_experts=4, experts_per_token=2, dtype=torch.float32)  # TL 3.9's MoE is float32
    if bridge_refusal(model):  # TL 4: the Bridge refuses MoE before any option is read
        pytest.skip(f"impossible on TransformerLens {TL_VERSION}: depass_tl refuses MoE on the Bridge")
    toks = random_tokens(model, pos=4)
    with pytest.raises(DePassError, match="mixture-of-experts"):
        depass_tl.run_with_depass(model, toks, ignore_special_token=True)
