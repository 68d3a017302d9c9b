"""The explorer: one self-contained interactive HTML page of a prompt's attributions.

Data flows one way: :func:`depass_tl.capture` runs the model once; :func:`explorer_caches` replays
that one run once per MLP rule (token components, every layer's heads, and each layer's heads split
by the position they read from); :func:`explorer_data` reads the caches into a plain JSON-able
``dict`` (every number is a cache's number, rounded to 6 decimals); :func:`save_explorer` writes it
into the page template (:mod:`depass_tl.viz._explorer_page`: inline CSS, vanilla JavaScript and SVG;
no plotting library, no network). In the page one clicks a token to follow its contribution through
the layers, clicks a head to see which positions its contribution comes from, and switches the
answer, the contrast (among the model's top predictions) and the MLP rule.

Logit attributions are linear in the unembedding column, so the data holds them per candidate token
and the page shows ``target − contrast`` by subtraction, which equals
``DePassCache.logit_attrs(target, incorrect_tokens=contrast)``.

Examples:
    >>> import torch, depass_tl
    >>> from depass_tl import viz
    >>> from depass_tl.toy import random_model
    >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
    ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
    >>> model = random_model(**cfg)
    >>> run = depass_tl.capture(model, torch.tensor([[1, 2, 3]]), extra_hooks=viz.explorer_hooks(2))
    >>> caches = viz.explorer_caches(run, progress=False)
    >>> data = viz.explorer_data(caches, target=5, contrast=7, top_k=3)
    >>> data["rules"], data["candidates"][0]["id"], len(data["by_rule"]["ratio"]["tokens"][0])
    (['softmax', 'ratio', 'max', 'taylor'], 5, 3)
    >>> data["linear_rules"]  # their parts add up exactly (the page says so)
    ['ratio', 'taylor']
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import depass_tl
from depass_tl.cache import DePassCache
from depass_tl.coefficients import FrozenRun
from depass_tl.errors import DePassError
from depass_tl.replay.rules import get_rule, rule_names
from depass_tl.viz._backend import check_batch, check_path, str_tokens_of
from depass_tl.viz._head_sources import head_source_hooks, head_source_spec, source_label
from depass_tl.viz.flow import plain_hook_labels, residual_hooks

__all__ = ["ExplorerCaches", "RuleCaches", "explorer_caches", "explorer_data", "explorer_hooks", "explorer_html",
           "save_explorer"]

_TOKEN_LABEL = re.compile(r"tok(\d+)")
_HEAD_LABEL = re.compile(r"L(\d+)H(\d+)")
_DECIMALS = 6  # the numbers are stored rounded to this many decimals (the page prints at most 4)
OTHER_NAMES = {"bias": "constant terms (biases)", "pos_embed": "position embeddings"}


@dataclass(frozen=True)
class RuleCaches:
    """The replays of one MLP rule.

    Attributes:
        tokens: ``depass_tl.tokens()`` (every residual hook stored).
        heads: ``depass_tl.heads()`` over every layer (one group per layer).
        head_sources: per layer, its heads split by the position they read from (labels
            ``L{l}H{h}.src{s}``, ``L{l}H{h}.earlier``, ``rest``, ``bias``; :mod:`depass_tl.viz._head_sources`).
    """

    tokens: DePassCache
    heads: DePassCache
    head_sources: tuple[DePassCache, ...]


@dataclass(frozen=True)
class ExplorerCaches:
    """What :func:`explorer_data` reads: one :class:`RuleCaches` per rule, all from one capture.

    Attributes:
        rules: rule name -> its caches, in the order given.
        attention: ``[batch, n_layers, n_heads, pos]``: each head's attention from each prompt's last
            real position (the captured pattern).
        temperature: the ``softmax`` rule's temperature.
        structure: what the page's words depend on: ``mlp`` (the model has MLPs; without them every
            rule gives the same numbers), ``norms`` (it has norm layers, whose scales are frozen) and
            ``final_norm`` (a norm before the unembedding).
    """

    rules: Mapping[str, RuleCaches]
    attention: Tensor = field(repr=False)
    temperature: float
    structure: Mapping[str, bool]


def explorer_hooks(n_layers: int) -> set[str]:
    """The hooks beyond the standard capture the explorer needs: pass them as ``capture(..., extra_hooks=...)``."""
    return depass_tl.heads().required_hooks(n_layers) | head_source_hooks(n_layers)


def explorer_caches(
    run: FrozenRun,
    *,
    rules: Sequence[str] | None = None,
    temperature: float = 0.1,
    to_single_token: Callable[[str], int] | None = None,
    progress: bool | None = None,
) -> ExplorerCaches:
    """Replay one captured run once per MLP rule: tokens, heads, and heads split by source position.

    Args:
        run: from ``depass_tl.capture(model, input, extra_hooks=explorer_hooks(model.cfg.n_layers))``.
        rules: the MLP rules to compute (the page toggles among them); default: every registered rule.
        temperature: the ``softmax`` rule's temperature.
        to_single_token: passed to the caches (string lookups in ``logit_attrs``).
        progress: show a progress bar (None: only on a terminal).

    Returns:
        An :class:`ExplorerCaches`.

    Raises:
        DePassError: an unknown or repeated rule, or a run captured without :func:`explorer_hooks`.
    """
    from tqdm.auto import tqdm

    known = rule_names()
    rules = known if rules is None else tuple(rules)
    bad = [r for r in rules if r not in known]
    if not rules or bad or len(set(rules)) != len(rules):
        raise DePassError(f"rules must be distinct names from {list(known)}; got {list(rules)}.")
    if not isinstance(run, FrozenRun):
        raise DePassError(f"explorer_caches() takes a FrozenRun from depass_tl.capture, got {type(run).__name__}.")
    n_layers = run.view.n_layers
    missing = sorted(h for h in explorer_hooks(n_layers) if h not in run.acts)
    if missing:
        raise DePassError(
            f"the run was captured without {missing[:3]}{' ...' if len(missing) > 3 else ''}; capture with "
            "extra_hooks=depass_tl.viz.explorer_hooks(model.cfg.n_layers)."
        )
    dtype = torch.float64 if run.view.dtype == torch.float64 else torch.float32
    kw: dict[str, Any] = dict(temperature=temperature, to_single_token=to_single_token)
    out = {}
    bar = tqdm(total=len(rules) * (2 + n_layers), desc="explorer replays", leave=False,
               disable=None if progress is None else not progress)
    first = depass_tl.replay(run, depass_tl.tokens(), mlp_rule=rules[0], **kw)
    specs = [head_source_spec(run, l, first.last_positions, dtype) for l in range(n_layers)]
    for rule in rules:
        tokens = first if rule == rules[0] else depass_tl.replay(run, depass_tl.tokens(), mlp_rule=rule, **kw)
        heads = depass_tl.replay(run, depass_tl.heads(), mlp_rule=rule, names_filter=[], **kw)
        bar.update(2)
        sources = []
        for spec in specs:
            sources.append(depass_tl.replay(run, spec, mlp_rule=rule, names_filter=[], **kw))
            bar.update(1)
        out[rule] = RuleCaches(tokens, heads, tuple(sources))
    bar.close()
    last = tokens.last_positions.to(run.tokens.device)
    rows = torch.arange(run.batch, device=last.device)
    attention = torch.stack(
        [run.acts[f"blocks.{l}.attn.hook_pattern"][rows, :, last, : run.n_pos] for l in range(n_layers)], dim=1
    )
    return ExplorerCaches(rules=out, attention=attention.detach().double().cpu(), temperature=float(temperature),
                          structure=_structure(run.view))


def _structure(view: Any) -> dict[str, bool]:
    """:attr:`ExplorerCaches.structure` of a model view."""
    norms = [view.ln_final] + [n for b in view.blocks for n in (b.ln1, b.ln2, b.ln1_post, b.ln2_post,
                                                                getattr(b.mlp, "ln", None)) if n is not None]
    return {"mlp": not view.attn_only, "norms": any(n.kind != "none" for n in norms),
            "final_norm": view.ln_final.kind != "none"}


# ------------------------------------------------------------------------------------- the data
def _r(v: float) -> float | None:
    """A JSON number rounded to ``_DECIMALS`` decimals (None for NaN)."""
    return None if math.isnan(v) else round(float(v), _DECIMALS) + 0.0


def _rows(t: Tensor) -> list[Any]:
    """A nested list of rounded numbers."""
    if t.ndim == 0:
        return _r(float(t))  # type: ignore[return-value]
    return [_rows(x) for x in t]


def _token_columns(dc: DePassCache, n_pos: int) -> tuple[list[int | None], list[int]]:
    """Per position the component index of ``tok{p}`` (None when absent), and the other components."""
    at: list[int | None] = [None] * n_pos
    others = []
    for c, label in enumerate(dc.labels):
        m = _TOKEN_LABEL.fullmatch(label)
        if m is not None and int(m.group(1)) < n_pos:
            at[int(m.group(1))] = c
        else:
            others.append(c)
    return at, others


def _head_layout(dc: DePassCache, n_layers: int, n_heads: int) -> tuple[list[list[int]], list[list[int]]]:
    """``[layer][head]`` component indices of the heads, and per layer the other members of its group."""
    index = [[-1] * n_heads for _ in range(n_layers)]
    rest: list[list[int]] = [[] for _ in range(n_layers)]
    K = dc.group_size
    for c, label in enumerate(dc.labels):
        m = _HEAD_LABEL.fullmatch(label)
        if m is not None:
            index[int(m.group(1))][int(m.group(2))] = c
        else:
            rest[c // K].append(c)
    assert all(i >= 0 for row in index for i in row), "heads() over every layer has every head"
    return index, rest


def _candidates(dc: DePassCache, b: int, target: int, contrast: int | None, top_k: int,
                decode: Callable[[int], str] | None) -> list[dict[str, Any]]:
    logits = dc.clean_last_logits[b].detach().double().cpu()
    d_vocab = logits.shape[0]
    for name, t in (("target", target), ("contrast", contrast)):
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < d_vocab):
            raise DePassError(
                f"explorer_data: {name} must be a token id in [0, {d_vocab}) (e.g. model.to_single_token(' Mary')); "
                f"got {t!r}."
            )
    if contrast is not None and contrast == target:
        raise DePassError("explorer_data: contrast is the target itself; pick another token or None.")
    order = torch.argsort(logits, descending=True)
    rank = {int(t): r + 1 for r, t in enumerate(order[: max(top_k, 1) * 4].tolist())}
    ids = [target] + ([] if contrast is None else [contrast])
    ids += [int(t) for t in order[:top_k].tolist() if int(t) not in ids]
    probs = None if dc.logits_soft_capped else torch.softmax(logits, -1)
    return [
        {
            "id": i,
            "text": decode(i) if decode is not None else f"#{i}",
            "logit": _r(float(logits[i])),
            "prob": None if probs is None else _r(float(probs[i])),
            "rank": rank.get(i, int((logits > logits[i]).sum()) + 1),
        }
        for i in ids
    ]


def explorer_data(
    caches: ExplorerCaches,
    *,
    target: int,
    contrast: int | None = None,
    top_k: int = 5,
    decode: Callable[[int], str] | None = None,
    str_tokens: Sequence[str] | None = None,
    batch: int = 0,
    rule: str | None = None,
    prompt: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The page data: a plain JSON-able ``dict`` of numbers read from the caches.

    The candidates are ``target``, ``contrast`` and the model's ``top_k`` predictions at the prompt's
    last real position; for each rule and candidate ``k`` (``text`` = ``decode(id)``):

    * ``tokens[k][p]`` = ``rule.tokens.logit_attrs(id_k)[tok{p}]`` and ``token_others`` the other
      components (``bias``, ``pos_embed``);
    * ``token_proj[k][p][j]`` = the ``tok{p}`` component at residual hook ``hooks[j]`` and the last
      position, projected on ``W_U[:, id_k]`` (``clean_proj[k][j]``: the clean residual's projection);
    * ``heads[k][l][h]`` = ``rule.heads.logit_attrs(id_k)[L{l}H{h}]``, ``heads_rest[k][l]`` the rest of
      layer ``l``'s group (``L{l}.rest`` + ``L{l}.bias``);
    * ``sources[k][l][h][s]`` = ``rule.head_sources[l].logit_attrs(id_k)[L{l}H{h}.src{s}]`` (what head
      ``h`` writes at the predicting position from reading position ``s``), ``sources_earlier[k][l][h]``
      its ``L{l}H{h}.earlier`` (what it writes at earlier positions) and ``sources_rest[k][l]`` the
      ``rest`` + ``bias``.

    Every value is rounded to 6 decimals; ``null`` marks a position without a token component.
    ``structure`` is :attr:`ExplorerCaches.structure`: the page words its notes by it (no MLPs, no
    final norm).

    Args:
        caches: from :func:`explorer_caches`.
        target: the answer token id shown first.
        contrast: a token id whose logit is subtracted by default (None: a single logit).
        top_k: how many of the model's top predictions to offer as answers and contrasts.
        decode: token id -> its string (default ``#id``).
        str_tokens: the prompt's token strings (default the caches', else ``#id``).
        batch: which prompt of the run.
        rule: the rule shown first (default the first one).
        prompt, model: shown in the page header.

    Raises:
        DePassError: bad ids, batch, rule or ``top_k``.
    """
    if not isinstance(caches, ExplorerCaches):
        raise DePassError(f"explorer_data() takes ExplorerCaches from explorer_caches(), got {type(caches).__name__}.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise DePassError(f"explorer_data: top_k must be a positive int, got {top_k!r}.")
    rules = list(caches.rules)
    rule = rules[0] if rule is None else rule
    if rule not in caches.rules:
        raise DePassError(f"explorer_data: rule {rule!r} was not computed; the caches hold {rules}.")
    first = caches.rules[rules[0]].tokens
    b = check_batch(first, batch, "explorer_data")
    pos = int(first.last_positions[b])
    n_pos = first.tokens.shape[1]
    n_layers, n_heads = caches.attention.shape[1:3]
    cands = _candidates(first, b, target, contrast, top_k, decode)
    ids = [c["id"] for c in cands]
    hooks = residual_hooks(first)
    directions = torch.stack([first.unembed_direction(i)[:, b] for i in ids]).double().cpu()  # [K, d_model]
    clean_proj = torch.stack([first.clean[h][b, pos].double().cpu() for h in hooks], 1)  # [d_model, J]
    by_rule = {}
    for name, rc in caches.rules.items():
        at, others = _token_columns(rc.tokens, n_pos)
        logit = torch.stack([rc.tokens.logit_attrs(i)[:, b] for i in ids]).double().cpu()  # [K, C]
        nan = torch.full((len(ids), 1), math.nan, dtype=torch.float64)
        tok = torch.cat([logit[:, [c]] if c is not None else nan for c in at], 1)  # [K, P]
        resid = torch.stack([rc.tokens[h][:, b, pos].double().cpu() for h in hooks], 2)  # [C, d_model, J]
        proj = torch.einsum("kd,cdj->kcj", directions, resid)  # [K, C, J]
        tok_proj = torch.stack([proj[:, c] if c is not None else torch.full_like(proj[:, 0], math.nan) for c in at], 1)
        index, rest = _head_layout(rc.heads, n_layers, n_heads)
        hl = torch.stack([rc.heads.logit_attrs(i)[:, b] for i in ids]).double().cpu()  # [K, C]
        heads = hl[:, torch.tensor(index)]  # [K, L, H]
        heads_rest = torch.stack([hl[:, r].sum(1) for r in rest], 1)  # [K, L]
        src, src_earlier, src_rest = [], [], []
        for l, dc in enumerate(rc.head_sources):
            sl = torch.stack([dc.logit_attrs(i)[:, b] for i in ids]).double().cpu()  # [K, C]
            cols = torch.tensor([[dc.component(source_label(l, h, s)) for s in range(n_pos)] for h in range(n_heads)])
            src.append(sl[:, cols])  # [K, H, P]
            src_earlier.append(sl[:, [dc.component(source_label(l, h, None)) for h in range(n_heads)]])  # [K, H]
            src_rest.append(sl[:, [dc.component("rest"), dc.n_components - 1]].sum(1))
        by_rule[name] = {
            "tokens": _rows(tok),
            "token_others": [
                {"label": rc.tokens.labels[c], "name": OTHER_NAMES.get(rc.tokens.labels[c], rc.tokens.labels[c]),
                 "values": _rows(logit[:, c])}
                for c in others
            ],
            "token_proj": _rows(tok_proj),
            "heads": _rows(heads),
            "heads_rest": _rows(heads_rest),
            "sources": _rows(torch.stack(src, 1)),
            "sources_earlier": _rows(torch.stack(src_earlier, 1)),
            "sources_rest": _rows(torch.stack(src_rest, 1)),
        }
    return {
        "format": "depass_tl explorer 1",
        "prompt": prompt,
        "model": model,
        "str_tokens": list(str_tokens_of(first, b, str_tokens, "explorer_data")),
        "pos": pos,
        "n_layers": int(n_layers),
        "n_heads": int(n_heads),
        "hooks": list(hooks),
        "hook_labels": list(plain_hook_labels(first, hooks)),
        "candidates": cands,
        "target": 0,
        "contrast": None if contrast is None else 1,
        "rules": rules,
        "linear_rules": [r for r in rules if get_rule(r).linear],
        "rule": rule,
        "temperature": caches.temperature,
        "structure": dict(caches.structure),
        "clean_proj": _rows(directions @ clean_proj),
        "attention": _rows(caches.attention[b]),
        "by_rule": by_rule,
    }


# ------------------------------------------------------------------------------------- the page
def explorer_html(data: Mapping[str, Any], *, title: str | None = None) -> str:
    """The page as one HTML string (inline CSS, JavaScript and data; it loads nothing)."""
    from depass_tl.viz._explorer_page import render

    if not isinstance(data, Mapping) or data.get("format") != "depass_tl explorer 1" or "structure" not in data:
        raise DePassError("explorer_html() takes the dict returned by explorer_data().")
    return render(data, title=title)


def save_explorer(data: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Write the explorer page to ``path`` (``.html``); returns the path.

    Raises:
        DePassError: not explorer data, a path not ending in ``.html``, or a missing folder.
    """
    p = check_path(path, (".html",))
    p.write_text(explorer_html(data, title=title), encoding="utf-8")
    return p
