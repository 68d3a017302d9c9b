"""Token heatmap: the prompt's tokens coloured by their signed contribution to a logit (difference).

The values are ``DePassCache.logit_attrs`` of the ``tok{p}`` components (from ``depass_tl.tokens()``),
read, not recomputed. Colours are diverging and centred at 0 (red < 0 < blue), with the range
``[-m, m]``, ``m`` the largest |token value|; each cell shows the token and its value. Components
that are not tokens (``bias``, ``pos_embed``) are named in the subtitle, so the subtitle's total is
the exact sum of everything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from depass_tl.cache import DePassCache
from depass_tl.errors import DePassError
from depass_tl.viz._backend import (
    COLORSCALE, FONT, OTHER_NAMES, UNITS, attrs_from, check_batch, describe_target, resolve_backend, resolve_pos,
    static_figure, str_tokens_of, symmetric_max, token_text,
)

__all__ = ["TokenHeatmapData", "token_heatmap", "token_heatmap_data"]

_TOKEN_LABEL = re.compile(r"tok(\d+)")


@dataclass(frozen=True)
class TokenHeatmapData:
    """What a token heatmap shows (plain data; no plotting library needed).

    Attributes:
        str_tokens: one string per position of the prompt.
        values: ``[pos]`` float64: the ``tok{p}`` attribution (NaN where the cache has no ``tok{p}``).
        others: ``(label, value)`` of every component that is not a token (``bias``, ``pos_embed``).
        total: the sum over all components (= the clean logit or logit difference, exactly).
        pos: the position whose logit is attributed (absolute index).
        batch: the prompt shown.
        zmax: the colour range is ``[-zmax, zmax]`` (max |token value|; 1.0 when all are 0).
        target: e.g. ``logit(“Mary”) − logit(“John”)``.
        title: the figure title; subtitle: what the values are and what they add up to.
    """

    str_tokens: tuple[str, ...]
    values: Tensor = field(repr=False)
    others: tuple[tuple[str, float], ...]
    total: float
    pos: int
    batch: int
    zmax: float
    target: str
    title: str
    subtitle: str


def token_heatmap_data(
    dc: DePassCache,
    tokens: Any = None,
    *,
    incorrect_tokens: Any = None,
    attrs: Tensor | None = None,
    batch: int = 0,
    pos: int = -1,
    str_tokens: Sequence[str] | None = None,
    target: str | None = None,
) -> TokenHeatmapData:
    """The data of :func:`token_heatmap` (see there for the arguments).

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]))
        >>> data = token_heatmap_data(dc, 7, str_tokens=["a", "b", "c"])
        >>> data.str_tokens, data.values.shape
        (('a', 'b', 'c'), torch.Size([3]))
        >>> bool(torch.isclose(data.values.sum() + dict(data.others)["bias"], torch.tensor(data.total).double()))
        True
    """
    what = "token_heatmap"
    b = check_batch(dc, batch, what)
    p = resolve_pos(dc, pos, b, what)
    a = attrs_from(dc, tokens, incorrect_tokens, attrs, pos, what)[:, b]  # [component]
    if dc.group_size != dc.n_components:
        raise DePassError(
            f"{what}: this cache holds several groups of components ({dc.n_components // dc.group_size}); "
            "run with components=depass_tl.tokens() for a token heatmap."
        )
    P = dc.tokens.shape[1]
    values = torch.full((P,), math.nan, dtype=torch.float64)
    others: list[tuple[str, float]] = []
    for c, label in enumerate(dc.labels):
        m = _TOKEN_LABEL.fullmatch(label)
        if m is not None and int(m.group(1)) < P:
            values[int(m.group(1))] = a[c]
        else:
            others.append((label, float(a[c])))
    if torch.isnan(values).all():
        raise DePassError(
            f"{what}: the cache has no token components (labels tok0, tok1, ...); its labels are "
            f"{list(dc.labels)}. Run with components=depass_tl.tokens()."
        )
    strs = str_tokens_of(dc, b, str_tokens, what)
    target = describe_target(tokens, incorrect_tokens) if target is None else target
    total = float(a.sum())
    rest = " and ".join(f"{OTHER_NAMES.get(label, label)} ({v:+.4g})" for label, v in others)
    subtitle = (
        f"Each token's exact contribution when the model predicts after “{token_text(strs[p])}” (position {p}); "
        + (f"with the {rest} they add up to {total:.4g}." if rest else f"they add up to {total:.4g}.")
    )
    return TokenHeatmapData(
        str_tokens=strs, values=values, others=tuple(others), total=total, pos=p, batch=b,
        zmax=symmetric_max(values), target=target, title=f"Which tokens drive {target}", subtitle=subtitle,
    )


def token_heatmap(
    dc: DePassCache,
    tokens: Any = None,
    *,
    incorrect_tokens: Any = None,
    attrs: Tensor | None = None,
    batch: int = 0,
    pos: int = -1,
    str_tokens: Sequence[str] | None = None,
    target: str | None = None,
    wrap: int = 12,
    backend: str | None = None,
) -> Any:
    """The prompt's tokens coloured by their signed contribution to a logit or a logit difference.

    Args:
        dc: a cache from ``run_with_depass`` with token components (``depass_tl.tokens()``, the default).
        tokens: the answer token (a single-token string, an id, or one per prompt); the values are
            ``dc.logit_attrs(tokens, incorrect_tokens=..., pos=pos)``. Or give ``attrs`` instead.
        incorrect_tokens: subtract this token's logit (a logit difference).
        attrs: ``[component, batch]`` attributions you already have (e.g. from ``dc.logit_attrs``).
        batch: which prompt to draw.
        pos: the position whose logit was attributed (``-1``: the prompt's last real token); only used
            to mark it and, with ``tokens``, to compute the attributions.
        str_tokens: token strings when the cache has none (models without a tokenizer, e.g. the toy
            models: ``encoder.to_str_tokens(prompt)``); default the cache's, else ``#id``.
        target: the title's name for the quantity (default from ``tokens``/``incorrect_tokens``).
        wrap: tokens per row.
        backend: ``"plotly"`` (interactive; hover shows each value), ``"matplotlib"`` or None (plotly
            if installed, else matplotlib).

    Returns:
        A plotly or matplotlib figure; write it with :func:`depass_tl.viz.save`.

    Raises:
        DePassError: no token components, bad arguments, or no plotting library (names the install).
    """
    if isinstance(wrap, bool) or not isinstance(wrap, int) or wrap < 1:
        raise DePassError(f"token_heatmap: wrap must be a positive int, got {wrap!r}.")
    name = resolve_backend(backend)
    data = token_heatmap_data(
        dc, tokens, incorrect_tokens=incorrect_tokens, attrs=attrs, batch=batch, pos=pos,
        str_tokens=str_tokens, target=target,
    )
    return _plotly(data, wrap) if name == "plotly" else _matplotlib(data, wrap)


def _grid(data: TokenHeatmapData, wrap: int) -> tuple[list[list[float | None]], list[list[str]], list[list[str]]]:
    """Row-wrapped values (None pads the last row), cell text (token and value) and hover text."""
    P = len(data.str_tokens)
    rows = math.ceil(P / wrap)
    z: list[list[float | None]] = [[None] * wrap for _ in range(rows)]
    text = [[""] * wrap for _ in range(rows)]
    hover = [[""] * wrap for _ in range(rows)]
    for p, (s, v) in enumerate(zip(data.str_tokens, data.values.tolist())):
        r, c = divmod(p, wrap)
        z[r][c] = None if math.isnan(v) else v
        mark = "▶" if p == data.pos else ""
        text[r][c] = mark + token_text(s) + ("" if math.isnan(v) else f"\n{v:+.2f}")
        hover[r][c] = f"position {p}: {s!r}<br>{UNITS} {v:+.5g}"
    return z, text, hover


def _plotly(data: TokenHeatmapData, wrap: int) -> Any:
    import plotly.graph_objects as go

    z, text, hover = _grid(data, wrap)
    fig = go.Figure(
        go.Heatmap(
            z=z, text=[[t.replace("\n", "<br>") for t in row] for row in text], customdata=hover,
            texttemplate="%{text}", hovertemplate="%{customdata}<extra></extra>",
            colorscale=COLORSCALE, zmin=-data.zmax, zmax=data.zmax, zmid=0.0, xgap=2, ygap=2,
            colorbar=dict(title=dict(text=UNITS, side="right")),
        )
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(
        title=dict(text=f"{data.title}<br><sup>{data.subtitle}</sup>", font=dict(size=15)),
        autosize=True, height=max(240, 64 * len(z) + 130), plot_bgcolor="white", margin=dict(l=20, r=20, t=80, b=20),
    )
    return fig


def _matplotlib(data: TokenHeatmapData, wrap: int) -> Any:
    z, text, _ = _grid(data, wrap)
    grid = torch.tensor([[math.nan if v is None else v for v in row] for row in z]).numpy()
    fig = static_figure(0.58 * wrap + 1.3, 0.62 * len(z) + 1.1)
    ax = fig.subplots()
    image = ax.imshow(grid, cmap=COLORSCALE, vmin=-data.zmax, vmax=data.zmax, aspect="auto")
    for r, row in enumerate(text):
        for c, s in enumerate(row):
            if s:
                dark = z[r][c] is not None and abs(z[r][c]) > 0.6 * data.zmax  # type: ignore[arg-type]
                ax.text(c, r, s, ha="center", va="center", fontsize=FONT["cell"], color="white" if dark else "black")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(UNITS, fontsize=FONT["label"])
    bar.ax.tick_params(labelsize=FONT["cell"])
    fig.suptitle(data.title, fontsize=FONT["title"], x=0.02, ha="left")
    ax.set_title(data.subtitle, fontsize=FONT["subtitle"], loc="left", wrap=True)
    return fig
