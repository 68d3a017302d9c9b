"""Which test modules run on the installed TransformerLens version (imported by tests/conftest.py).

The suite targets three environments (TL 2.18, 3.9, 4.x). Some test modules cannot run on every
version, and the reason is the *test's* dependency, never a depass_tl failure:

* TL 4 removed ``HookedTransformer`` and ``HookedEncoder``. The suite builds its models through
  tests/models.py (``make_model`` / ``config_model``: a TL-native ``TransformerBridge`` from the same
  config fields) and tests/families.py (the same random HF models booted as Bridges), so every module
  runs there; a config the Bridge cannot build skips with the field named, and what depass_tl refuses
  on the Bridge is asserted. Not collected on TL 4: :data:`_TL4_IGNORE` (nothing today; tests/decompx
  runs DecompX on transformers' BERT and the BERT Bridge there, and skips its ``HookedEncoder`` cases).
* TL 2.x ships transformers 4.x, whose model configs reject the transformers-5 arguments of
  tests/families.py; TL 2.x has no Bridge (tests/test_bridge.py guards itself).

Single tests whose *assertion* encodes a TL 3.x behaviour are marked ``xfail(strict=True)`` with
the reason (so they still run, and a TL change that makes them pass fails the run).

Usage in tests/conftest.py::

    from tests._tl_version import collect_ignore, pytest_collection_modifyitems  # noqa: F401
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

__all__ = [
    "HAS_BRIDGE", "HAS_HOOKED", "TL_MAJOR", "TL_VERSION", "collect_ignore", "pytest_collection_modifyitems",
    "requires_bridge", "requires_hooked",
]


def _tl_version() -> str:
    for name in ("transformer-lens", "transformer_lens"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "0"


TL_VERSION: str = _tl_version()
TL_MAJOR: int = int(re.match(r"\d+", TL_VERSION).group(0))  # type: ignore[union-attr]
#: ``HookedTransformer`` / ``HookedEncoder`` exist (TL 2.x, 3.x).
HAS_HOOKED: bool = TL_MAJOR < 4
#: ``TransformerBridge`` exists (TL 3.x, 4.x).
HAS_BRIDGE: bool = TL_MAJOR >= 3

#: Module-level guards (``pytestmark = requires_bridge``) with the installed version in the reason.
requires_bridge = pytest.mark.skipif(
    not HAS_BRIDGE, reason=f"needs TransformerBridge (TL >= 3); installed TransformerLens {TL_VERSION}"
)
requires_hooked = pytest.mark.skipif(
    not HAS_HOOKED, reason=f"needs HookedTransformer (TL < 4); installed TransformerLens {TL_VERSION}"
)

_HERE = Path(__file__).parent

#: TL 4: modules not collected, each with why (paths relative to tests/). Nothing today: tests/decompx
#: runs on transformers' BERT and the BERT Bridge there.
_TL4_IGNORE: dict[str, str] = {}

#: TL 2.x: modules that need transformers 5 (tests/families.py builds HF configs with its arguments),
#: and the notebooks, which CI executes once, in the TL 3.x environment.
_TL2_IGNORE = ["families.py", "test_architectures.py", "test_families.py", "test_weight_processing.py",
               "test_notebooks.py"]


def _no_field(field: str) -> str:
    return f"HookedTransformerConfig of TL 2.x has no {field!r} field (added in TL 3)"


#: TL 2.x: tests that fail for a reason that is the installed TL's, by node id -> reason. A key matches
#: that node id, its parametrisations (``key[...]``), or, if it holds ``[``, every id starting with it.
_TL2_XFAIL: dict[str, str] = {
    "tests/test_dtypes.py::test_frozen_norm_scales_stay_float32": (
        "TL 2.x returns hook_pattern of half-precision models in float32 (TL 3.x casts it back); "
        "depass_tl keeps whatever TL captured"
    ),
    "tests/test_reference.py::test_reference_complete": (
        "the test compares the reference with cache['unembed.hook_in'], a hook TL 2.x does not have"
    ),
    "tests/test_reference.py::test_reference_ratio_matches_hooked_tl_forward": (
        "tests/reference.py hooks 'unembed.hook_in', which TL 2.x does not have"
    ),
    "tests/test_chunking.py::test_chunked_config_features[attention_sinks]": _no_field("use_attention_sinks"),
    "tests/test_chunking.py::test_chunked_config_features[clip_qkv]": _no_field("clip_qkv"),
    "tests/test_chunking.py::test_chunked_config_features[moe]": _no_field("norm_topk_prob"),
    "tests/test_reverse.py::test_reverse_config_features[attention_sinks-": _no_field("use_attention_sinks"),
    "tests/test_reverse.py::test_reverse_config_features[clip_qkv-": _no_field("clip_qkv"),
    "tests/test_reverse.py::test_reverse_config_features[moe-": _no_field("norm_topk_prob"),
    "tests/test_attention_scores.py::test_every_config_feature_is_exact_or_refused[attention_sinks]": (
        _no_field("use_attention_sinks")
    ),
    "tests/test_attention_scores.py::test_every_config_feature_is_exact_or_refused[clip_qkv]": _no_field("clip_qkv"),
    "tests/test_attention_scores.py::test_every_config_feature_is_exact_or_refused[moe]": _no_field("norm_topk_prob"),
    "tests/test_attention_scores.py::test_dynamic_ntk_rotary_tables_match_the_clean_run": (
        _no_field("use_dynamic_ntk_rope")
    ),
}



def _xfail_reason(nodeid: str) -> str | None:
    for key, reason in _TL2_XFAIL.items():
        if nodeid == key or nodeid.startswith(key if "[" in key else key + "["):
            return reason
    return None


def _collect_ignore() -> list[str]:
    if TL_MAJOR >= 4:
        return sorted(_TL4_IGNORE)
    if TL_MAJOR < 3:
        return list(_TL2_IGNORE)
    return []


#: Paths relative to tests/ that pytest does not collect on this TL version.
collect_ignore: list[str] = _collect_ignore()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the TL-version-specific tests ``xfail(strict=True)`` with their reason."""
    if TL_MAJOR >= 3:
        return
    for item in items:
        reason = _xfail_reason(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"TransformerLens {TL_VERSION}: {reason}"))
