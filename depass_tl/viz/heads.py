"""Head grid: a ``[layer, head]`` heatmap of every head's contribution to a logit (difference).

Reads the ``L{l}H{h}`` components of a cache from ``depass_tl.heads()`` (one layer or every layer:
one group per layer) or ``depass_tl.sources()``. What a head's value means depends on the spec:

* ``heads()``: the head's output at its layer, replayed through every later layer with frozen
  patterns, norm scales and MLP coefficients: its direct *and* indirect effect. With several layers
  each layer's group (heads + ``L{l}.rest`` + ``L{l}.bias``) sums to the logit on its own, so values
  of different layers overlap (a later head's value contains part of what earlier heads wrote).
* ``sources()``: each path from the input is credited to the first head or MLP on it, so the heads,
  MLPs, embeddings and ``bias`` together sum to the logit once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from depass_tl.cache import DePassCache
from depass_tl.errors import DePassError
from depass_tl.viz._backend import (
    COLORSCALE, FONT, MAX_HEIGHT, UNITS, attrs_from, check_batch, describe_target, resolve_backend, static_figure,
    symmetric_max,
)

__all__ = ["HeadGridData", "head_grid", "head_grid_data"]

_HEAD_LABEL = re.compile(r"L(\d+)H(\d+)")
_ANNOTATE_MAX = 400  # write the values into the cells up to this many cells


@dataclass(frozen=True)
class HeadGridData:
    """What a head grid shows (plain data).

    Attributes:
        values: ``[n_layers, n_heads]`` float64, NaN where the cache has no such head.
        layers: the row labels ``L0 …``; heads: the column labels ``H0 …``.
        others: ``(label, value)`` of every component that is not a head (``L{l}.rest``, ``bias``, ...).
        several_groups: True for a multi-layer ``heads()`` cache (each layer's group sums to the logit).
        zmax: the colour range is ``[-zmax, zmax]`` (max |head value|; 1.0 when all are 0).
        target: e.g. ``logit(“Mary”) − logit(“John”)``.
        title: the figure title; note: what the values mean and what they add up to (the subtitle).
    """

    values: Tensor = field(repr=False)
    layers: tuple[str, ...]
    heads: tuple[str, ...]
    others: tuple[tuple[str, float], ...]
    several_groups: bool
    zmax: float
    target: str
    title: str
    note: str


def head_grid_data(
    dc: DePassCache,
    tokens: Any = None,
    *,
    incorrect_tokens: Any = None,
    attrs: Tensor | None = None,
    batch: int = 0,
    pos: int = -1,
    target: str | None = None,
) -> HeadGridData:
    """The data of :func:`head_grid` (see there for the arguments).

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]),
        ...                                   components=depass_tl.heads())
        >>> data = head_grid_data(dc, 5)
        >>> data.values.shape, data.layers, data.heads
        (torch.Size([2, 2]), ('L0', 'L1'), ('H0', 'H1'))
        >>> bool(data.values[1, 0] == dc.logit_attrs(5)[dc.component("L1H0"), 0])
        True
    """
    what = "head_grid"
    b = check_batch(dc, batch, what)
    a = attrs_from(dc, tokens, incorrect_tokens, attrs, pos, what)[:, b]
    cells: dict[tuple[int, int], float] = {}
    others: list[tuple[str, float]] = []
    for c, label in enumerate(dc.labels):
        m = _HEAD_LABEL.fullmatch(label)
        if m is None:
            others.append((label, float(a[c])))
        else:
            cells[(int(m.group(1)), int(m.group(2)))] = float(a[c])
    if not cells:
        raise DePassError(
            f"{what}: the cache has no head components (labels L{{l}}H{{h}}); its labels are {list(dc.labels)}. "
            "Run with components=depass_tl.heads() (every layer) or depass_tl.sources()."
        )
    n_layers = 1 + max(l for l, _ in cells)
    n_heads = 1 + max(h for _, h in cells)
    values = torch.full((n_layers, n_heads), math.nan, dtype=torch.float64)
    for (l, h), v in cells.items():
        values[l, h] = v
    several = dc.group_size != dc.n_components
    target = describe_target(tokens, incorrect_tokens) if target is None else target
    total = float(a[: dc.group_size].sum())
    if several:
        note = (f"Each cell: a head's whole effect, direct and through the layers after it. Each layer's heads "
                f"with the rest of the stream add up to {total:.4g}.")
    elif "embed" in dc.labels:  # sources(): every path credited to the first head or MLP on it
        note = (f"Each cell: the paths that pass through the head first. With the MLPs, the embeddings and the "
                f"biases the heads add up to {total:.4g}.")
    else:
        note = (f"Each cell: a head's whole effect, direct and through later layers; with the rest they add up to "
                f"{total:.4g}.")
    return HeadGridData(
        values=values,
        layers=tuple(f"L{l}" for l in range(n_layers)),
        heads=tuple(f"H{h}" for h in range(n_heads)),
        others=tuple(others),
        several_groups=several,
        zmax=symmetric_max(values),
        target=target,
        title=f"Which attention heads drive {target}",
        note=note,
    )


def head_grid(
    dc: DePassCache,
    tokens: Any = None,
    *,
    incorrect_tokens: Any = None,
    attrs: Tensor | None = None,
    batch: int = 0,
    pos: int = -1,
    target: str | None = None,
    backend: str | None = None,
) -> Any:
    """Heatmap ``[layers × heads]`` of each head's signed contribution to a logit (difference).

    Args:
        dc: a cache from ``run_with_depass(..., components=depass_tl.heads())`` (or ``heads(layer)``,
            or ``sources()``); see the module docstring for what the values mean in each case.
        tokens, incorrect_tokens, attrs, batch, pos, target, backend: as in
            :func:`depass_tl.viz.token_heatmap`.

    Returns:
        A plotly or matplotlib figure (blank cells: heads the cache does not hold).

    Raises:
        DePassError: no head components, bad arguments, or no plotting library.
    """
    name = resolve_backend(backend)
    data = head_grid_data(dc, tokens, incorrect_tokens=incorrect_tokens, attrs=attrs, batch=batch, pos=pos,
                          target=target)
    return _plotly(data) if name == "plotly" else _matplotlib(data)


def _cells(data: HeadGridData) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in data.values.tolist()]


def _plotly(data: HeadGridData) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Heatmap(
            z=_cells(data), x=list(data.heads), y=list(data.layers), colorscale=COLORSCALE,
            zmin=-data.zmax, zmax=data.zmax, zmid=0.0, xgap=1, ygap=1,
            hovertemplate=f"%{{y}}%{{x}}<br>{UNITS} %{{z:+.5g}}<extra></extra>",
            texttemplate="%{z:.2f}" if data.values.numel() <= _ANNOTATE_MAX else None,
            colorbar=dict(title=dict(text=UNITS, side="right")),
        )
    )
    fig.update_yaxes(autorange="reversed", title_text="layer")
    fig.update_xaxes(title_text="head", side="bottom")
    fig.update_layout(
        title=dict(text=f"{data.title}<br><sup>{data.note}</sup>", font=dict(size=15)), plot_bgcolor="white",
        autosize=True, height=max(320, 34 * len(data.layers) + 170), margin=dict(l=60, r=20, t=80, b=50),
    )
    return fig


def _matplotlib(data: HeadGridData) -> Any:
    rows, cols = data.values.shape
    fig = static_figure(max(4.2, 0.5 * cols + 2.2), min(MAX_HEIGHT, max(2.8, 0.36 * rows + 1.7)))
    ax = fig.subplots()
    image = ax.imshow(data.values.numpy(), cmap=COLORSCALE, vmin=-data.zmax, vmax=data.zmax, aspect="auto")
    if rows * cols <= _ANNOTATE_MAX:
        for (r, c), v in zip(((r, c) for r in range(rows) for c in range(cols)), data.values.flatten().tolist()):
            if not math.isnan(v):
                dark = abs(v) > 0.6 * data.zmax
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=FONT["cell"],
                        color="white" if dark else "black")
    ax.set_xticks(range(cols), list(data.heads), fontsize=FONT["cell"])
    ax.set_yticks(range(rows), list(data.layers), fontsize=FONT["cell"])
    ax.set_xlabel("head", fontsize=FONT["label"])
    ax.set_ylabel("layer", fontsize=FONT["label"])
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(UNITS, fontsize=FONT["label"])
    bar.ax.tick_params(labelsize=FONT["cell"])
    fig.suptitle(data.title, fontsize=FONT["title"], x=0.02, ha="left")
    ax.set_title(data.note, fontsize=FONT["subtitle"], loc="left", wrap=True)
    return fig
