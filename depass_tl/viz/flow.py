"""Flow: how the top components' share of the answer direction builds up, layer by layer.

**What is plotted, and why this quantity.** A :class:`~depass_tl.cache.DePassCache` stores, at every
residual-stream hook (``blocks.{l}.hook_resid_pre|mid|post``), each component's exact share
``x_c`` of the clean residual ``x = Σ_c x_c`` at the chosen position. The left panel shows, for the
top-k components, the **raw residual projection** ``x_c · d`` with ``d = W_U[:, answer]`` (minus
``W_U[:, incorrect]`` for a logit difference), the unembedding columns the cache holds. These values
are an exact decomposition of ``x · d`` (drawn as "total"), but they are *not* logits: the final
norm (its centring, weight and frozen scale) is not applied, because its scale belongs to the last
layer and applying it to earlier layers would be a logit-lens estimate, not a quantity of the run.
Their units are residual-stream units and differ between models with and without folded norms;
compare their shape across layers, not their size with the right panel.

The right panel shows each component's exact **logit attribution** (``DePassCache.logit_attrs``):
the same projection taken after the final norm (``unembed.hook_in``) plus ``b_U`` in ``bias``. It
sums to the clean logit (difference). Top-k is chosen by |logit attribution|; everything else is
summed into "other", so top-k + other + bias = total in both panels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from depass_tl.cache import DePassCache
from depass_tl.errors import DePassError
from depass_tl.viz._backend import (
    FONT, MAX_WIDTH, OTHER_NAMES, UNITS, attrs_from, check_batch, describe_target, resolve_backend, resolve_pos,
    static_figure, str_tokens_of, token_text,
)

__all__ = ["FlowData", "flow", "flow_data", "plain_hook_labels", "residual_hooks"]

_TOKEN_LABEL = re.compile(r"tok(\d+)")
_RESID = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|mid|post)")
_STAGE = {"pre": 0, "mid": 1, "post": 2}


def residual_hooks(dc: DePassCache) -> list[str]:
    """The cache's residual-stream hooks in forward order, without ``resid_pre`` of layer l > 0 when
    ``resid_post`` of layer l − 1 (the same tensor) is also stored."""
    found = []
    for name in dc:
        m = _RESID.fullmatch(name)
        if m is not None:
            found.append((int(m.group(1)), _STAGE[m.group(2)], name))
    names = {n for _, _, n in found}
    keep = [
        (l, s, n) for l, s, n in found
        if not (s == 0 and l > 0 and f"blocks.{l - 1}.hook_resid_post" in names)
    ]
    return [n for _, _, n in sorted(keep)]


def plain_hook_labels(dc: DePassCache, hooks: Sequence[str]) -> tuple[str, ...]:
    """Short plain names of residual-stream hooks, for axes: where in the network the stream is read.

    ``embeddings`` (``blocks.0.hook_resid_pre``), ``L{l} attn`` (after layer l's attention:
    ``hook_resid_mid``), ``L{l} MLP`` (after its MLP: ``hook_resid_post``); ``L{l} attn+MLP`` for
    parallel blocks, ``L{l} attn`` for attention-only ones, ``before L{l}`` / ``after L{l}`` otherwise.
    """
    labels = []
    for hook in hooks:
        m = _RESID.fullmatch(hook)
        if m is None:
            raise DePassError(f"{hook!r} is not a residual-stream hook (blocks.{{l}}.hook_resid_pre|mid|post).")
        l, stage = int(m.group(1)), m.group(2)
        p = f"blocks.{l}."
        if stage == "pre":
            labels.append("embeddings" if l == 0 else f"before L{l}")
        elif stage == "mid":
            labels.append(f"L{l} attn")
        elif p + "hook_resid_mid" in dc:
            labels.append(f"L{l} MLP")
        elif p + "hook_mlp_out" in dc:
            labels.append(f"L{l} attn+MLP")
        elif p + "hook_attn_out" in dc:
            labels.append(f"L{l} attn")
        else:
            labels.append(f"after L{l}")
    return tuple(labels)


@dataclass(frozen=True)
class FlowData:
    """What a flow plot shows (plain data).

    Attributes:
        hooks: the residual-stream hooks, in forward order; hook_labels: short names (``L0 pre``).
        series: the lines, in order: the top-k component labels, then ``other (n)``, then ``bias``.
        display: the legend text of each series (:func:`display_label`: ``“Mary” (pos 2)``, ``biases``).
        projection: ``[series, hook]`` float64: ``x_c · d`` at each hook (residual units, not logits).
        total_projection: ``[hook]``: the clean residual's ``x · d`` (= the column sums of ``projection``).
        logit_attrs: ``[series]``: the exact logit attribution of each series.
        total: the clean logit (difference) = ``logit_attrs.sum()``.
        pos: the position read (absolute); batch: the prompt.
        target: e.g. ``logit(“Mary”) − logit(“John”)``; title, subtitle: the figure's headings.
    """

    hooks: tuple[str, ...]
    hook_labels: tuple[str, ...]
    series: tuple[str, ...]
    display: tuple[str, ...]
    projection: Tensor = field(repr=False)
    total_projection: Tensor = field(repr=False)
    logit_attrs: Tensor = field(repr=False)
    total: float
    pos: int
    batch: int
    target: str
    title: str
    subtitle: str


def display_label(label: str, str_tokens: Sequence[str]) -> str:
    """A component label for readers: ``“Mary” (pos 2)`` for ``tok2``, ``L2 MLP`` for ``L2.mlp``,
    ``biases`` for ``bias``, ``the other 9`` for ``other (9)``; head labels (``L2H2``) as they are."""
    m = _TOKEN_LABEL.fullmatch(label)
    if m is not None and int(m.group(1)) < len(str_tokens):
        return f"“{token_text(str_tokens[int(m.group(1))])}” (pos {m.group(1)})"
    m = re.fullmatch(r"other \((\d+)\)", label)
    if m is not None:
        return f"the other {m.group(1)}"
    m = re.fullmatch(r"L(\d+)\.(mlp|attn)", label)
    if m is not None:
        return f"L{m.group(1)} {m.group(2).upper() if m.group(2) == 'mlp' else 'attention'}"
    return OTHER_NAMES.get(label, label)


def _direction(dc: DePassCache, tokens: Any, incorrect_tokens: Any, batch: int) -> Tensor:
    """``W_U[:, answer] − W_U[:, incorrect]`` for prompt ``batch``, from the cache's unembedding: ``[d_model]``."""
    return dc.unembed_direction(tokens, incorrect_tokens=incorrect_tokens)[:, batch].double().cpu()


def flow_data(
    dc: DePassCache,
    tokens: Any,
    *,
    incorrect_tokens: Any = None,
    top_k: int = 5,
    batch: int = 0,
    pos: int = -1,
    str_tokens: Sequence[str] | None = None,
    target: str | None = None,
) -> FlowData:
    """The data of :func:`flow` (see there for the arguments).

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3, 4]]))
        >>> data = flow_data(dc, 5, top_k=2)
        >>> data.hook_labels
        ('embeddings', 'L0 attn', 'L0 MLP', 'L1 attn', 'L1 MLP')
        >>> data.series[-2:], len(data.series)
        (('other (2)', 'bias'), 4)
        >>> bool(torch.allclose(data.projection.sum(0), data.total_projection, atol=1e-4))
        True
    """
    what = "flow"
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise DePassError(f"{what}: top_k must be a positive int, got {top_k!r}.")
    if tokens is None:
        raise DePassError(f"{what}: give tokens=... (the answer token whose unembedding direction is followed).")
    b = check_batch(dc, batch, what)
    p = resolve_pos(dc, pos, b, what)
    if dc.group_size != dc.n_components:
        raise DePassError(
            f"{what}: this cache holds {dc.n_components // dc.group_size} groups of components (e.g. heads() over "
            "several layers), each a separate split of the stream; follow one split: heads(layer), modules(layer), "
            "tokens() or sources()."
        )
    hooks = residual_hooks(dc)
    if not hooks:
        raise DePassError(
            f"{what}: the cache stores no residual-stream hook (it has {list(dc)}); run without names_filter, or "
            "keep blocks.{l}.hook_resid_post."
        )
    logit = attrs_from(dc, tokens, incorrect_tokens, None, pos, what)[:, b]  # [component]
    d = _direction(dc, tokens, incorrect_tokens, b)
    proj = torch.stack([dc[h][:, b, p].double().cpu() @ d for h in hooks], dim=1)  # [component, hook]
    clean = torch.stack([dc.clean[h][b, p].double().cpu() @ d for h in hooks])  # [hook]

    bias = dc.n_components - 1  # single group: the bias component is last
    candidates = [c for c in range(dc.n_components) if c != bias]
    order = sorted(candidates, key=lambda c: -abs(float(logit[c])))
    top, rest = order[:top_k], order[top_k:]
    rows_proj = [proj[c] for c in top]
    rows_logit = [logit[c] for c in top]
    series = [dc.labels[c] for c in top]
    if rest:
        rows_proj.append(proj[rest].sum(0))
        rows_logit.append(logit[rest].sum())
        series.append(f"other ({len(rest)})")
    rows_proj.append(proj[bias])
    rows_logit.append(logit[bias])
    series.append(dc.labels[bias])
    strs = str_tokens_of(dc, b, str_tokens, what)
    display = [display_label(label, strs) for label in series]
    target = describe_target(tokens, incorrect_tokens) if target is None else target
    total = float(logit.sum())
    return FlowData(
        hooks=tuple(hooks),
        hook_labels=plain_hook_labels(dc, hooks),
        series=tuple(series),
        display=tuple(display),
        projection=torch.stack(rows_proj),
        total_projection=clean,
        logit_attrs=torch.stack(rows_logit),
        total=total,
        pos=p,
        batch=b,
        target=target,
        title=f"How the top contributors to {target} build up through the layers",
        subtitle=(f"Left: each one's share of the residual stream at “{token_text(strs[p])}” (position {p}), read "
                  "along the answer's unembedding direction (not yet a logit: the final layer norm comes after). "
                  f"Right: its exact logit contribution; all add up to {total:.4g}."),
    )


def flow(
    dc: DePassCache,
    tokens: Any,
    *,
    incorrect_tokens: Any = None,
    top_k: int = 5,
    batch: int = 0,
    pos: int = -1,
    str_tokens: Sequence[str] | None = None,
    target: str | None = None,
    backend: str | None = None,
) -> Any:
    """Layer-by-layer projection of the top components onto the answer direction, next to their logit attribution.

    See the module docstring for exactly what is drawn (a raw residual projection, not a logit lens).

    Args:
        dc: a single-split cache (``tokens()``, ``sources()``, ``heads(layer)``, ``modules(layer)``, ...).
        tokens: the answer token (single-token string or id, or one per prompt).
        incorrect_tokens: for a logit difference.
        top_k: how many components to draw (by |logit attribution|); the others are summed.
        batch, pos, str_tokens, target, backend: as in :func:`depass_tl.viz.token_heatmap` (``str_tokens``
            only names token components in the legend).

    Returns:
        A plotly or matplotlib figure.

    Raises:
        DePassError: a multi-group cache, no residual hooks stored, bad arguments, or no plotting library.
    """
    name = resolve_backend(backend)
    data = flow_data(dc, tokens, incorrect_tokens=incorrect_tokens, top_k=top_k, batch=batch, pos=pos,
                     str_tokens=str_tokens, target=target)
    return _plotly(data) if name == "plotly" else _matplotlib(data)


_X_TITLE = "residual stream after"
_Y_TITLE = "projection on the answer direction"


def _plotly(data: FlowData) -> Any:
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    palette = qualitative.Plotly
    fig = make_subplots(rows=1, cols=2, column_widths=[0.64, 0.36], horizontal_spacing=0.16,
                        subplot_titles=["share of the residual stream", UNITS])
    x = list(data.hook_labels)
    for i, label in enumerate(data.display):
        color = palette[i % len(palette)]
        fig.add_trace(
            go.Scatter(x=x, y=data.projection[i].tolist(), mode="lines+markers", name=label, legendgroup=label,
                       line=dict(color=color), hovertemplate=f"{label}<br>%{{x}}: %{{y:+.5g}}<extra></extra>"),
            row=1, col=1,
        )
    fig.add_trace(
        go.Scatter(x=x, y=data.total_projection.tolist(), mode="lines", name="whole stream",
                   line=dict(color="black", dash="dash"),
                   hovertemplate="whole stream<br>%{x}: %{y:+.5g}<extra></extra>"),
        row=1, col=1,
    )
    fig.add_trace(
        go.Bar(x=data.logit_attrs.tolist(), y=list(data.display), orientation="h", showlegend=False,
               marker=dict(color=[palette[i % len(palette)] for i in range(len(data.series))]),
               hovertemplate=f"%{{y}}: %{{x:+.5g}} ({UNITS})<extra></extra>"),
        row=1, col=2,
    )
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(title_text=_X_TITLE, row=1, col=1)
    fig.update_yaxes(title_text=_Y_TITLE, row=1, col=1)
    fig.update_xaxes(title_text=f"{UNITS} (sum {data.total:.4g})", zeroline=True, row=1, col=2)
    fig.add_hline(y=0, line=dict(color="grey", width=1), row=1, col=1)
    fig.update_layout(
        title=dict(text=f"{data.title}<br><sup>{data.subtitle}</sup>", font=dict(size=15)),
        autosize=True, height=500, margin=dict(t=110), legend=dict(orientation="h", y=-0.25),
    )
    return fig


def _matplotlib(data: FlowData) -> Any:
    fig = static_figure(MAX_WIDTH, 3.9)
    left, right = fig.subplots(1, 2, width_ratios=[1.7, 1.0])
    x = range(len(data.hooks))
    colors = [f"C{i % 10}" for i in range(len(data.series))]
    for i, label in enumerate(data.display):
        left.plot(x, data.projection[i].numpy(), marker="o", markersize=3, color=colors[i], label=label)
    left.plot(x, data.total_projection.numpy(), color="black", linestyle="--", label="whole stream")
    left.axhline(0, color="grey", linewidth=0.8)
    left.set_xticks(list(x), list(data.hook_labels), rotation=45, ha="right", fontsize=FONT["cell"])
    left.tick_params(axis="y", labelsize=FONT["cell"])
    left.set_xlabel(_X_TITLE, fontsize=FONT["label"])
    left.set_ylabel(_Y_TITLE, fontsize=FONT["label"])
    left.legend(fontsize=FONT["cell"] - 1, frameon=False)
    right.barh(range(len(data.series)), data.logit_attrs.numpy(), color=colors)
    right.set_yticks(range(len(data.series)), list(data.display), fontsize=FONT["cell"])
    right.tick_params(axis="x", labelsize=FONT["cell"])
    right.invert_yaxis()
    right.axvline(0, color="grey", linewidth=0.8)
    right.set_xlabel(f"{UNITS} (sum {data.total:.4g})", fontsize=FONT["label"])
    fig.suptitle(data.title, fontsize=FONT["title"], x=0.01, ha="left")
    left.set_title(data.subtitle, fontsize=FONT["subtitle"], loc="left", wrap=True)
    return fig
