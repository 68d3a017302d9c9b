"""Which test modules run on the installed TransformerLens version (imported by tests/conftest.py).

The suite targets three environments (TL 2.18, 3.9, 4.x). Some test modules cannot run on every
version, and the reason is the *test's* dependency, never a depass_tl failure:

* TL 4 removed ``HookedTransformer`` and ``HookedEncoder``: every module that builds one is not
  collected. TL 4 runs the Bridge suite (tests/test_bridge.py: completeness, API, errors, hygiene
  and an independent reference on Bridge models) and tests/test_tl_versions.py. This is an
  allow-list, so a new HookedTransformer-only test module is not collected on TL 4 by accident.
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

#: What runs on TL 4 (paths relative to tests/); everything else in tests/ is not collected.
_TL4_ALLOW = {"__init__.py", "conftest.py", "_tl_version.py", "bridge_models.py", "test_bridge.py",
              "test_tl_versions.py", "test_import_graph.py", "test_explorer.py", "test_explorer_browser.py",
              "model_classes.py", "test_bad_input.py", "test_guard.py", "test_foreign_hooks.py", "test_threads.py"}

#: TL 2.x: modules that need transformers 5 (tests/families.py builds HF configs with its arguments),
#: and the notebooks, which CI executes once, in the TL 3.x environment.
_TL2_IGNORE = ["families.py", "test_architectures.py", "test_families.py", "test_weight_processing.py",
               "test_notebooks.py"]

_TOY_STATE = (
    "depass_tl.toy.load cannot load the shipped TL-3 state dicts (their attn.mask buffers are saved with "
    "shape [0, 0]; TL 2.x builds [n_ctx, n_ctx] and load_state_dict(strict=True) refuses them)"
)


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
    "tests/test_reverse.py::test_reverse_config_features[attention_sinks]": _no_field("use_attention_sinks"),
    "tests/test_reverse.py::test_reverse_config_features[clip_qkv]": _no_field("clip_qkv"),
    "tests/test_reverse.py::test_reverse_config_features[moe]": _no_field("norm_topk_prob"),
    "tests/test_attention_scores.py::test_every_config_feature_is_exact_or_refused[attention_sinks]": (
        _no_field("use_attention_sinks")
    ),
    "tests/test_attention_scores.py::test_every_config_feature_is_exact_or_refused[clip_qkv]": _no_field("clip_qkv"),
    "tests/test_attention_scores.py::test_every_config_feature_is_exact_or_refused[moe]": _no_field("norm_topk_prob"),
    "tests/test_attention_scores.py::test_dynamic_ntk_rotary_tables_match_the_clean_run": (
        _no_field("use_dynamic_ntk_rope")
    ),
    # everything below loads a shipped toy model
    "depass_tl/toy/__init__.py::depass_tl.toy": _TOY_STATE,
    "depass_tl/toy/loading.py::depass_tl.toy.loading.load": _TOY_STATE,
    "tests/toy/test_load.py::test_load_builds_documented_config": _TOY_STATE,
    "tests/toy/test_load.py::test_load_works_offline_without_pickle": _TOY_STATE,
    "tests/toy/test_load.py::test_loads_are_independent_copies": _TOY_STATE,
    "tests/toy/test_quality.py::test_facts_are_recalled_through_the_mlps": _TOY_STATE,
    "tests/toy/test_quality.py::test_induction_copies_the_repeated_half": _TOY_STATE,
    "tests/toy/test_quality.py::test_ioi_canonical_prompt": _TOY_STATE,
    "tests/toy/test_quality.py::test_ioi_heldout_accuracy_at_least_90_percent": _TOY_STATE,
    "tests/evaluate/test_suite.py::test_suite_end_to_end_on_the_ioi_toy_model": _TOY_STATE,
    "tests/test_cli.py::test_attribute_prints_the_librarys_numbers": _TOY_STATE,
    "tests/test_cli.py::test_options_reach_the_library": _TOY_STATE,
    "tests/test_cli.py::test_runs_as_a_module_in_a_fresh_process": _TOY_STATE,
    "tests/test_cli.py::test_bad_input_is_one_line_and_status_2[argv12-": _TOY_STATE,
    "tests/test_cli.py::test_bad_input_is_one_line_and_status_2[argv2-": _TOY_STATE,
    "tests/test_cli.py::test_bad_input_is_one_line_and_status_2[argv3-": _TOY_STATE,
    "tests/test_cli.py::test_bad_input_is_one_line_and_status_2[argv4-": _TOY_STATE,
    "tests/test_cli.py::test_bad_input_is_one_line_and_status_2[argv6-": _TOY_STATE,
    "tests/test_viz.py::test_flow_data_is_an_exact_split_of_the_residual_projection": _TOY_STATE,
    "tests/test_viz.py::test_flow_token_names_and_errors": _TOY_STATE,
    "tests/test_viz.py::test_head_grid_data_over_every_layer": _TOY_STATE,
    "tests/test_viz.py::test_head_grid_one_layer_and_sources": _TOY_STATE,
    "tests/test_viz.py::test_missing_viz_extra_names_the_install": _TOY_STATE,
    "tests/test_viz.py::test_plot_data_needs_no_plotting_library": _TOY_STATE,
    "tests/test_viz.py::test_token_heatmap_attrs_argument_and_fallback_labels": _TOY_STATE,
    "tests/test_viz.py::test_token_heatmap_data_is_the_token_attribution": _TOY_STATE,
    "tests/test_viz.py::test_token_heatmap_refuses_caches_without_token_components": _TOY_STATE,
    "tests/test_viz.py::test_plotly_figures_carry_the_data_on_a_symmetric_scale": _TOY_STATE,
    "tests/test_viz.py::test_matplotlib_figures_use_a_symmetric_scale": _TOY_STATE,
    "tests/test_viz.py::test_save_html": _TOY_STATE,
    "tests/test_viz.py::test_save_png_from_matplotlib": _TOY_STATE,
    "tests/test_viz.py::test_save_png_from_plotly_without_an_exporter_names_the_fix": _TOY_STATE,
    "tests/test_cli.py::test_html_is_the_explorer_from_one_capture_and_png_the_figures": _TOY_STATE,
    "tests/test_cli.py::test_html_needs_no_plotting_library": _TOY_STATE,
    "tests/test_viz.py::test_plotly_figures_are_labelled_in_words_and_follow_the_window_width": _TOY_STATE,
    "tests/test_viz.py::test_matplotlib_figures_carry_the_same_words_at_print_size": _TOY_STATE,
    "tests/toy/test_quality.py::test_induction_copies_the_repeated_half_at_any_length": _TOY_STATE,
    "tests/toy/test_quality.py::test_induction_circuit_previous_token_head_and_induction_head": _TOY_STATE,
    "tests/toy/test_quality.py::test_induction_metrics_in_json_match_the_model": _TOY_STATE,
}


def _toy_models_load() -> bool:
    """Whether ``depass_tl.toy.load`` works on this TL (the ``_TOY_STATE`` xfails apply only while it fails)."""
    try:
        from depass_tl.toy import load

        load("induction")
    except (RuntimeError, ImportError):  # TL 2.x: load_state_dict refuses the TL-3 attn.mask buffers
        return False
    return True


def _xfail_reason(nodeid: str) -> str | None:
    for key, reason in _TL2_XFAIL.items():
        if nodeid == key or nodeid.startswith(key if "[" in key else key + "["):
            return reason
    return None


def _collect_ignore() -> list[str]:
    if TL_MAJOR >= 4:
        return sorted(p.name for p in _HERE.iterdir()
                      if p.name not in _TL4_ALLOW and (p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__")))
    if TL_MAJOR < 3:
        return list(_TL2_IGNORE)
    return []


#: Paths relative to tests/ that pytest does not collect on this TL version.
collect_ignore: list[str] = _collect_ignore()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the TL-version-specific tests ``xfail(strict=True)`` with their reason."""
    if TL_MAJOR >= 3:
        return
    toy_ok = _toy_models_load()
    for item in items:
        reason = _xfail_reason(item.nodeid)
        if reason is not None and not (toy_ok and reason == _TOY_STATE):
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"TransformerLens {TL_VERSION}: {reason}"))
