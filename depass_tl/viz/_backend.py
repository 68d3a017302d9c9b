"""Shared plumbing of the plots: choosing a plotting library, reading attributions, saving figures.

Nothing here computes an attribution: the numbers come from a :class:`~depass_tl.cache.DePassCache`
(``logit_attrs``, its stored components and clean activations) or from tensors the caller made
from one. Plotly is the notebook backend; matplotlib draws the same data as static figures.
Neither is a dependency of depass_tl: ``pip install "depass_tl[viz]"``.
"""

from __future__ import annotations

import html
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from depass_tl.cache import DePassCache
from depass_tl.errors import DePassError
from depass_tl.positions import per_prompt_positions

__all__ = ["BACKENDS", "INSTALL_HINT", "resolve_backend", "save", "save_html_page"]

BACKENDS = ("plotly", "matplotlib")
INSTALL_HINT = 'pip install "depass_tl[viz]"'
COLORSCALE = "RdBu"  # red < 0 < blue, as in TransformerLens's tutorials
UNITS = "logit contribution"  # the colour-bar and axis label of every attribution
FONT = {"title": 10, "subtitle": 8.5, "label": 9, "cell": 8}  # matplotlib points: readable in print at 100% size
MAX_WIDTH = 7.2  # inches: the widest matplotlib figure (a two-column page's text width; documented in viz)
MAX_HEIGHT = 9.0  # inches: the tallest grid (a layer-by-head map of a big model would outgrow a page)
OTHER_NAMES = {"bias": "biases", "pos_embed": "position embeddings", "embed": "token embeddings", "rest": "the rest"}
"""Plain names of the components that are not tokens or heads (titles, legends, the explorer)."""
STATIC_SUFFIXES = (".png", ".svg", ".pdf")
PLOTLY_CONFIG = {"responsive": True, "displaylogo": False}  # figures follow their container's width


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def resolve_backend(backend: str | None, *, fallback_hint: str = "") -> str:
    """``"plotly"`` or ``"matplotlib"``: the one asked for, or (None) plotly if installed, else matplotlib.

    ``fallback_hint`` is appended when neither library is installed (where the numbers are without one).

    Raises:
        DePassError: an unknown backend, or the library is not installed (names the install).
    """
    if backend is not None and backend not in BACKENDS:
        raise DePassError(f"backend must be 'plotly', 'matplotlib' or None (auto); got {backend!r}.")
    for name in BACKENDS if backend is None else (backend,):
        if _installed(name):
            return name
    if backend is None:
        raise DePassError(
            f"plots need plotly (interactive) or matplotlib (static), and neither is installed; run `{INSTALL_HINT}`."
            + (f" {fallback_hint}" if fallback_hint else "")
        )
    raise DePassError(f"backend={backend!r} is not installed; run `{INSTALL_HINT}` (or `pip install {backend}`).")


def static_figure(width: float, height: float) -> Any:
    """A matplotlib figure (constrained layout) ``width`` inches wide, capped at :data:`MAX_WIDTH`."""
    from matplotlib.figure import Figure

    return Figure(figsize=(min(MAX_WIDTH, width), height), layout="constrained")


# ------------------------------------------------------------------------------- attributions
def attrs_from(
    dc: DePassCache,
    tokens: Any,
    incorrect_tokens: Any,
    attrs: Tensor | None,
    pos: int,
    what: str,
) -> Tensor:
    """``[component, batch]`` float64 on the CPU: ``attrs`` as given, or ``dc.logit_attrs(...)``."""
    if not isinstance(dc, DePassCache):
        raise DePassError(f"{what}: expected a DePassCache (from run_with_depass), got {type(dc).__name__}.")
    if (tokens is None) == (attrs is None):
        raise DePassError(
            f"{what}: give exactly one of tokens=... (the answer token; the cache computes the attributions) "
            "or attrs=... (a [component, batch] tensor such as dc.logit_attrs(...))."
        )
    if attrs is None:
        return dc.logit_attrs(tokens, incorrect_tokens=incorrect_tokens, pos=pos).detach().double().cpu()
    if incorrect_tokens is not None:
        raise DePassError(f"{what}: incorrect_tokens= only applies with tokens=; attrs= is used as given.")
    if not isinstance(attrs, Tensor):
        raise DePassError(f"{what}: attrs must be a torch.Tensor [component, batch], got {type(attrs).__name__}.")
    a = attrs.detach().double().cpu()
    if a.ndim == 1:
        a = a[:, None]
    B = dc.tokens.shape[0]
    if a.ndim != 2 or a.shape != (dc.n_components, B):
        raise DePassError(
            f"{what}: attrs must have shape [component, batch] = [{dc.n_components}, {B}] to match this cache's "
            f"labels; got {tuple(attrs.shape)}."
        )
    return a


def check_batch(dc: DePassCache, batch: int, what: str) -> int:
    B = dc.tokens.shape[0]
    if isinstance(batch, bool) or not isinstance(batch, int) or not -B <= batch < B:
        raise DePassError(f"{what}: batch must be an int in [0, {B}) for this cache; got {batch!r}.")
    return batch % B


def resolve_pos(dc: DePassCache, pos: int, batch: int, what: str) -> int:
    """The column ``pos`` means for prompt ``batch``, as ``logit_attrs`` reads it (negative: counted back
    from its last real token; :mod:`depass_tl.positions`), so a plot's labels and numbers agree."""
    if isinstance(pos, Tensor):
        raise DePassError(f"{what}: pos must be an int; got a tensor.")
    last = dc.last_positions[batch : batch + 1]  # only the plotted prompt's length limits it
    return int(per_prompt_positions(pos, last, dc.tokens.shape[1], f"{what}: pos")[0])


def str_tokens_of(dc: DePassCache, batch: int, str_tokens: Sequence[str] | None, what: str) -> tuple[str, ...]:
    """Token strings of prompt ``batch``: given, the cache's, or (no tokenizer) ``#id`` labels."""
    P = dc.tokens.shape[1]
    if str_tokens is not None:
        if isinstance(str_tokens, str) or len(str_tokens) != P:
            raise DePassError(
                f"{what}: str_tokens must be a list of {P} strings (one per position, e.g. "
                f"encoder.to_str_tokens(prompt)); got {str_tokens!r}."
            )
        return tuple(str(s) for s in str_tokens)
    if dc.str_tokens is not None:
        return tuple(dc.str_tokens[batch])
    return tuple(f"#{int(t)}" for t in dc.tokens[batch])


def token_text(s: str) -> str:
    """A token as a reader sees it: its text without surrounding spaces (``repr`` when only spaces)."""
    t = s.strip()
    return t if t else repr(s)


def describe_target(tokens: Any, incorrect_tokens: Any) -> str:
    """``logit(“Mary”) − logit(“John”)`` for titles (token ids as ``#id``)."""

    def one(t: Any) -> str:
        if isinstance(t, str):
            return f"“{token_text(t)}”"
        if isinstance(t, Tensor) and t.numel() == 1:
            return f"#{int(t)}"
        if isinstance(t, int):
            return f"#{t}"
        return "each prompt's answer" if incorrect_tokens is None or t is tokens else "its contrast"

    text = f"logit({one(tokens)})"
    return text if incorrect_tokens is None else f"{text} − logit({one(incorrect_tokens)})"


def symmetric_max(values: Tensor) -> float:
    """``max |value|`` over the finite entries (the colour range is ``[-m, m]``); 1.0 if all are 0."""
    finite = values[torch.isfinite(values)]
    m = float(finite.abs().max()) if finite.numel() else 0.0
    return m if m > 0 else 1.0


# ------------------------------------------------------------------------------------ saving
def _is_plotly(fig: Any) -> bool:
    return type(fig).__module__.startswith("plotly")


def _is_matplotlib(fig: Any) -> bool:
    return type(fig).__module__.startswith("matplotlib")


def check_path(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise DePassError(f"cannot tell the format of {str(p)!r}: the file name must end in one of {list(suffixes)}.")
    if not p.parent.is_dir():
        raise DePassError(f"cannot write {str(p)!r}: the folder {str(p.parent)!r} does not exist; create it first.")
    return p


def save(fig: Any, path: str | Path, *, scale: float = 2.0) -> Path:
    """Write a figure from :mod:`depass_tl.viz` to ``.html`` (interactive) or ``.png``/``.svg``/``.pdf``.

    HTML needs a plotly figure and embeds plotly.js, so the file opens offline. Static files from a
    matplotlib figure need nothing more. Static files from a plotly figure need plotly's exporter,
    kaleido: ``kaleido==0.2.1`` (with ``plotly<7``) bundles its renderer and works offline;
    ``kaleido>=1`` needs a Chrome install (``plotly_get_chrome``). Without one, draw the figure with
    ``backend="matplotlib"``.

    Args:
        fig: a plotly or matplotlib figure (what the plot functions return).
        path: the file to write; its suffix picks the format.
        scale: resolution factor for static output (plotly ``scale``; matplotlib ``dpi = 100 * scale``).

    Returns:
        The path written.

    Raises:
        DePassError: an unknown suffix, a missing folder, HTML from a matplotlib figure, or a static
            export plotly cannot do here (the message says which exporter to install).
    """
    p = check_path(path, (".html",) + STATIC_SUFFIXES)
    if not (_is_plotly(fig) or _is_matplotlib(fig)):
        raise DePassError(f"save() takes a plotly or matplotlib figure, got {type(fig).__name__}.")
    if p.suffix.lower() == ".html":
        if not _is_plotly(fig):
            raise DePassError(
                "HTML output needs an interactive plotly figure; draw it with backend='plotly', "
                f"or save this matplotlib figure as {list(STATIC_SUFFIXES)}."
            )
        fig.write_html(str(p), include_plotlyjs=True, full_html=True, config=PLOTLY_CONFIG, default_width="100%")
        return p
    if _is_matplotlib(fig):
        fig.savefig(str(p), dpi=100 * scale, bbox_inches="tight")
        return p
    try:
        fig.write_image(str(p), scale=scale)
    except Exception as e:  # plotly raises ValueError/RuntimeError/... depending on the kaleido version
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DePassError(
            f"plotly could not write {p.suffix} ({type(e).__name__}: {first}). Static export of plotly figures "
            "needs kaleido: `pip install kaleido==0.2.1 \"plotly<7\"` works offline, kaleido>=1 needs Chrome "
            "(`plotly_get_chrome`). Or draw the figure with backend='matplotlib', which saves "
            f"{'/'.join(STATIC_SUFFIXES)} with nothing else installed."
        ) from e
    return p


def save_html_page(figures: Mapping[str, Any], path: str | Path, *, title: str = "depass_tl") -> Path:
    """Write several plotly figures into one self-contained HTML page (plotly.js embedded once).

    Args:
        figures: heading -> plotly figure, in page order.
        path: an ``.html`` file.
        title: the page title.

    Returns:
        The path written.
    """
    p = check_path(path, (".html",))
    if not figures:
        raise DePassError("save_html_page() got no figures.")
    bad = [name for name, fig in figures.items() if not _is_plotly(fig)]
    if bad:
        raise DePassError(f"save_html_page() needs plotly figures (backend='plotly'); not plotly: {bad}.")
    parts = []
    for i, (name, fig) in enumerate(figures.items()):
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0), config=PLOTLY_CONFIG, default_width="100%")
        parts.append(f"<h2>{html.escape(name)}</h2>\n{div}")
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
        f"<body><h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    p.write_text(page, encoding="utf-8")
    return p
