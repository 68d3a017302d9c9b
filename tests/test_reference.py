"""The replay engine against the slow loop reference (tests/reference.py), and the reference itself.

Tiny float64 HookedTransformers (2 layers, d_model 16, 5 positions, batch 2) with randomised norm
weights and biases, one per architecture family. The reference is checked three ways:
completeness against the clean ``run_with_cache``, causality, and (``ratio`` rule) against a second
reference that runs TL's own forward per component with frozen hooks. Then the engine
(``depass_tl.run_with_depass``) must equal the reference at every hook and at the logits.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest
import torch

from tests.models import config_model

from tests.tl_cases import norm_tol
from tests.reference import (
    MLP_RULES,
    hooked_ratio_reference,
    randomise_norms_and_biases,
    reference_depass,
)

warnings.filterwarnings("ignore", category=DeprecationWarning)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
torch.set_num_threads(1)

ATOL = 1e-10
N_POS = 5
N_BATCH = 2
D_VOCAB = 20

BASE = dict(
    n_layers=2,
    d_model=16,
    n_heads=4,
    d_head=4,
    d_mlp=32,
    d_vocab=D_VOCAB,
    n_ctx=8,
    dtype=torch.float64,
)

CONFIGS: dict[str, dict] = {
    "gpt2_like": dict(act_fn="gelu_new", normalization_type="LN"),
    "llama_like": dict(
        act_fn="silu",
        normalization_type="RMS",
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=4,
        n_key_value_heads=2,
    ),
    "attn_only": dict(act_fn="gelu", normalization_type="LN", attn_only=True),
    "ln_pre": dict(act_fn="gelu", normalization_type="LNPre"),
    "rms_pre": dict(act_fn="silu", normalization_type="RMSPre"),
    "relu": dict(act_fn="relu", normalization_type="LN"),
    "no_norm": dict(act_fn="relu", normalization_type=None),
    "gated_ln_gelu": dict(act_fn="gelu", normalization_type="LN", gated_mlp=True),
    "gated_relu_no_norm": dict(act_fn="relu", normalization_type=None, gated_mlp=True),
    "final_rms": dict(act_fn="gelu_new", normalization_type="LN", final_rms=True),
}


@functools.lru_cache(maxsize=None)
def model_and_tokens(name: str) -> tuple[Any, torch.Tensor]:
    seed = sorted(CONFIGS).index(name) + 10
    model = config_model(**BASE, **CONFIGS[name], seed=seed)
    randomise_norms_and_biases(model, seed=seed + 1000)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, D_VOCAB, (N_BATCH, N_POS), generator=gen)
    return model, tokens


@functools.lru_cache(maxsize=None)
def reference(name: str, rule: str, temperature: float = 0.1):
    model, tokens = model_and_tokens(name)
    return reference_depass(model, tokens, mlp_rule=rule, temperature=temperature)


CASES = [(name, rule) for name in CONFIGS for rule in MLP_RULES]
IDS = [f"{name}-{rule}" for name, rule in CASES]


# --------------------------------------------------------------------------- the reference


@pytest.mark.parametrize(("name", "rule"), CASES, ids=IDS)
def test_reference_complete(name: str, rule: str) -> None:
    """Sum over components equals the clean activation at every hook and at the logits."""
    model, tokens = model_and_tokens(name)
    logits, cache = model.run_with_cache(tokens)
    result, labels = reference(name, rule)
    assert labels == [f"tok{p}" for p in range(N_POS)] + ["bias"]
    n_expected = model.cfg.n_layers * (4 if model.cfg.attn_only else 7) + 2
    assert len(result) == n_expected
    for hook, comps in result.items():
        clean = logits if hook == "logits" else cache[hook]
        assert comps.shape == (N_POS + 1, *clean.shape), hook
        atol = norm_tol(model, 1e-12 / float(clean.abs().max())) * float(clean.abs().max())  # float32 RMS: relative
        torch.testing.assert_close(comps.sum(0), clean, atol=atol, rtol=0, msg=hook)


@pytest.mark.parametrize(("name", "rule"), CASES, ids=IDS)
def test_reference_causal(name: str, rule: str) -> None:
    """A token's component is exactly 0 at every earlier position, at every hook."""
    result, _ = reference(name, rule)
    for hook, comps in result.items():
        for p in range(1, N_POS):
            assert torch.all(comps[p, :, :p] == 0), (hook, p)
        # and it is not trivially zero where it is allowed to be non-zero
        assert comps[:N_POS].abs().max() > 1e-3, hook


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_ratio_matches_hooked_tl_forward(name: str) -> None:
    """Loop reference (ratio) == TL's own forward per component with frozen hooks."""
    model, tokens = model_and_tokens(name)
    loops, _ = reference(name, "ratio")
    hooked, _ = hooked_ratio_reference(model, tokens)
    for hook, comps in hooked.items():
        torch.testing.assert_close(loops[hook], comps, atol=1e-12, rtol=0, msg=hook)


def test_reference_rules_differ_and_bias_is_used() -> None:
    """Guard against a degenerate reference: the rules give different splits, bias is non-zero."""
    for name in ("gpt2_like", "llama_like"):
        soft = reference(name, "softmax")[0]["logits"]
        ratio = reference(name, "ratio")[0]["logits"]
        top = reference(name, "max")[0]["logits"]
        assert (soft - ratio).abs().max() > 1e-3
        assert (soft - top).abs().max() > 1e-3
        assert soft[-1].abs().max() > 1e-3


def test_reference_covers_every_registered_rule() -> None:
    from depass_tl.replay.rules import rule_names

    assert set(MLP_RULES) == set(rule_names())


def test_reference_taylor_is_ratio_on_standard_mlps_only() -> None:
    """taylor splits a gated MLP along the gate (ratio along the linear path); a plain MLP alike."""
    torch.testing.assert_close(reference("gpt2_like", "taylor")[0]["logits"], reference("gpt2_like", "ratio")[0]["logits"],
                               rtol=0, atol=1e-12)
    gated_t, gated_r = reference("llama_like", "taylor")[0]["logits"], reference("llama_like", "ratio")[0]["logits"]
    assert (gated_t - gated_r).abs().max() > 1e-2


def test_reference_temperature_matters_and_max_is_the_cold_limit() -> None:
    """softmax with a tiny temperature tends to max; a warm one differs from the default."""
    name = "gpt2_like"
    default = reference(name, "softmax", 0.1)[0]["logits"]
    warm = reference(name, "softmax", 2.0)[0]["logits"]
    cold = reference(name, "softmax", 1e-6)[0]["logits"]
    top = reference(name, "max")[0]["logits"]
    assert (default - warm).abs().max() > 1e-3
    torch.testing.assert_close(cold, top, atol=1e-8, rtol=0)


# --------------------------------------------------------------------------- the engine

ENGINE_HOOKS = (
    "hook_resid_pre",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_resid_mid",
    "hook_resid_post",
)


def _engine(name: str, rule: str, temperature: float = 0.1):
    import depass_tl

    model, tokens = model_and_tokens(name)
    return depass_tl.run_with_depass(model, tokens, mlp_rule=rule, temperature=temperature)


def _compare_engine(name: str, rule: str, temperature: float) -> None:
    model, tokens = model_and_tokens(name)
    ref, labels = reference(name, rule, temperature)
    logits, dc = _engine(name, rule, temperature)
    assert list(dc.labels) == labels
    torch.testing.assert_close(logits, model(tokens), atol=1e-12, rtol=0)

    checked = []
    for layer in range(model.cfg.n_layers):
        for suffix in ENGINE_HOOKS:
            hook = f"blocks.{layer}.{suffix}"
            if hook not in ref:  # attn-only: no resid_mid / mlp_out
                continue
            assert hook in dc, f"engine has no {hook}"
            torch.testing.assert_close(dc[hook], ref[hook], atol=ATOL, rtol=0, msg=hook)
            checked.append(hook)
    torch.testing.assert_close(dc["unembed.hook_in"], ref["unembed.hook_in"], atol=ATOL, rtol=0)
    # any further hook the engine exposes with the reference's shape must agree too
    for hook in ref:
        if hook in checked or hook == "logits" or hook not in dc:
            continue
        torch.testing.assert_close(dc[hook], ref[hook], atol=ATOL, rtol=0, msg=hook)

    # logit attribution at every position: one target token per batch entry, a fixed token id,
    # and a logit difference
    ref_logits = ref["logits"]  # [component, batch, pos, d_vocab]
    for pos in range(N_POS):
        targets = tokens[:, pos]
        expected = torch.stack(
            [ref_logits[:, b, pos, int(targets[b])] for b in range(N_BATCH)], dim=1
        )  # [component, batch]
        torch.testing.assert_close(dc.logit_attrs(targets, pos=pos), expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            dc.logit_attrs(3, pos=pos), ref_logits[:, :, pos, 3], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            dc.logit_attrs(3, incorrect_tokens=7, pos=pos),
            ref_logits[:, :, pos, 3] - ref_logits[:, :, pos, 7],
            atol=ATOL,
            rtol=0,
        )


@pytest.mark.parametrize(("name", "rule"), CASES, ids=IDS)
def test_engine_matches_reference(name: str, rule: str) -> None:
    _compare_engine(name, rule, 0.1)


@pytest.mark.parametrize("temperature", [0.02, 1.0])
def test_engine_matches_reference_other_temperatures(temperature: float) -> None:
    _compare_engine("gpt2_like", "softmax", temperature)
    _compare_engine("llama_like", "softmax", temperature)
