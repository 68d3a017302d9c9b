"""Chunked replay (``chunk_size=``, ``max_memory=``): same numbers as the unchunked replay, within budget.

The unchunked reference is the engine with one chunk per group and no causal skipping (the
pre-chunking code path); every rule, every architecture family, padding, several groups.
"""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl import DePassError, UnsupportedModelError
from depass_tl.api import replay
from depass_tl.capture import capture
from depass_tl.memory import PeakMemory, format_bytes, parse_memory
from depass_tl.replay.engine import replay_components
from depass_tl.replay.plan import DEFAULT_CHUNK_ROWS, plan_chunks, row_starts
from depass_tl.replay.rules import get_rule, rule_names
from tests.budgets import tightest_budget
from tests.families import FAMILIES, HT_CONFIG_FEATURES, HT_FEATURE_TWINS, build_family, build_ht, family_tokens
from tests.models import ARCHS, make_model, random_tokens
from tests.tl_cases import bridge_refusal, buildable_cases, norm_atol

RULES = rule_names()  # every registered rule


def _reference(run, spec, rule: str, dtype=torch.float64) -> dict[str, torch.Tensor]:
    init = spec.init(run, dtype)
    return replay_components(run, init, mlp_rule=rule, dtype=dtype, chunk_size=10**9, causal_skip=False)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-12) -> None:
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_chunked_equals_unchunked(arch: str, rule: str, chunk_size: int | None) -> None:
    model = make_model(arch, n_layers=3)
    run = capture(model, random_tokens(model, pos=7))
    ref = _reference(run, depass_tl.tokens(), rule)
    init = depass_tl.tokens().init(run, torch.float64)
    got = replay_components(run, init, mlp_rule=rule, dtype=torch.float64, chunk_size=chunk_size)
    _assert_same(got, ref)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rule", RULES)
def test_chunked_families(family: str, rule: str) -> None:
    model, _ = build_family(family, dtype=torch.float64)
    run = capture(model, family_tokens())
    init = depass_tl.tokens().init(run, torch.float64)
    moe = getattr(model.cfg, "num_experts", None)
    if moe and not get_rule(rule).linear:
        with pytest.raises(DePassError, match="mixture-of-experts"):
            replay_components(run, init, mlp_rule=rule, dtype=torch.float64, chunk_size=2)
        return
    got = replay_components(run, init, mlp_rule=rule, dtype=torch.float64, chunk_size=2)
    _assert_same(got, _reference(run, depass_tl.tokens(), rule), atol=1e-10)


@pytest.mark.parametrize("name", buildable_cases(dict(sorted(HT_CONFIG_FEATURES.items())), twins=HT_FEATURE_TWINS))
def test_chunked_config_features(name: str) -> None:
    model = build_ht(name)
    if bridge_refusal(model):  # TL 4: what depass_tl refuses on the Bridge (MoE, SoLU) must be refused
        with pytest.raises(UnsupportedModelError, match=bridge_refusal(model)):
            capture(model, random_tokens(model, pos=6))
        return
    run = capture(model, random_tokens(model, pos=6))
    moe = getattr(model.cfg, "num_experts", None)
    for rule in [r for r in RULES if get_rule(r).linear] if moe else RULES:
        init = depass_tl.tokens().init(run, torch.float64)
        got = replay_components(run, init, mlp_rule=rule, dtype=torch.float64, chunk_size=2)
        _assert_same(got, _reference(run, depass_tl.tokens(), rule), atol=1e-10)


@pytest.mark.parametrize("rule", RULES)
def test_chunked_padded_batch(rule: str) -> None:
    model = make_model("gpt2", n_layers=2)
    toks = random_tokens(model, batch=3, pos=7)
    mask = torch.ones_like(toks)
    mask[0, :3] = 0  # left padding
    mask[2, 5:] = 0  # right padding
    run = capture(model, toks, attention_mask=mask)
    ref = _reference(run, depass_tl.tokens(), rule)
    for chunk_size in (1, 2, None):
        got = replay_components(
            run, depass_tl.tokens().init(run, torch.float64), mlp_rule=rule, dtype=torch.float64, chunk_size=chunk_size
        )
        _assert_same(got, ref)
        assert got["unembed.hook_in"][:-1, 0, :3].abs().max() == 0  # token components are zero at padding


@pytest.mark.parametrize("spec_name", ["heads", "neurons", "modules", "separate_pos"])
@pytest.mark.parametrize("rule", RULES)
def test_chunked_other_specs(spec_name: str, rule: str) -> None:
    model = make_model("gpt2", n_layers=3)
    spec = {
        "heads": depass_tl.heads(layer=[0, 1]),
        "neurons": depass_tl.neurons(1, idx=[0, 3, 5]),
        "modules": depass_tl.modules(),
        "separate_pos": depass_tl.tokens(separate_pos_embed=True),
    }[spec_name]
    run = capture(model, random_tokens(model), extra_hooks=spec.required_hooks(3))
    ref = _reference(run, spec, rule)
    got = replay_components(run, spec.init(run, torch.float64), mlp_rule=rule, dtype=torch.float64, chunk_size=2)
    _assert_same(got, ref)


def test_sources_are_not_chunked() -> None:
    model = make_model("gpt2")
    run = capture(model, random_tokens(model))
    with pytest.raises(DePassError, match="sources"):
        replay(run, depass_tl.sources(), chunk_size=2)
    _, dc = depass_tl.run_with_depass(model, random_tokens(model), components=depass_tl.sources(), max_memory="1GB")
    assert max(dc.completeness_error().values()) < 1e-10  # a budget that fits needs no split


def test_api_keywords_and_completeness() -> None:
    model = make_model("llama", n_layers=2)
    toks = random_tokens(model)
    logits, dc = depass_tl.run_with_depass(model, toks, chunk_size=2, names_filter=["blocks.1.hook_resid_post"])
    _, ref = depass_tl.run_with_depass(model, toks, names_filter=["blocks.1.hook_resid_post"])
    torch.testing.assert_close(dc["blocks.1.hook_resid_post"], ref["blocks.1.hook_resid_post"], rtol=0, atol=1e-12)
    assert max(dc.completeness_error().values()) < norm_atol(model, 1e-10, logits)
    torch.testing.assert_close(dc.logit_attrs(3).sum(0), logits[:, -1, 3], rtol=0, atol=norm_atol(model, 1e-10, logits))


@pytest.mark.parametrize("rule", RULES)
def test_budget_bounds_peak_memory(rule: str) -> None:
    """Tensor memory allocated by the replay (PeakMemory, allocator-independent) stays within the budget."""
    model = make_model("gpt2", n_layers=2, d_model=32, n_heads=4, d_mlp=512, n_ctx=64, dtype=torch.float32)
    run = capture(model, random_tokens(model, batch=1, pos=48))
    with PeakMemory() as unbounded:
        ref = replay(run, mlp_rule=rule, names_filter=[])
    # 0.75: the planner needs the persistent tensors plus one component's working memory (about 71 % of
    # the unbounded peak under ratio here); below that it refuses the budget (test_budget_too_small_...)
    for budget in (int(unbounded.peak * 0.75), int(unbounded.peak * 0.9)):
        with PeakMemory() as mem:
            dc = replay(run, mlp_rule=rule, names_filter=[], max_memory=budget)
        assert mem.peak <= budget, (format_bytes(mem.peak), format_bytes(budget))
        torch.testing.assert_close(dc["unembed.hook_in"], ref["unembed.hook_in"], rtol=0, atol=2e-6)



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_tightest_budget_holds_for_weight_heavy_models(dtype: torch.dtype) -> None:
    """A wide MLP and few tokens, so the block weights dominate: at the smallest budget the planner
    accepts, the call stays under it. (A bfloat16 model's weights are cast to float32 copies per block;
    the previous block's copies were alive while the next block's were made: 2x the planned weights.)"""
    model = make_model("gpt2", n_layers=2, d_model=64, d_mlp=2048, n_ctx=16, dtype=dtype)
    toks = random_tokens(model, batch=1, pos=6)

    def call(budget: int) -> object:
        return depass_tl.run_with_depass(model, toks, names_filter=[], max_memory=budget, dtype=torch.float32)

    budget, peak = tightest_budget(call, 64 << 20)
    assert peak <= budget, (format_bytes(peak), format_bytes(budget))


def test_budget_too_small_says_what_to_drop() -> None:
    model = make_model("gpt2", dtype=torch.float32)
    run = capture(model, random_tokens(model))
    with pytest.raises(DePassError, match="names_filter"):
        replay(run, max_memory=1000)


def test_budget_splits_into_chunks() -> None:
    model = make_model("gpt2", n_layers=2, d_model=64, n_heads=4, d_mlp=256, n_ctx=64, dtype=torch.float32)
    run = capture(model, random_tokens(model, batch=1, pos=48))
    init = depass_tl.tokens().init(run, torch.float32)
    starts = [g.source.starts() for g in init.groups]
    kwargs = dict(batch=1, n_pos=48, itemsize=4, rule="softmax", n_stored=1, chunk_size=None, splittable=True, why_not="")
    big = plan_chunks(run.view, starts, max_memory=10**10, **kwargs)
    small = plan_chunks(run.view, starts, max_memory=3 * 10**6, **kwargs)
    assert len(big.chunks) == 48 // DEFAULT_CHUNK_ROWS["cpu"] + 1  # the causal split, + bias
    assert small.mlp_rows < big.mlp_rows and small.attn_rows < big.attn_rows
    assert small.estimate <= 3 * 10**6
    for plan in (big, small):
        rows = sorted((a, b) for _, a, b, _ in plan.chunks)
        assert rows[0][0] == 0 and all(r[1] == s[0] for r, s in zip(rows, rows[1:])) and rows[-1][1] == 49
        assert all(lo == a for _, a, b, lo in plan.chunks if b < 49)  # token k starts at position k


@pytest.mark.parametrize(
    "text, expected",
    [("4GB", 4 * 10**9), ("512 MiB", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)), (1000, 1000), ("2g", 2 * 2**30)],
)
def test_parse_memory(text, expected) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["four GB", "4 XB", -1, 0, True, [4]])
def test_parse_memory_rejects(bad) -> None:
    with pytest.raises(DePassError, match="max_memory"):
        parse_memory(bad)


def test_bad_chunk_size() -> None:
    model = make_model("gpt2")
    with pytest.raises(DePassError, match="chunk_size"):
        depass_tl.run_with_depass(model, random_tokens(model), chunk_size=0)
