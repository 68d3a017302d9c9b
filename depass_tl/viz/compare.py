"""DePass next to activation patching: side-by-side heatmaps of a :class:`~depass_tl.compare.Comparison`.

:func:`heatmap_panels` turns one layout into 2-d panels with shared labels and one symmetric colour
range (plain data, no plotting library needed); :func:`plot_comparison` (and :func:`side_by_side`, the
same, under its :mod:`depass_tl.viz` name, and ``Comparison.plot``) draws them with plotly (as TransformerLens's
tutorials do) or matplotlib, chosen by :func:`~depass_tl.viz.resolve_backend` like every other plot.

This module reads a comparison through :class:`ComparisonLike` and never imports
:mod:`depass_tl.compare`, which imports this module for ``Comparison.plot``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.viz._backend import COLORSCALE, FONT, MAX_HEIGHT, resolve_backend, static_figure

__all__ = ["PANELS", "ComparisonLike", "HeatmapPanels", "heatmap_panels", "plot_comparison", "side_by_side"]


@runtime_checkable
class ComparisonLike(Protocol):
    """What the plots read of a :class:`~depass_tl.compare.Comparison`."""

    layouts: Mapping[str, Any]
    pos_labels: tuple[str, ...]
    metric_clean: float
    metric_corrupted: float
    incorrect_tokens: Any  # None: the metric is a plain logit

    def __getitem__(self, layout: str) -> Any: ...


PANELS: dict[str, str] = {
    "depass_clean": "DePass, clean run",
    "depass_corrupted": "DePass, corrupted run",
    "depass_diff": "DePass, clean − corrupted",
    "patching": "Activation patching (patched − corrupted)",
}
"""Panel name (a :class:`~depass_tl.compare.LayoutComparison` field) -> its title."""

LAYOUT_TITLES: dict[str, str] = {
    "resid_pre": "the residual stream before each layer, by position",
    "resid_mid": "the residual stream between attention and MLP, by position",
    "attn_out": "each layer's attention output, by position",
    "mlp_out": "each layer's MLP output, by position",
    "attn_head_out_by_pos": "each head's output, by position",
    "attn_head_out_all_pos": "each head's output at every position",
}
"""Layout -> what its cells are, in words (figure titles)."""

# matplotlib: panels side by side in rows of two (more would squeeze the labels into MAX_WIDTH inches)
_PANELS_PER_ROW = 2
_LABEL_PITCH = 1.4 * FONT["cell"] / 72  # inches per tick label
_MARGIN = (1.6, 1.5)  # inches a figure spends beside (y labels, colour bar) and below (titles, x labels) its panels


@dataclass(frozen=True)
class HeatmapPanels:
    """The data of a side-by-side figure.

    Attributes:
        layout: the layout shown.
        titles: one title per panel.
        z: one ``[rows, cols]`` float64 tensor per panel (same shape for all).
        x_labels: column labels (positions, or heads for ``attn_head_out_all_pos``).
        y_labels: row labels (``L{l}``, or ``L{l}H{h}`` for ``attn_head_out_by_pos``).
        x_title: the column axis name; y_title: the row axis name.
        zmax: the colour range is ``[-zmax, zmax]`` for every panel (max |value| over all panels;
            1.0 when every value is 0).
        title: a figure title (what the cells are, and the metric on both runs).
        units: the colour-bar label (the change in the metric: a logit or a logit difference).
    """

    layout: str
    titles: tuple[str, ...]
    z: tuple[Tensor, ...] = field(repr=False)
    x_labels: tuple[str, ...]
    y_labels: tuple[str, ...]
    x_title: str
    y_title: str
    zmax: float
    title: str
    units: str


def heatmap_panels(
    comparison: ComparisonLike, layout: str, *, panels: Sequence[str] = ("depass_diff", "patching")
) -> HeatmapPanels:
    """The 2-d panels of one layout, with shared labels and a shared symmetric colour range.

    ``[n_layers, pos]`` maps are shown as they are; ``[n_layers, pos, n_heads]`` as rows ``L{l}H{h}``
    (layer-major) by position; ``[n_layers, n_heads]`` as layers by heads.

    Raises:
        DePassError: not a comparison, an unknown layout or panel, or no panel asked for.
    """
    if not isinstance(comparison, ComparisonLike):
        raise DePassError(
            f"expected a Comparison from depass_tl.compare.compare(...), got {type(comparison).__name__}."
        )
    lay = comparison[layout]
    if isinstance(panels, str) or not panels:
        raise DePassError(f"panels must be a non-empty list from {list(PANELS)}; got {panels!r}.")
    unknown = [p for p in panels if p not in PANELS]
    if unknown:
        raise DePassError(f"unknown panel(s) {unknown}; choose from {list(PANELS)}.")
    maps = [getattr(lay, p) for p in panels]
    n_layers = lay.shape[0]
    if lay.axis_names == ("layer", "pos"):
        z = [m for m in maps]
        x_labels, x_title = comparison.pos_labels, "position"
        y_labels, y_title = tuple(f"L{l}" for l in range(n_layers)), "layer"
    elif lay.axis_names == ("layer", "pos", "head"):
        n_heads = lay.shape[2]
        z = [m.permute(0, 2, 1).reshape(n_layers * n_heads, lay.shape[1]) for m in maps]  # [(layer, head), pos]
        x_labels, x_title = comparison.pos_labels, "position"
        y_labels = tuple(f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads))
        y_title = "head"
    else:
        assert lay.axis_names == ("layer", "head")
        z = list(maps)
        x_labels, x_title = tuple(f"H{h}" for h in range(lay.shape[1])), "head"
        y_labels, y_title = tuple(f"L{l}" for l in range(n_layers)), "layer"
    zmax = max(float(m.abs().max()) for m in z)
    metric_name = "logit" if comparison.incorrect_tokens is None else "logit difference"
    metric = f"{metric_name}: clean run {comparison.metric_clean:.4g}, corrupted run {comparison.metric_corrupted:.4g}"
    return HeatmapPanels(
        layout=layout,
        titles=tuple(PANELS[p] for p in panels),
        z=tuple(m.double() for m in z),
        x_labels=tuple(x_labels),
        y_labels=y_labels,
        x_title=x_title,
        y_title=y_title,
        zmax=zmax if zmax > 0 else 1.0,
        title=f"Patching {LAYOUT_TITLES.get(layout, layout)} ({metric})",
        units=f"effect on the {metric_name}",
    )


def plot_comparison(
    comparison: ComparisonLike,
    layout: str,
    *,
    panels: Sequence[str] = ("depass_diff", "patching"),
    backend: str | None = None,
) -> Any:
    """Side-by-side heatmaps of one layout with one symmetric colour scale (red < 0 < blue).

    Args:
        comparison: from :func:`depass_tl.compare.compare`.
        layout: e.g. ``"resid_pre"`` or ``"attn_head_out_by_pos"``.
        panels: which maps, left to right (keys of :data:`PANELS`); default DePass difference and
            patching.
        backend: ``"plotly"``, ``"matplotlib"`` or None (plotly if installed, else matplotlib).

    Returns:
        A ``plotly.graph_objects.Figure`` or a ``matplotlib.figure.Figure`` (show it in a notebook). A
        matplotlib figure is at most 7.2 in wide like every static plot of :mod:`depass_tl.viz`: more
        than two panels wrap onto a second row, and rows or columns too many to label each are
        labelled every k-th.

    Raises:
        DePassError: the plotting library is missing (the message names the ``pip install``), or a
            bad layout/panel.
    """
    data = heatmap_panels(comparison, layout, panels=panels)
    chosen = resolve_backend(
        backend,
        fallback_hint="For interactive plots `pip install plotly` is enough. The numbers are in heatmap_panels(...) and "
        "Comparison.to_dataframe() without either.",
    )
    return _plotly(data) if chosen == "plotly" else _matplotlib(data)


def _plotly(data: HeatmapPanels) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(data.z)
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(data.titles), shared_yaxes=True, horizontal_spacing=0.04)
    for i, z in enumerate(data.z):
        fig.add_trace(
            go.Heatmap(
                z=z.tolist(), x=list(data.x_labels), y=list(data.y_labels), coloraxis="coloraxis",
                hovertemplate=f"{data.y_title} %{{y}}<br>{data.x_title} %{{x}}<br>%{{z:.4g}}<extra>{data.titles[i]}</extra>",
            ),
            row=1,
            col=i + 1,
        )
        fig.update_xaxes(title_text=data.x_title, row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed", title_text=data.y_title, row=1, col=1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=data.title,
        coloraxis=dict(colorscale=COLORSCALE, cmin=-data.zmax, cmax=data.zmax, cmid=0.0,
                       colorbar=dict(title=dict(text=data.units, side="right"))),
        autosize=True,
        height=max(300, 60 + 22 * len(data.y_labels)),
    )
    return fig


def _tick_step(n_labels: int, inches: float) -> int:
    """Label every k-th row or column so that labels of ``FONT["cell"]`` points do not overlap in ``inches``."""
    return max(1, math.ceil(n_labels * _LABEL_PITCH / max(inches, _LABEL_PITCH)))


def _matplotlib(data: HeatmapPanels) -> Any:
    n = len(data.z)
    rows, cols = data.z[0].shape
    across = min(n, _PANELS_PER_ROW)
    down = math.ceil(n / across)
    fig = static_figure(max(4.0, 0.35 * cols + 1.5) * across, min(MAX_HEIGHT, down * max(3.0, 0.3 * rows + 1.5)))
    width, height = fig.get_size_inches()
    x_step = _tick_step(cols, (width - _MARGIN[0]) / across)
    y_step = _tick_step(rows, height / down - _MARGIN[1])
    grid = fig.subplots(down, across, sharey=True, squeeze=False).ravel()
    axes = list(grid[:n])
    for spare in grid[n:]:  # an odd number of panels leaves the last row's second slot empty
        spare.remove()
    image = None
    for ax, z, title in zip(axes, data.z, data.titles):
        image = ax.imshow(z.numpy(), cmap=COLORSCALE, vmin=-data.zmax, vmax=data.zmax, aspect="auto")
        ax.set_title(title, fontsize=FONT["label"])
        ax.set_xticks(range(0, cols, x_step), list(data.x_labels[::x_step]), rotation=90, fontsize=FONT["cell"])
        ax.set_yticks(range(0, rows, y_step), list(data.y_labels[::y_step]), fontsize=FONT["cell"])
        ax.set_xlabel(data.x_title, fontsize=FONT["label"])
    for ax in axes[::across]:
        ax.set_ylabel(data.y_title, fontsize=FONT["label"])
    bar = fig.colorbar(image, ax=axes)
    bar.set_label(data.units, fontsize=FONT["label"])
    bar.ax.tick_params(labelsize=FONT["cell"])
    fig.suptitle(data.title, fontsize=FONT["title"], wrap=True)
    return fig


side_by_side = plot_comparison
"""The name in :mod:`depass_tl.viz` for :func:`plot_comparison`."""
