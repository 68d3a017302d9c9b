"""What the installed TL's model class can build, what depass_tl refuses on it, and how exactly it computes.

Helpers for tests that run on either model class (tests/models.py, tests/families.py): skips that name
the config field a TL-native ``TransformerBridge`` cannot build, parametrisations that skip such a
config once (not once per rule), the refusals depass_tl must raise on a Bridge, and the float32-norm
bound for Bridges whose RMS norms compute in float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from typing import Any

import pytest
import torch

from depass_tl.backends.bridge import is_bridge
from depass_tl.toy.random_model import bridge_unsupported_fields
from tests._tl_version import HAS_HOOKED, TL_VERSION


def skip_unless_buildable(config: dict[str, Any]) -> None:
    """Skip the calling test when the installed TL's model class cannot build ``config`` (reason: the fields)."""
    if HAS_HOOKED:
        return
    refused = bridge_unsupported_fields(config)
    if refused:
        pytest.skip(
            f"impossible on TransformerLens {TL_VERSION}: HookedTransformer is gone and the TL-native "
            f"TransformerBridge cannot build {', '.join(f'{k} ({v})' for k, v in refused.items())}"
        )


#: Relative bound for a float64 replay of a model whose RMS norms compute in float32 (see :func:`norm_tol`).
FLOAT32_NORM_REL_TOL = 1e-6


def has_float32_norms(model: Any) -> bool:
    """Whether a float64 model's RMS norms compute in float32 (TL-native and HF RMSNorm modules behind a Bridge).

    TL's ``NativeRMSNorm`` (``boot_native``) and HF's Llama-family ``*RMSNorm`` cast to float32 to normalise,
    whatever the model's dtype, so the clean run carries float32 rounding that a float64 replay with the
    frozen scale does not (relative error ~1e-7 instead of ~1e-15). HookedTransformer's norms stay float64.
    """
    if not is_bridge(model):
        return False
    return any("RMSNorm" in type(m).__name__ and "Pre" not in type(m).__name__ for m in model.modules())


def norm_tol(model: Any, exact: float) -> float:
    """``exact``, or :data:`FLOAT32_NORM_REL_TOL` for a model whose norms compute in float32 (never tighter)."""
    return max(exact, FLOAT32_NORM_REL_TOL) if has_float32_norms(model) else exact


#: What depass_tl refuses on a TransformerBridge, as the UnsupportedModelError's message (a regex):
#: SoLU MLPs (the Bridge hooks neither the SoLU softmax input nor the inner LayerNorm's scale), MoE
#: blocks (no expert weights or per-expert hooks), one norm shared by attention and MLP (GPT-J, Falcon) and
#: OLMo's q/k/v clamp (the pre-clamp value is not hooked; every clamp in the test models is 0.5).
BRIDGE_REFUSALS: dict[str, str] = {
    "solu": r"act_fn='solu(_ln)?' on a TransformerBridge is not replayed",
    "moe": r"mixture-of-experts block",
    "shared_norm": r"has an MLP but no ln2",
    "clip_qkv": r"clip_qkv=0\.5 \(q/k/v clamped, as in OLMo\) on a TransformerBridge is not replayed",
}


def bridge_refusal(model: Any, config: dict[str, Any] | None = None, *, family: str | None = None) -> str | None:
    """The refusal (a :data:`BRIDGE_REFUSALS` regex) depass_tl must raise for this model, or None.

    Decided from the config / family, never from depass_tl itself: only a Bridge refuses.
    """
    if not is_bridge(model):
        return None
    if family in ("gptj", "falcon"):
        return BRIDGE_REFUSALS["shared_norm"]
    if family == "mixtral" or (config or {}).get("num_experts") or getattr(model.cfg, "num_experts", None):
        return BRIDGE_REFUSALS["moe"]
    hf_config = getattr(getattr(model, "original_model", None), "config", None)  # TL 4.3 drops OLMo's clip_qkv
    if family == "olmo" or (config or {}).get("clip_qkv") or getattr(hf_config, "clip_qkv", None):
        return BRIDGE_REFUSALS["clip_qkv"]
    act_fn = (config or {}).get("act_fn") or getattr(model.cfg, "act_fn", None)
    if act_fn in ("solu", "solu_ln"):
        return BRIDGE_REFUSALS["solu"]
    return None


def buildable_cases(configs: dict[str, dict[str, Any]], *axes: dict[str, Any] | Sequence[Any],
                    twins: Collection[str] = ()) -> list[Any]:
    """``pytest.param`` cases ``(name, *axis values)`` over every config and every combination of the axes.

    Ids read ``name-axis1-axis2`` (an axis given as a dict ``{id: value}`` names its values). A config the
    installed TL's model class cannot build (:func:`skip_unless_buildable`) gets a *single* case that skips
    with the reason, instead of one skipped case per combination of the other axes. ``twins``: configs the
    caller builds another way on TL 4 (tests/families.py ``HT_FEATURE_TWINS``), so never skipped here.
    """
    named = [ax if isinstance(ax, dict) else {str(v): v for v in ax} for ax in axes]
    cases = []
    for name, config in configs.items():
        refused = {} if HAS_HOOKED or name in twins else bridge_unsupported_fields(config)
        if refused:
            first = [next(iter(ax.values())) for ax in named]
            reason = (f"impossible on TransformerLens {TL_VERSION}: HookedTransformer is gone and the TL-native "
                      f"TransformerBridge cannot build {', '.join(f'{k} ({v})' for k, v in refused.items())}")
            cases.append(pytest.param(name, *first, id=f"{name}-impossible", marks=pytest.mark.skip(reason=reason)))
            continue
        for combo in itertools.product(*(ax.items() for ax in named)):
            cases.append(pytest.param(name, *(v for _, v in combo), id="-".join([name, *(k for k, _ in combo)])))
    return cases


#: Skip mark for tests of HookedTransformer's single weight-processing flags (``load_and_process_state_dict``).
NEEDS_PROCESSING_FLAGS = pytest.mark.skipif(
    not HAS_HOOKED,
    reason=f"impossible on TransformerLens {TL_VERSION}: a TransformerBridge processes weights all together "
           "(enable_compatibility_mode); HookedTransformer's single processing flags do not exist there",
)


def cases_unless_bridge(argname: str, values: Sequence[Any]) -> Any:
    """``pytest.mark.parametrize(argname, values)``; on TL 4 only the first value (for a test that is skipped
    there anyway, e.g. with :data:`NEEDS_PROCESSING_FLAGS`, so it counts as one skip and not one per case)."""
    return pytest.mark.parametrize(argname, list(values) if HAS_HOOKED else list(values)[:1])


def norm_atol(model: Any, exact: float, reference: torch.Tensor) -> float:
    """An absolute bound: ``exact``, or :data:`FLOAT32_NORM_REL_TOL` times ``max |reference|`` for a model
    whose norms compute in float32 (:func:`has_float32_norms`), whichever is larger."""
    if not has_float32_norms(model):
        return exact
    return max(exact, FLOAT32_NORM_REL_TOL * float(reference.abs().max()))
