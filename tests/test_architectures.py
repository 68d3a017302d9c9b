"""Exact replay on every TL config feature and every offline model family.

Completeness is checked against TransformerLens's own ``run_with_cache`` (not against what the
capture stored), at every residual-stream hook, ``hook_attn_out`` / ``hook_mlp_out``, the final-norm
output and the logits (pre-soft-cap, i.e. ``unembed.hook_out``), for every MLP rule, in float64,
with weight processing off and on. Bound: relative error <= 1e-9 (seen: <= 1.5e-15), except on a
TransformerBridge whose RMS norms compute in float32 (tests/models.py ``norm_tol``: 1e-6, seen ~1e-7). TL's own
float32 steps (router softmax, float32 weight processing) do not matter here: the replay reproduces
the float64 model TL actually runs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import pytest
import torch

import depass_tl
from depass_tl.replay.rules import get_rule, rule_names
from depass_tl import DePassError, UnsupportedModelError
from depass_tl.backends import read_model_view
from depass_tl.backends.common import check_supported
from tests.families import BRIDGE_REFUSED_FAMILIES, FAMILIES, HT_CONFIG_FEATURES, HT_FEATURE_TWINS, build_family, build_ht, family_tokens, from_pretrained_flags
from tests.models import config_model, processed, randomise
from tests.tl_cases import bridge_refusal, buildable_cases, norm_tol

RULES = rule_names()  # every registered rule
REL_TOL = 1e-9
TOKENS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))

#: Configs beyond HT_CONFIG_FEATURES: TL variants that go through other code paths.
EXTRA_CONFIGS: dict[str, dict] = {
    "solu": {"act_fn": "solu", "normalization_type": "LN"},
    "solu_ln_rms": {"act_fn": "solu_ln", "normalization_type": "RMS"},
    "gated_solu": {"act_fn": "solu", "normalization_type": "RMS", "gated_mlp": True},
    "gated_solu_ln": {"act_fn": "solu_ln", "normalization_type": "LN", "gated_mlp": True},  # TL ignores W_in
    "attn_in": {"act_fn": "gelu", "normalization_type": "LN", "use_attn_in": True},
    "split_qkv_gqa": {"act_fn": "silu", "normalization_type": "RMS", "gated_mlp": True, "n_key_value_heads": 2,
                      "use_split_qkv_input": True, "positional_embedding_type": "rotary", "rotary_dim": 8},
    "final_rms_ln": {"act_fn": "gelu", "normalization_type": "LN", "final_rms": True},
    "moe_no_renorm": {"act_fn": "silu", "normalization_type": "RMS", "gated_mlp": True, "num_experts": 4,
                      "experts_per_token": 2, "norm_topk_prob": False},
    "gemma_no_norm_post": {"act_fn": "gelu", "normalization_type": None, "use_normalization_before_and_after": True},
}


#: TL 3.9's fold_ln asserts that a SoLU MLP has an inner LN with a bias (``mlp.ln.b``), which only
#: ``solu_ln`` with ``normalization_type="LN"`` has; these variants are processed without fold_ln.
TL_CANNOT_FOLD = {"solu", "solu_ln_rms", "gated_solu"}


@functools.cache
def build_extra(name: str, *, processed: bool = False) -> Any:
    base = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=32, d_vocab=50)
    model = config_model(**base, **EXTRA_CONFIGS[name], dtype=torch.float64, seed=0)
    if model.cfg.num_experts:
        for block in model.blocks:
            block.mlp.to(torch.float64)  # TL 3.9 builds MoE experts in float32 (see tests/families.py)
    randomise(model, seed=0, scale=0.2)
    if bridge_refusal(model, EXTRA_CONFIGS[name]):  # refused on the Bridge, processed or not: assert it unprocessed
        return model
    return (_processed(model, fold_ln=name not in TL_CANNOT_FOLD) if processed else model).eval()


_processed = processed


def _expected_hooks(model: Any) -> set[str]:
    names = {"unembed.hook_in"}
    for l in range(model.cfg.n_layers):
        names |= {f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_resid_post"}
        if not model.cfg.attn_only:
            names.add(f"blocks.{l}.hook_mlp_out")
            if not model.cfg.parallel_attn_mlp:
                names.add(f"blocks.{l}.hook_resid_mid")
    return names


def assert_complete(model: Any, tokens: torch.Tensor, rule: str, *, family: str | None = None) -> float:
    """Replay, compare with TL's own cache at every hook and at the logits; return the max relative error.

    A feature depass_tl refuses on a TransformerBridge (tests/models.py ``bridge_refusal``) must be refused
    with its UnsupportedModelError instead.
    """
    refusal = bridge_refusal(model, family=family)
    if refusal is not None:
        with pytest.raises(UnsupportedModelError, match=refusal):
            depass_tl.run_with_depass(model, tokens, mlp_rule=rule)
        return 0.0
    _, dc = depass_tl.run_with_depass(model, tokens, mlp_rule=rule)
    assert set(dc) == _expected_hooks(model)
    _, cache = model.run_with_cache(tokens)
    tol = norm_tol(model, REL_TOL)
    worst = 0.0
    for name in dc:
        clean = cache[name]
        err = float((dc[name].sum(0) - clean).abs().max() / clean.abs().max())
        assert err <= tol, (name, err)
        worst = max(worst, err)
    pre_cap = cache["unembed.hook_out"]  # = the logits unless the model soft-caps them
    for pos in (0, -1):
        for tok in (0, 3, model.cfg.d_vocab_out - 1):
            err = float((dc.logit_attrs(tok, pos=pos).sum(0) - pre_cap[:, pos, tok]).abs().max() / pre_cap.abs().max())
            assert err <= tol, ("logits", pos, tok, err)
    assert dc.completeness_error(relative=True)["logits"] <= tol  # whole vocabulary, last position
    assert dc.logits_soft_capped == (model.cfg.output_logits_soft_cap > 0)
    return worst


PROCESSED = {"raw": False, "processed": True}


@pytest.mark.parametrize("name, rule, processed",
                         buildable_cases(dict(sorted(HT_CONFIG_FEATURES.items())), RULES, PROCESSED,
                                         twins=HT_FEATURE_TWINS))
def test_every_config_feature_is_exact(name: str, rule: str, processed: bool) -> None:
    model = build_ht(name)
    assert_complete(_processed(model) if processed else model, TOKENS, rule)


@pytest.mark.parametrize("name, rule, processed", buildable_cases(dict(sorted(EXTRA_CONFIGS.items())), RULES, PROCESSED))
def test_extra_config_variants_are_exact(name: str, rule: str, processed: bool) -> None:
    assert_complete(build_extra(name, processed=processed), TOKENS, rule)


@pytest.mark.parametrize("processed", [False, True], ids=["raw", "from_pretrained_flags"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("family", FAMILIES + tuple(BRIDGE_REFUSED_FAMILIES))
def test_every_family_is_exact(family: str, rule: str, processed: bool) -> None:
    flags = from_pretrained_flags(family) if processed else {}
    model, _ = build_family(family, dtype=torch.float64, **flags)
    assert_complete(model, family_tokens(), rule, family=family)


# ----------------------------------------------------------------------------- the features are active
def test_features_are_active_in_the_test_models() -> None:
    """Each value-path feature really changes something here, so its exactness test means something."""
    _, cache = build_ht("attention_sinks").run_with_cache(TOKENS)
    assert float(cache["blocks.0.attn.hook_pattern"].sum(-1).max()) < 0.99  # rows sum to < 1
    model = build_ht("clip_qkv")
    _, cache = model.run_with_cache(TOKENS)
    assert float((cache["blocks.0.attn.hook_v"].abs() > model.cfg.clip_qkv).float().mean()) > 0.05
    _, cache = build_ht("moe").run_with_cache(TOKENS)
    routed = [cache[f"blocks.0.mlp.experts.{e}.hook_post"].shape[0] for e in range(4)]
    assert sum(routed) == 2 * TOKENS.numel() and min(routed) > 0
    model = build_ht("gemma2_like")
    logits, cache = model.run_with_cache(TOKENS)
    assert float((logits - cache["unembed.hook_out"]).abs().max()) > 1e-2  # the soft cap bites


def test_gated_solu_ln_is_read_as_what_tl_computes() -> None:
    """TL's GatedMLP with solu_ln never uses W_in: the view uses W_gate as the input matrix."""
    model = build_extra("gated_solu_ln")
    if bridge_refusal(model):
        with pytest.raises(UnsupportedModelError, match=bridge_refusal(model)):
            read_model_view(model)
        return
    view = read_model_view(model)
    mlp = view.blocks[0].mlp
    assert mlp.kind == "standard" and mlp.ln is not None and mlp.b_in is None
    assert torch.equal(mlp.W_in, model.blocks[0].mlp.W_gate)


@pytest.mark.parametrize("rule", [r for r in RULES if get_rule(r).linear])
@pytest.mark.parametrize("name", ["solu_ln", "moe", "clip_qkv", "gemma2_like", "parallel_attn_mlp"])
def test_linear_rules_stay_linear(name: str, rule: str) -> None:
    """Frozen softmax vector, frozen routing, frozen clip ratio, post-norms: splitting a component splits its output."""
    model = build_ht(name)
    if bridge_refusal(model):
        with pytest.raises(UnsupportedModelError, match=bridge_refusal(model)):
            depass_tl.run_with_depass(model, TOKENS, mlp_rule=rule)
        return
    _, dc = depass_tl.run_with_depass(model, TOKENS, mlp_rule=rule)
    x0 = dc["blocks.0.hook_resid_pre"][:-1]
    frac = torch.rand(x0.shape[:3] + (1,), generator=torch.Generator().manual_seed(0), dtype=x0.dtype)
    labels = [f"a{i}" for i in range(len(x0))] + [f"b{i}" for i in range(len(x0))]
    spec = depass_tl.custom("blocks.0.hook_resid_pre", torch.cat([x0 * frac, x0 * (1 - frac)]), labels)
    _, dc2 = depass_tl.run_with_depass(model, TOKENS, mlp_rule=rule, components=spec)
    n = len(x0)
    for hook in ("blocks.1.hook_mlp_out", "unembed.hook_in"):
        torch.testing.assert_close(dc2[hook][:n] + dc2[hook][n:2 * n], dc[hook][:-1], rtol=0, atol=1e-10)


def test_parallel_blocks_have_no_resid_mid_start() -> None:
    model = build_ht("parallel_attn_mlp")
    _, cache = model.run_with_cache(TOKENS)
    spec = depass_tl.custom("blocks.0.hook_resid_post", cache["blocks.0.hook_resid_post"][None], ["all"])
    _, dc = depass_tl.run_with_depass(model, TOKENS, components=spec)
    assert max(dc.completeness_error(relative=True).values()) <= REL_TOL
    spec = depass_tl.custom("blocks.0.hook_resid_mid", cache["blocks.0.hook_resid_pre"][None], ["all"])
    with pytest.raises(DePassError, match="no hook_resid_mid"):
        depass_tl.run_with_depass(model, TOKENS, components=spec)


# ---------------------------------------------------------------------------------- pattern-only
_PATTERN_BASE = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=32, d_vocab=50, act_fn="gelu",
                     normalization_type="LN")
PATTERN_ONLY: dict[str, dict] = {
    "rotary": {"positional_embedding_type": "rotary", "rotary_dim": 8},
    "partial_rotary_adjacent": {"positional_embedding_type": "rotary", "rotary_dim": 4, "rotary_adjacent_pairs": True},
    "alibi": {"positional_embedding_type": "alibi"},
    "shortformer": {"positional_embedding_type": "shortformer"},
    "sliding_window": {"use_local_attn": True, "window_size": 3, "attn_types": ["local", "local"]},
    "scores_soft_cap": {"attn_scores_soft_cap": 2.0},
    "qk_norm": {"use_qk_norm": True, "normalization_type": "RMS"},
    "attn_scale": {"use_attn_scale": False},
    "inverse_layer_idx": {"scale_attn_by_inverse_layer_idx": True},
}


def _views_equal(a: object, b: object, path: str = "view") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            if f.name != "has_pos_embed_in_resid":  # where the decomposition starts, not the replay
                _views_equal(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for i, (x, y) in enumerate(zip(a, b)):
            _views_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("feature", buildable_cases(dict(sorted((k, {**_PATTERN_BASE, **v})
                                                                for k, v in PATTERN_ONLY.items()))))
def test_pattern_only_features_need_nothing(feature: str) -> None:
    """The replay sees exactly what it sees for the same weights without the feature, and is exact.

    The engine reads only the :class:`ModelView` and the captured tensors; for a pattern-only feature the
    view is identical to the plain model's (so no feature-specific code can run) and the frozen pattern
    carries the feature.
    """
    overrides = PATTERN_ONLY[feature]
    base_cfg = {**_PATTERN_BASE, "normalization_type": overrides.get("normalization_type", "LN")}
    model = config_model(**{**_PATTERN_BASE, **overrides}, dtype=torch.float64, seed=0)
    plain = config_model(**base_cfg, dtype=torch.float64, seed=1)
    randomise(model, seed=0, scale=0.2)
    shared = {k: v for k, v in model.state_dict().items() if k in plain.state_dict() and "pos_embed" not in k}
    plain.load_state_dict(shared, strict=False)
    _views_equal(read_model_view(model), read_model_view(plain))
    for rule in RULES:
        assert_complete(model.eval(), TOKENS, rule)


# ------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(load_in_4bit=True), r"cfg.load_in_4bit=True: .* unquantised"),
        (dict(original_architecture="Olmo2ForCausalLM"), r"original_architecture='Olmo2ForCausalLM' is a post-norm"),
    ],
)
def test_remaining_refusals_name_the_field(fields: dict, match: str) -> None:
    cfg = copy.copy(build_ht("gpt2_like").cfg)  # a shallow copy: the shared model's config is untouched
    for key, value in fields.items():
        object.__setattr__(cfg, key, value)
    with pytest.raises(UnsupportedModelError, match=match):
        check_supported(cfg)
