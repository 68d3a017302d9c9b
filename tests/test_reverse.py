"""Reverse mode (one backward pass through the frozen-linearised model) equals the forward replay.

Every architecture the engine supports, float64, to 1e-10: logits, logit differences, directions at
intermediate hooks, padded batches, several groups, every component spec that is linear.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import depass_tl
from depass_tl import DePassError, UnsupportedModelError
from depass_tl.capture import capture
from depass_tl.replay.rules import get_rule, rule_names
from depass_tl.reverse import ScalarAttribution, attribute, attribute_run, direction_target, logit_target
from tests.families import FAMILIES, HT_CONFIG_FEATURES, HT_FEATURE_TWINS, build_family, build_ht, family_tokens
from tests.models import ARCHS, make_model, random_tokens
from tests.tl_cases import bridge_refusal, buildable_cases, norm_tol

ATOL = 1e-10
LINEAR_RULES = [r for r in rule_names() if get_rule(r).linear]  # ratio, taylor


def _both(run, target, spec=None, rule: str = "ratio") -> tuple[ScalarAttribution, ScalarAttribution]:
    rev = attribute_run(run, target, spec, mode="reverse", mlp_rule=rule)
    fwd = attribute_run(run, target, spec, mode="forward", mlp_rule=rule)
    assert (rev.mode, fwd.mode) == ("reverse", "forward")
    assert rev.labels == fwd.labels
    return rev, fwd


def _check(rev: ScalarAttribution, fwd: ScalarAttribution, model: Any) -> None:
    scale = max(1.0, float(fwd.values.abs().max()))
    torch.testing.assert_close(rev.values, fwd.values, rtol=0, atol=ATOL * scale)  # same frozen run: strict
    complete = norm_tol(model, ATOL) * scale  # against the clean run: float32 norms on some Bridges
    assert rev.completeness_error() < complete
    assert fwd.completeness_error() < complete
    torch.testing.assert_close(rev.target, fwd.target, rtol=0, atol=0)


@pytest.mark.parametrize("rule", LINEAR_RULES)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_reverse_equals_forward_and_cache(arch: str, rule: str) -> None:
    model = make_model(arch, n_layers=3)
    toks = random_tokens(model, pos=7)
    run = capture(model, toks)
    rev, fwd = _both(run, 5, rule=rule)
    _check(rev, fwd, model)
    logits, dc = depass_tl.run_with_depass(model, toks, mlp_rule=rule)  # the public forward path too
    torch.testing.assert_close(rev.values, dc.logit_attrs(5), rtol=0, atol=ATOL)
    torch.testing.assert_close(rev.target, logits[:, -1, 5], rtol=0, atol=ATOL)


@pytest.mark.parametrize("rule", LINEAR_RULES)
@pytest.mark.parametrize("family", FAMILIES)
def test_reverse_families(family: str, rule: str) -> None:
    model, _ = build_family(family, dtype=torch.float64)
    run = capture(model, family_tokens())
    _check(*_both(run, logit_target(3, incorrect_tokens=[7, 9]), rule=rule), model)


@pytest.mark.parametrize("name, rule", buildable_cases(dict(sorted(HT_CONFIG_FEATURES.items())), LINEAR_RULES,
                                                       twins=HT_FEATURE_TWINS))
def test_reverse_config_features(name: str, rule: str) -> None:
    model = build_ht(name)
    if bridge_refusal(model):  # TL 4: what depass_tl refuses on the Bridge (MoE, SoLU) must be refused
        with pytest.raises(UnsupportedModelError, match=bridge_refusal(model)):
            capture(model, random_tokens(model, pos=6))
        return
    run = capture(model, random_tokens(model, pos=6))
    _check(*_both(run, logit_target(2), rule=rule), model)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reverse_direction_targets(arch: str) -> None:
    model = make_model(arch, n_layers=3)
    run = capture(model, random_tokens(model))
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(model.cfg.d_model, generator=gen, dtype=torch.float64)
    per_prompt = torch.randn(2, model.cfg.d_model, generator=gen, dtype=torch.float64)
    for hook in ("blocks.0.hook_attn_out", "blocks.1.hook_resid_mid", "blocks.2.hook_mlp_out", "blocks.2.hook_resid_post"):
        for direction, pos in ((d, -1), (per_prompt, 2)):
            rev, fwd = _both(run, direction_target(hook, direction, pos=pos))
            _check(rev, fwd, model)
            clean = run.get(hook)[:, pos] if pos != -1 else run.get(hook)[:, -1]
            torch.testing.assert_close(rev.target, (clean * direction).sum(-1), rtol=0, atol=ATOL)


def test_reverse_padded_batch() -> None:
    model = make_model("gpt2", n_layers=2)
    toks = random_tokens(model, batch=3, pos=7)
    mask = torch.ones_like(toks)
    mask[0, :3] = 0
    mask[2, 5:] = 0
    run = capture(model, toks, attention_mask=mask)
    for pos in (-1, 1, 6):  # the last real token, a padded position for prompt 0, one for prompt 2
        _check(*_both(run, logit_target(4, pos=pos)), model)


@pytest.mark.parametrize(
    "spec",
    [depass_tl.heads(layer=[0, 1]), depass_tl.modules(), depass_tl.tokens(separate_pos_embed=True),
     depass_tl.neurons(1, idx=[1, 4])],
    ids=["heads", "modules", "separate_pos", "neurons"],
)
def test_reverse_other_specs(spec) -> None:
    model = make_model("gpt2", n_layers=3)
    run = capture(model, random_tokens(model), extra_hooks=spec.required_hooks(3))
    _check(*_both(run, 6, spec), model)


def test_auto_mode() -> None:
    model = make_model("gpt2", n_layers=2)
    toks = random_tokens(model, pos=12)
    assert attribute(model, toks, target=3).mode == "reverse"  # 13 components, causal: reverse is cheaper
    assert attribute(model, toks, target=3, mlp_rule="softmax").mode == "forward"  # not linear
    assert attribute(model, toks, target=3, components=depass_tl.sources()).mode == "forward"
    assert attribute(model, random_tokens(model, pos=2), target=3).mode == "forward"  # 3 components


def test_softmax_forward_matches_cache() -> None:
    model = make_model("llama")
    toks = random_tokens(model)
    att = attribute(model, toks, target=logit_target(3, incorrect_tokens=4), mlp_rule="softmax")
    _, dc = depass_tl.run_with_depass(model, toks)
    torch.testing.assert_close(att.values, dc.logit_diff_attrs(3, 4), rtol=0, atol=1e-12)
    assert att["bias"].shape == (2,)


def test_reverse_refused_when_not_linear() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model)
    with pytest.raises(DePassError, match="ratio"):
        attribute(model, toks, target=3, mlp_rule="softmax", mode="reverse")
    with pytest.raises(DePassError, match="sources"):
        attribute(model, toks, target=3, components=depass_tl.sources(), mode="reverse")
    with pytest.raises(DePassError, match="mode"):
        attribute(model, toks, target=3, mode="backward")  # type: ignore[arg-type]


def test_bad_targets() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model)
    with pytest.raises(DePassError, match="not produced"):
        attribute(model, toks, target=direction_target("blocks.0.hook_resid_pre", torch.ones(16)),
                  components=depass_tl.modules(1))
    with pytest.raises(DePassError, match="direction has shape"):
        attribute(model, toks, target=direction_target("blocks.1.hook_resid_post", torch.ones(5)))
    with pytest.raises(DePassError, match="token ids"):
        attribute(model, toks, target=10**6)


def test_dataframe() -> None:
    model = make_model("gpt2")
    att = attribute(model, random_tokens(model), target=3)
    df = att.to_dataframe()
    assert len(df) == att.values.numel() and set(df.columns) == {"batch", "component", "label", "attribution"}


@pytest.mark.parametrize("start", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid"])
def test_token_fast_path_equals_generic_reverse(start: str) -> None:
    """tokens() in reverse mode skips the dense start tensor; same numbers as the generic reverse path."""
    from depass_tl.replay.reverse import reverse_values as _reverse
    from depass_tl.reverse import _resolve

    model = make_model("llama", n_layers=2)
    toks = random_tokens(model, batch=3, pos=7)
    mask = torch.ones_like(toks)
    mask[0, :2] = 0
    run = capture(model, toks, attention_mask=mask)
    spec = depass_tl.tokens(start=start)
    fast = attribute_run(run, logit_target(3, incorrect_tokens=1), spec, mode="reverse")
    init = spec.init(run, torch.float64)
    r = _resolve(run, logit_target(3, incorrect_tokens=1), torch.float64, None)
    generic = _reverse(run, init, "unembed.hook_in", r.pos, r.direction, torch.float64)
    if r.offset is not None:  # None when the model has no unembedding bias (the TL-native Bridge)
        generic[-1] += r.offset
    torch.testing.assert_close(fast.values, generic, rtol=0, atol=ATOL)
    assert fast.labels == init.labels
    assert fast.completeness_error() < norm_tol(model, ATOL)
