"""The completeness guard: every replay is checked against the clean run, and a wrong one never returns.

A wrong replay is made honestly by changing one frozen coefficient (or the model's recorded logits)
in a captured run, so the replay no longer matches the forward pass it claims to decompose; the
guard must then raise, for the forward replay (chunked or not, one group or several, every rule),
reverse mode and the forward projection of ``attribute_run``. On untouched runs it must stay quiet
(the whole suite runs through it) and record what it measured.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest
import torch

import depass_tl
from depass_tl.errors import CompletenessError, DePassValueError, ModelStateError
from depass_tl.guard import RTOL_BY_PRECISION, check_values, completeness_rtol, group_error
from depass_tl.reverse import attribute_run, logit_target
from tests._tl_version import requires_hooked
from tests.model_classes import CLASSES, model_of
from tests.models import make_model, random_tokens

RULES = ["softmax", "ratio", "max"]


def _run(kind: str, *, extra: set[str] = frozenset(), tokens: torch.Tensor | None = None):
    model, toks = model_of(kind)
    return depass_tl.capture(model, toks if tokens is None else tokens, extra_hooks=extra)


def _changed(run, name: str, factor: float = 0.9):
    """The same run with one captured tensor scaled: the replay no longer matches the forward pass."""
    acts = dict(run.acts)
    acts[name] = acts[name] * factor
    return dataclasses.replace(run, acts=MappingProxyType(acts))


def _by_hand(dc, hook: str) -> float:
    """max over groups of |Σ_c x_c - clean|, with explicit loops (independent of the cache's code)."""
    x, clean, K = dc[hook], dc.clean[hook], dc.group_size
    worst = 0.0
    for g in range(x.shape[0] // K):
        total = torch.zeros_like(clean, dtype=x.dtype)
        for c in range(g * K, (g + 1) * K):
            total = total + x[c]
        worst = max(worst, float((total - clean).abs().max()))
    return worst


# ------------------------------------------------------------------------------ completeness_error


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("spec", ["tokens", "heads"])
def test_completeness_error_by_hook_name(kind: str, spec: str) -> None:
    """One token per prompt and two prompts: batch == number of components (tok0, bias), the case that
    used to give a wrong number; heads(): several groups."""
    model, toks = model_of(kind)
    one_token = toks[:, :1]
    components = depass_tl.tokens() if spec == "tokens" else depass_tl.heads()
    _, dc = depass_tl.run_with_depass(model, one_token if spec == "tokens" else toks, components=components)
    if spec == "tokens":
        assert dc.group_size == 2 == dc.tokens.shape[0]
    else:
        assert dc.n_components > dc.group_size
    for hook in dc:
        err = dc.completeness_error(hook)
        assert err == pytest.approx(_by_hand(dc, hook), abs=1e-6)
        assert err < 1e-4 and dc.completeness_error(hook) == dc.completeness_error()[hook]
        assert dc.completeness_error(hook, relative=True) <= completeness_rtol(torch.float32, torch.float32)


@pytest.mark.parametrize("kind", CLASSES)
def test_the_cache_records_what_the_guard_measured(kind: str) -> None:
    model, toks = model_of(kind)
    _, dc = depass_tl.run_with_depass(model, toks, names_filter=["blocks.1.hook_resid_post"])
    record = dc.completeness
    assert set(record.errors) == set(dc) | {"logits"}
    assert record.rtol == completeness_rtol(torch.float32, torch.float32) == 1e-4
    relative = dc.completeness_error(relative=True)
    for hook in dc:
        assert record.errors[hook] == pytest.approx(relative[hook], rel=1e-6, abs=1e-12)
    assert 0 < record.worst[1] <= record.rtol
    assert dc.group({"first": ["tok0"]}).completeness is record  # regrouping keeps the record
    assert "rtol 1e-04" in repr(record)


# ------------------------------------------------------------------------------ wrong replays raise


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_a_replay_that_misses_the_clean_run_raises(kind: str, rule: str, chunk_size: int | None) -> None:
    run = _changed(_run(kind), "blocks.1.attn.hook_pattern")
    with pytest.raises(CompletenessError, match=r"does not sum to the clean run: at \S+ the components miss by .*"
                                                r"Nothing was returned") as info:
        depass_tl.replay(run, mlp_rule=rule, chunk_size=chunk_size)
    assert "blocks.0." not in str(info.value).split(" the components miss")[0]  # layer 0 is untouched
    assert "tolerance is 1e-04 for float32 components of a float32 model" in str(info.value)


@pytest.mark.parametrize("kind", CLASSES)
def test_several_groups_and_a_late_start_are_checked(kind: str) -> None:
    run = _changed(_run(kind, extra={"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}), "blocks.1.attn.hook_pattern")
    with pytest.raises(CompletenessError):
        depass_tl.replay(run, depass_tl.heads())
    with pytest.raises(CompletenessError):
        depass_tl.replay(run, depass_tl.tokens(start="blocks.1.hook_resid_pre"), names_filter=[])
    depass_tl.replay(run, depass_tl.tokens(start="blocks.1.hook_resid_post"))  # after the change: exact


@pytest.mark.parametrize("kind", CLASSES)
def test_the_model_logits_are_checked(kind: str) -> None:
    """A decomposition that matches every captured hook but not the model's logits is refused too."""
    run = _run(kind)
    wrong = dataclasses.replace(run, logits=run.logits + 0.5)
    with pytest.raises(CompletenessError, match="at logits"):
        depass_tl.replay(wrong, names_filter=[])
    with pytest.raises(CompletenessError, match="target"):
        attribute_run(wrong, logit_target(3), mode="reverse")


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_scalar_attributions_are_checked(kind: str, mode: str) -> None:
    run = _run(kind)
    att = attribute_run(run, logit_target(3, incorrect_tokens=5), mode=mode)
    assert att.completeness_error() < 1e-4
    with pytest.raises(CompletenessError, match=rf"the target \({mode} mode, unembed.hook_in\)"):
        attribute_run(_changed(run, "blocks.1.attn.hook_pattern"), logit_target(3, incorrect_tokens=5), mode=mode)


@pytest.mark.parametrize("kind", CLASSES)
def test_nan_never_passes(kind: str) -> None:
    run = _changed(_run(kind), "blocks.1.ln2.hook_scale", float("nan"))
    with pytest.raises(CompletenessError, match="miss by nan"):
        depass_tl.replay(run)


# ------------------------------------------------------------------------------ tolerances


def test_the_tolerance_depends_only_on_dtypes_and_precision(monkeypatch) -> None:
    f32, f64, bf16, f16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
    assert completeness_rtol(f64, f64) == 1e-9
    assert completeness_rtol(f64, f32) == completeness_rtol(f32, f32) == 1e-4
    assert completeness_rtol(f32, bf16) > completeness_rtol(f32, f16) > completeness_rtol(f32, f32)
    with pytest.raises(DePassValueError, match="precision must be one of 'exact', 'tf32x3', 'fast'"):
        completeness_rtol(f32, f32, "fastest")
    assert completeness_rtol(f32, f32, "fast") == 1e-2 and completeness_rtol(f32, bf16, "fast") == 8e-2
    assert completeness_rtol(f64, f64, "fast") == 1e-2  # TF32 rounding is coarser than float64's
    monkeypatch.setitem(RTOL_BY_PRECISION, "bf16", 3e-2)  # how a precision mode registers its tolerance
    assert completeness_rtol(f32, f32, "bf16") == 3e-2
    with pytest.raises(DePassValueError, match="no completeness tolerance for torch.int64"):
        completeness_rtol(torch.int64, f32)


def test_scalar_checks_are_relative_to_the_shares() -> None:
    """A target near 0 made of large opposite shares: judged by the shares' size, not by |target|."""
    values = torch.tensor([[1000.0], [-1000.0], [0.001]])  # three components, one prompt
    check_values(values, torch.tensor([0.001]), 3, rtol=1e-4, how="test")
    check_values(values, torch.tensor([0.05]), 3, rtol=1e-4, how="test")  # 5e-2 of 2000: rounding
    with pytest.raises(CompletenessError, match=r"at target the components miss by 0\.999 \(0\.0005 of the size of "
                                                r"the shares = 2e\+03"):
        check_values(values, torch.tensor([1.0]), 3, rtol=1e-4, how="test")


def test_group_error_sums_each_group_on_its_own() -> None:
    clean = torch.arange(6.0).reshape(2, 3)
    parts = torch.stack([clean / 2, clean / 2, clean, torch.zeros_like(clean)])  # two groups of two
    assert group_error(parts, clean, 2) == (0.0, 5.0)
    assert group_error(parts, clean, 4) == (5.0, 5.0)  # one group of four sums to twice the clean


@requires_hooked
def test_a_rotary_models_unused_position_table_may_hold_nan() -> None:
    """HookedTransformer allocates ``pos_embed.W_pos`` with ``torch.empty`` for rotary and ALiBi models too
    (BLOOM's could hold NaN garbage), and never reads it: that is not a broken model. A NaN in a weight the
    forward reads still is."""
    model = make_model("gpt2", positional_embedding_type="alibi")
    tokens = random_tokens(model)
    with torch.no_grad():
        model.pos_embed.W_pos.fill_(float("nan"))
    logits, dc = depass_tl.run_with_depass(model, tokens)
    assert torch.isfinite(logits).all() and dc.completeness_error(relative=True)["logits"] < 1e-6
    with torch.no_grad():
        model.blocks[0].attn.W_Q[0, 0, 0] = float("nan")
    with pytest.raises(ModelStateError, match="blocks.0.attn.W_Q"):
        depass_tl.run_with_depass(model, tokens)
