"""Rule sensitivity: how much the MLP rule changes which components drive a logit (two heatmaps).

Reads a :class:`~depass_tl.evaluate.rule_sensitivity.RuleSensitivity` (duck-typed: this module never
imports :mod:`depass_tl.evaluate`) and draws, for every pair of rule variants, the Spearman
correlation of their signed attributions (left) and the overlap of their top-k components by
magnitude (right).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.viz._backend import COLORSCALE, FONT, MAX_WIDTH, resolve_backend, static_figure

__all__ = ["RuleSensitivityData", "rule_sensitivity_data", "rule_sensitivity_plot"]


@dataclass(frozen=True)
class RuleSensitivityData:
    """What :func:`rule_sensitivity_plot` shows (plain data).

    Attributes:
        variants: the row and column labels.
        spearman / overlap: ``[variant, variant]`` float64 (NaN where undefined).
        k: the top-k size; title / note: the figure title and what the cells mean.
    """

    variants: tuple[str, ...]
    spearman: Tensor = field(repr=False)
    overlap: Tensor = field(repr=False)
    k: int
    title: str
    note: str


def rule_sensitivity_data(result: Any) -> RuleSensitivityData:
    """The data of :func:`rule_sensitivity_plot`.

    Raises:
        DePassError: not a result of :func:`depass_tl.evaluate.rule_sensitivity`.
    """
    needed = ("variants", "spearman", "overlap", "k", "n_prompts", "target")
    if not all(hasattr(result, a) for a in needed):
        raise DePassError(
            f"rule_sensitivity_plot takes the result of depass_tl.evaluate.rule_sensitivity(); got {type(result).__name__}."
        )
    prompts = "one prompt" if result.n_prompts == 1 else f"the mean over {result.n_prompts} prompts"
    return RuleSensitivityData(
        variants=tuple(result.variants),
        spearman=result.spearman.double().cpu(),
        overlap=result.overlap.double().cpu(),
        k=int(result.k),
        title=f"How much the MLP rule changes which components drive {result.target or 'the logit'}",
        note=(f"Between every two rule variants: Spearman correlation of the attributions (left) and the share "
              f"of the top {result.k} components by magnitude they have in common (right); {prompts}. Every "
              "variant is exact: they differ only in how MLP activations are credited."),
    )


def rule_sensitivity_plot(result: Any, *, backend: str | None = None) -> Any:
    """Two heatmaps ``[variant × variant]``: rank correlation and top-k overlap between the rule variants.

    Args:
        result: from :func:`depass_tl.evaluate.rule_sensitivity`.
        backend: ``"plotly"``, ``"matplotlib"`` or None (plotly if installed).

    Returns:
        A plotly or matplotlib figure.

    Raises:
        DePassError: a wrong argument, or no plotting library.
    """
    data = rule_sensitivity_data(result)
    name = resolve_backend(backend, fallback_hint="The numbers are in result.spearman / result.overlap.")
    return _plotly(data) if name == "plotly" else _matplotlib(data)


def _cells(t: Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in t.tolist()]


def _plotly(data: RuleSensitivityData) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = list(data.variants)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Spearman correlation", f"top-{data.k} overlap"),
                        horizontal_spacing=0.18)
    fig.add_trace(go.Heatmap(z=_cells(data.spearman), x=labels, y=labels, colorscale=COLORSCALE, zmin=-1, zmax=1,
                             texttemplate="%{z:.2f}", xgap=1, ygap=1, colorbar=dict(x=0.41, len=0.9),
                             hovertemplate="%{y} vs %{x}<br>Spearman %{z:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=_cells(data.overlap), x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1,
                             texttemplate="%{z:.2f}", xgap=1, ygap=1, colorbar=dict(x=1.0, len=0.9),
                             hovertemplate=f"%{{y}} vs %{{x}}<br>top-{data.k} overlap %{{z:.2f}}<extra></extra>"),
                  row=1, col=2)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=dict(text=f"{data.title}<br><sup>{data.note}</sup>", font=dict(size=15)), plot_bgcolor="white",
        autosize=True, height=max(360, 34 * len(labels) + 200), margin=dict(l=90, r=20, t=110, b=90),
    )
    return fig


def _matplotlib(data: RuleSensitivityData) -> Any:
    n = len(data.variants)
    fig = static_figure(MAX_WIDTH, min(7.0, max(3.2, 0.42 * n + 1.8)))
    axes = fig.subplots(1, 2)
    panels = ((data.spearman, "Spearman correlation", COLORSCALE, -1.0), (data.overlap, f"top-{data.k} overlap",
                                                                          "Blues", 0.0))
    for ax, (values, title, cmap, lo) in zip(axes, panels):
        image = ax.imshow(values.numpy(), cmap=cmap, vmin=lo, vmax=1.0, aspect="auto")
        for r in range(n):
            for c in range(n):
                v = float(values[r, c])
                if not math.isnan(v):
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=FONT["cell"] - 1,
                            color="white" if abs(v) > 0.7 else "black")
        ax.set_xticks(range(n), list(data.variants), rotation=60, ha="right", fontsize=FONT["cell"])
        ax.set_yticks(range(n), list(data.variants), fontsize=FONT["cell"])
        ax.set_title(title, fontsize=FONT["label"])
        fig.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=FONT["cell"])
    fig.suptitle(f"{data.title}\n{data.note}", fontsize=FONT["subtitle"], x=0.02, ha="left", wrap=True)
    return fig
