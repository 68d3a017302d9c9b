"""DePass next to activation patching: side-by-side heatmaps of a :class:`~depass_tl.compare.Comparison`.

The panels (data, labels, one symmetric colour range) come from
:func:`depass_tl.compare_plot.heatmap_panels` and are drawn by
:func:`depass_tl.compare_plot.plot_comparison`; this module only puts them in the ``depass_tl.viz``
namespace with the same backend choice, install hint and :func:`~depass_tl.viz.save` as the other plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from depass_tl.compare import Comparison
from depass_tl.compare_plot import PANELS, HeatmapPanels, heatmap_panels, plot_comparison
from depass_tl.errors import DePassError
from depass_tl.viz._backend import resolve_backend

__all__ = ["PANELS", "HeatmapPanels", "heatmap_panels", "side_by_side"]


def side_by_side(
    comparison: Comparison,
    layout: str,
    *,
    panels: Sequence[str] = ("depass_diff", "patching"),
    backend: str | None = None,
) -> Any:
    """Heatmaps of DePass and activation patching for one layout, side by side, one colour scale.

    Args:
        comparison: from :func:`depass_tl.compare.compare`.
        layout: e.g. ``"resid_pre"``, ``"attn_head_out_all_pos"`` (see ``comparison.layouts``).
        panels: left to right, keys of :data:`PANELS` (default DePass clean − corrupted, and patching).
        backend: ``"plotly"``, ``"matplotlib"`` or None (plotly if installed).

    Returns:
        A plotly or matplotlib figure; the numbers are in ``heatmap_panels(comparison, layout)``.

    Raises:
        DePassError: not a Comparison, a bad layout or panel, or no plotting library.
    """
    if not isinstance(comparison, Comparison):
        raise DePassError(
            f"side_by_side: expected a Comparison from depass_tl.compare.compare(...), got {type(comparison).__name__}."
        )
    return plot_comparison(comparison, layout, panels=panels, backend=resolve_backend(backend))
