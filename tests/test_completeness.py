"""Completeness: Σ over components equals the clean activation at every stored hook and at the logits.

Property-based over small random configs of every supported architecture family and every MLP rule.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import depass_tl
from depass_tl.replay.rules import get_rule, rule_names
from tests.models import ARCHS, make_model, random_tokens
from tests.tl_cases import norm_atol, norm_tol

RULES = rule_names()  # every registered rule
LINEAR_RULES = [r for r in RULES if get_rule(r).linear]


@st.composite
def configs(draw: st.DrawFn) -> dict:
    n_heads = draw(st.sampled_from([1, 2, 4]))
    return dict(
        arch=draw(st.sampled_from(sorted(ARCHS))),
        n_layers=draw(st.integers(1, 3)),
        d_model=n_heads * draw(st.sampled_from([2, 4, 8])),
        n_heads=n_heads,
        d_mlp=draw(st.sampled_from([8, 24])),
        seed=draw(st.integers(0, 2**16)),
        batch=draw(st.integers(1, 2)),
        pos=draw(st.integers(1, 6)),
        rule=draw(st.sampled_from(RULES)),
        temperature=draw(st.sampled_from([0.01, 0.1, 1.0])),
    )


def _run(c: dict, dtype: torch.dtype):
    model = make_model(
        c["arch"], n_layers=c["n_layers"], d_model=c["d_model"], n_heads=c["n_heads"], d_mlp=c["d_mlp"],
        seed=c["seed"], dtype=dtype,
    )
    toks = random_tokens(model, batch=c["batch"], pos=c["pos"], seed=c["seed"])
    return model, *depass_tl.run_with_depass(model, toks, mlp_rule=c["rule"], temperature=c["temperature"])


@given(configs())
def test_completeness_float64(c: dict) -> None:
    model, _, dc = _run(c, torch.float64)
    errors = dc.completeness_error(relative=True)
    assert set(errors) >= {"logits", "unembed.hook_in", "blocks.0.hook_attn_out"}
    assert max(errors.values()) < norm_tol(model, 1e-10), errors


@given(configs().filter(lambda c: c["d_model"] >= 8))
def test_completeness_float32(c: dict) -> None:
    # d_model >= 8: a LayerNorm over 2 or 4 dims whose inputs are nearly equal has a scale near
    # sqrt(eps) and amplifies float32 rounding by ~1/scale (seen: 1.7e-5 relative at d_model 2, the
    # same before and after every engine change); float64 covers the tiny widths above.
    _, _, dc = _run(c, torch.float32)
    errors = dc.completeness_error(relative=True)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("rule", RULES)
def test_every_hook_is_stored_and_complete(arch: str, rule: str) -> None:
    model = make_model(arch)
    toks = random_tokens(model)
    logits, dc = depass_tl.run_with_depass(model, toks, mlp_rule=rule)
    expected = {"unembed.hook_in"}
    for l in range(model.cfg.n_layers):
        expected |= {f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_resid_post"}
        if not model.cfg.attn_only:
            expected |= {f"blocks.{l}.hook_resid_mid", f"blocks.{l}.hook_mlp_out"}
    assert set(dc) == expected
    _, cache = model.run_with_cache(toks)
    for name in expected - {"unembed.hook_in"}:  # against TL's own cache, not ours
        torch.testing.assert_close(dc[name].sum(0), cache[name], rtol=0, atol=norm_atol(model, 1e-10, cache[name]))
    # logits of a few tokens at every position
    for tok in (0, 5, model.cfg.d_vocab - 1):
        for pos in (0, -1):
            torch.testing.assert_close(dc.logit_attrs(tok, pos=pos).sum(0), logits[:, pos, tok], rtol=0,
                                       atol=norm_atol(model, 1e-10, logits))


def test_identity_single_component_reproduces_clean_forward() -> None:
    """One component holding the whole residual reproduces the clean run (SAELens's 'no SAE ⇒ same logits')."""
    model = make_model("gpt2", n_layers=3)
    toks = random_tokens(model)
    logits, cache = model.run_with_cache(toks)
    whole = cache["blocks.0.hook_resid_pre"][None]
    for rule in RULES:
        _, dc = depass_tl.run_with_depass(
            model, toks, mlp_rule=rule, components=depass_tl.custom("blocks.0.hook_resid_pre", whole, ["all"])
        )
        # every MLP rule gives a single non-bias component all of it except the constants
        total = dc.logit_attrs(3).sum(0)
        torch.testing.assert_close(total, logits[:, -1, 3], rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("rule", LINEAR_RULES)
def test_linear_rules_are_linear(rule: str, arch: str) -> None:
    """Under a linear rule (ratio, taylor) the replay is linear: splitting a component splits its output."""
    model = make_model(arch)
    toks = random_tokens(model)
    _, dc = depass_tl.run_with_depass(model, toks, mlp_rule=rule)
    x0 = dc["blocks.0.hook_resid_pre"][:-1]  # token components (bias starts at zero)
    gen = torch.Generator().manual_seed(0)
    frac = torch.rand(x0.shape[:3] + (1,), generator=gen, dtype=x0.dtype)
    split = torch.cat([x0 * frac, x0 * (1 - frac)])
    labels = [f"a{i}" for i in range(len(x0))] + [f"b{i}" for i in range(len(x0))]
    _, dc2 = depass_tl.run_with_depass(
        model, toks, mlp_rule=rule, components=depass_tl.custom("blocks.0.hook_resid_pre", split, labels)
    )
    n = len(x0)
    for name in ("blocks.1.hook_resid_post", "unembed.hook_in"):
        torch.testing.assert_close(dc2[name][:n] + dc2[name][n : 2 * n], dc[name][:-1], rtol=0, atol=1e-10)
        torch.testing.assert_close(dc2[name][-1], dc[name][-1], rtol=0, atol=1e-10)


def test_reordering_components_permutes_output() -> None:
    model = make_model("llama")
    toks = random_tokens(model)
    for rule in RULES:
        _, dc = depass_tl.run_with_depass(model, toks, mlp_rule=rule)
        x0 = dc["blocks.0.hook_resid_pre"][:-1]
        perm = torch.randperm(len(x0), generator=torch.Generator().manual_seed(1))
        labels = [dc.labels[i] for i in perm.tolist()]
        _, dc2 = depass_tl.run_with_depass(
            model, toks, mlp_rule=rule, components=depass_tl.custom("blocks.0.hook_resid_pre", x0[perm], labels)
        )
        torch.testing.assert_close(dc2["unembed.hook_in"][:-1], dc["unembed.hook_in"][:-1][perm], rtol=0, atol=1e-10)


def test_completeness_error_of_one_hook_is_that_hooks_entry() -> None:
    """``completeness_error(hook)`` equals the hook's entry of ``completeness_error()`` (it used to fail)."""
    model = make_model("llama")
    _, dc = depass_tl.run_with_depass(model, random_tokens(model), components=depass_tl.heads(layer=[0, 1]))
    every = dc.completeness_error(relative=True)
    for hook in ("unembed.hook_in", "blocks.1.hook_resid_post"):
        assert dc.completeness_error(hook, relative=True) == every[hook]
        assert dc.completeness_error(hook, relative=True) <= norm_tol(model, 1e-12)
