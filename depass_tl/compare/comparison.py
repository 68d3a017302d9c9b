"""The comparison itself: :func:`compare`, its result types and the metric (see :mod:`depass_tl.compare`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from depass_tl._checks import checked
from depass_tl._types import TOKENS_HINT, Model, TextOrTokens
from depass_tl.capture import capture
from depass_tl.compare.layouts import LAYOUTS, depass_layout, layout_hooks, layout_shape
from depass_tl.errors import DePassError
from depass_tl.replay.rules import DEFAULT_TEMPERATURE, RuleLike, get_rule
from depass_tl.stats import spearman, top_k_overlap
from depass_tl.tokenization import tokens_and_mask

__all__ = ["LAYOUTS", "Comparison", "LayoutComparison", "compare", "logit_diff_metric"]


AnswerTokens = int | str | Sequence[int] | Sequence[str] | Tensor
"""An answer token id or single-token string, or one per prompt."""

_DEFAULT_LAYOUTS = ("resid_pre", "attn_out", "mlp_out", "attn_head_out_by_pos", "attn_head_out_all_pos")


@dataclass(frozen=True)
class LayoutComparison:
    """DePass and activation patching for one layout, on TL's axes.

    Attributes:
        name: the layout (a key of :data:`LAYOUTS`).
        tl_function: the ``transformer_lens.patching`` function that produced ``patching``.
        axis_names: TL's axis names, e.g. ``("layer", "pos", "head")``.
        depass_clean: each cell's DePass contribution to the metric on the clean run (batch mean).
        depass_corrupted: the same on the corrupted run.
        depass_diff: ``depass_clean − depass_corrupted``.
        patching: TL's patching result as an effect: ``metric(patched) − metric(corrupted)``.
        rest_clean: ``[n_layers]``: the contribution of ``rest`` + ``bias`` of each layer's replay on
            the clean run (cells of layer L + ``rest_clean[L]`` = the clean metric).
        rest_corrupted: the same on the corrupted run.

    All maps are float64 on the CPU, of shape ``[n_layers, pos]``, ``[n_layers, pos, n_heads]`` or
    ``[n_layers, n_heads]``, exactly the shape of the TL function's output.
    """

    name: str
    tl_function: str
    axis_names: tuple[str, ...]
    depass_clean: Tensor = field(repr=False)
    depass_corrupted: Tensor = field(repr=False)
    depass_diff: Tensor = field(repr=False)
    patching: Tensor = field(repr=False)
    rest_clean: Tensor = field(repr=False)
    rest_corrupted: Tensor = field(repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.patching.shape)


@dataclass(frozen=True)
class Comparison:
    """DePass (clean, corrupted, difference) and TL activation patching, per layout.

    Attributes:
        layouts: layout name -> :class:`LayoutComparison`, in the order asked for.
        metric_clean: the metric on the clean logits.
        metric_corrupted: the metric on the corrupted logits.
        answer_tokens: ``[batch]`` answer ids.
        incorrect_tokens: ``[batch]`` ids subtracted in the logit difference (None: a plain logit).
        pos: the position the metric reads.
        pos_labels: one label per position (``"p:token"`` when a tokenizer is known and batch is 1,
            with ``"clean/corrupted"`` where the two prompts differ; else ``"p"``).
        mlp_rule: the DePass MLP rule used.
    """

    layouts: Mapping[str, LayoutComparison]
    metric_clean: float
    metric_corrupted: float
    answer_tokens: Tensor = field(repr=False)
    incorrect_tokens: Tensor | None = field(repr=False)
    pos: int
    pos_labels: tuple[str, ...]
    mlp_rule: str

    def __getitem__(self, layout: str) -> LayoutComparison:
        try:
            return self.layouts[layout]
        except KeyError:
            raise DePassError(
                f"no layout {layout!r} in this comparison; it holds {list(self.layouts)}. "
                "Pass layouts=[...] to compare() to compute others."
            ) from None

    def agreement(self, k: int = 5) -> Any:
        """A ``pandas.DataFrame`` (one row per layout) of how well DePass matches patching.

        Columns: ``n_cells``; ``spearman_diff`` and ``spearman_clean`` (Spearman rank correlation of
        ``depass_diff`` / ``depass_clean`` with ``patching`` over all cells); ``top_k_overlap_diff``
        and ``top_k_overlap_clean`` (shared fraction of the k largest-|value| cells); ``k`` (clamped
        to ``n_cells``); ``max_abs_diff`` (max ``|depass_diff − patching|``, 0 where theory says
        they agree).
        """
        import pandas as pd

        rows = []
        for name, lay in self.layouts.items():
            n = lay.patching.numel()
            rows.append(
                {
                    "layout": name,
                    "n_cells": n,
                    "spearman_diff": spearman(lay.depass_diff, lay.patching),
                    "spearman_clean": spearman(lay.depass_clean, lay.patching),
                    "top_k_overlap_diff": top_k_overlap(lay.depass_diff, lay.patching, k),
                    "top_k_overlap_clean": top_k_overlap(lay.depass_clean, lay.patching, k),
                    "k": min(k, n),
                    "max_abs_diff": float((lay.depass_diff - lay.patching).abs().max()),
                }
            )
        return pd.DataFrame(rows).set_index("layout")

    def to_dataframe(self) -> Any:
        """Long format ``pandas.DataFrame``: one row per (layout, cell).

        Columns: ``layout``, ``layer``, ``pos``, ``head`` (``-1`` where the layout has no such axis),
        ``pos_label``, ``depass_clean``, ``depass_corrupted``, ``depass_diff``, ``patching``. The
        index columns come from TL's ``patching.make_df_from_ranges`` (same order as TL's
        ``return_index_df``).
        """
        import pandas as pd
        from transformer_lens.patching import make_df_from_ranges

        frames = []
        for name, lay in self.layouts.items():
            df = make_df_from_ranges(list(lay.shape), list(lay.axis_names))
            for col in ("pos", "head"):
                if col not in df:
                    df[col] = -1
            df["pos_label"] = [self.pos_labels[p] if p >= 0 else "" for p in df["pos"]]
            for arr in ("depass_clean", "depass_corrupted", "depass_diff", "patching"):
                df[arr] = getattr(lay, arr).flatten().numpy()
            df.insert(0, "layout", name)
            frames.append(df[["layout", "layer", "pos", "head", "pos_label", "depass_clean",
                              "depass_corrupted", "depass_diff", "patching"]])
        return pd.concat(frames, ignore_index=True)

    def plot(
        self,
        layout: str,
        *,
        panels: Sequence[str] = ("depass_diff", "patching"),
        backend: str | None = None,
    ) -> Any:
        """Side-by-side heatmaps with one symmetric colour scale; see :func:`depass_tl.viz.compare.plot_comparison`."""
        from depass_tl.viz.compare import plot_comparison  # plots live in viz, which never imports this module

        return plot_comparison(self, layout, panels=panels, backend=backend)


# ------------------------------------------------------------------------------------ metric
def logit_diff_metric(
    answer_tokens: Tensor, incorrect_tokens: Tensor | None = None, *, pos: int = -1
) -> Callable[[Tensor], Tensor]:
    """``logits [batch, pos, d_vocab] -> scalar``: batch mean of ``logit[answer] − logit[incorrect]``.

    The metric :func:`compare` uses (a plain logit when ``incorrect_tokens`` is None); usable as a
    TL ``patching_metric``.

    Args:
        answer_tokens: ``[batch]`` answer ids (one per prompt).
        incorrect_tokens: ``[batch]`` ids, or None.
        pos: the position read.
    """

    def metric(logits: Tensor) -> Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        value = logits[rows, pos, answer_tokens.to(logits.device)]
        if incorrect_tokens is not None:
            value = value - logits[rows, pos, incorrect_tokens.to(logits.device)]
        return value.mean()

    return metric


def _ids(model: Any, tokens: Any, batch: int, what: str) -> Tensor:
    """Answer tokens -> ``[batch]`` long ids (one id for all prompts, or one per prompt)."""

    def one(t: Any) -> int:
        if isinstance(t, bool):
            raise DePassError(f"{what}: got a bool {t!r}; pass a token id or a single-token string.")
        if isinstance(t, int):
            return t
        if isinstance(t, str):
            if getattr(model, "tokenizer", None) is None:
                raise DePassError(f"{what}: the model has no tokenizer, so {t!r} cannot be looked up; pass token ids.")
            ids = model.to_tokens(t, prepend_bos=False)[0]
            if ids.numel() != 1:
                raise DePassError(f"{what}: {t!r} is {ids.numel()} tokens, not one; pick a single-token answer.")
            return int(ids[0])
        raise DePassError(f"{what}: expected a token id or a string, got {type(t).__name__}.")

    if isinstance(tokens, Tensor):
        if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.ndim > 1:
            raise DePassError(f"{what}: expected integer ids of shape [] or [batch], got {tokens.dtype} {tuple(tokens.shape)}.")
        ids = tokens.flatten().long().cpu()
    elif isinstance(tokens, (str, int)):
        ids = torch.tensor([one(tokens)])
    elif isinstance(tokens, Sequence):
        ids = torch.tensor([one(t) for t in tokens], dtype=torch.long)
    else:
        raise DePassError(f"{what}: expected an id, a string, or one per prompt; got {type(tokens).__name__}.")
    if ids.numel() == 1:
        ids = ids.expand(batch).clone()
    if ids.numel() != batch:
        raise DePassError(f"{what}: give one token, or one per prompt ({batch}); got {ids.numel()}.")
    d_vocab = int(getattr(model.cfg, "d_vocab_out", -1))
    d_vocab = d_vocab if d_vocab > 0 else int(model.cfg.d_vocab)
    if int(ids.min()) < 0 or int(ids.max()) >= d_vocab:
        raise DePassError(f"{what}: token ids must lie in [0, {d_vocab}); got {ids.tolist()}.")
    return ids


def _pos_labels(model: Any, clean: Tensor, corrupted: Tensor) -> tuple[str, ...]:
    P = clean.shape[1]
    if getattr(model, "tokenizer", None) is None or clean.shape[0] != 1:
        return tuple(str(p) for p in range(P))
    a = model.to_str_tokens(clean[0])
    b = model.to_str_tokens(corrupted[0])
    return tuple(f"{p}:{x}" if x == y else f"{p}:{x}/{y}" for p, (x, y) in enumerate(zip(a, b)))


# ----------------------------------------------------------------------------------- compare
@contextmanager
def _tl_progress_bars(tl_patching: Any, *, enabled: bool) -> Iterator[None]:
    """Leave TL's patching progress bars on, or swap its module's ``tqdm`` for a disabled one."""
    if enabled:
        yield
        return
    original = tl_patching.tqdm
    tl_patching.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        tl_patching.tqdm = original


@checked(hints={
    "clean": TOKENS_HINT.replace("input", "clean"), "corrupted": TOKENS_HINT.replace("input", "corrupted"),
    "answer_tokens": "answer_tokens: expected an id, a string, or one per prompt",
    "incorrect_tokens": "incorrect_tokens: expected an id, a string, or one per prompt",
    "layouts": f"layouts must be a non-empty list of names from {list(LAYOUTS)}",
    "pos": "pos must be an integer position",
})
def compare(
    model: Model,
    clean: TextOrTokens,
    corrupted: TextOrTokens,
    *,
    answer_tokens: AnswerTokens,
    incorrect_tokens: AnswerTokens | None = None,
    layouts: Sequence[str] | None = None,
    pos: int = -1,
    mlp_rule: RuleLike = "softmax",
    temperature: float = DEFAULT_TEMPERATURE,
    dtype: torch.dtype | None = None,
    prepend_bos: bool | None = None,
    progress: bool = True,
) -> Comparison:
    """DePass attributions and TL activation patching for the same metric, on the same axes.

    Runs ``capture`` once on each input, replays one component set per (layout, layer) against it,
    and calls ``transformer_lens.patching.get_act_patch_*`` for patching (one forward per cell).
    See the module docstring for what each cell's DePass component is, and when the two agree.

    Args:
        model: a ``HookedTransformer``.
        clean: the clean input (string, list of strings of one token length, or ``[batch, pos]`` ids).
        corrupted: the corrupted input; must tokenise to the same shape as ``clean``.
        answer_tokens: the answer: an id, a single-token string, or one per prompt.
        incorrect_tokens: the wrong answer(s) for a logit difference; None: the answer logit alone.
        layouts: which of :data:`LAYOUTS` to compute. Default: ``resid_pre``, ``attn_out``,
            ``mlp_out`` (models with MLPs), ``attn_head_out_by_pos``, ``attn_head_out_all_pos``.
        pos: the position whose logits the metric reads (default: the last).
        mlp_rule: DePass MLP rule (``softmax``, ``ratio``, ``max``, or a rule object); see
            :func:`depass_tl.run_with_depass`.
        temperature: softmax temperature (for a rule given by name).
        dtype: DePass accumulation dtype (default: float32, float64 for float64 models).
        prepend_bos: for string input, passed to ``model.to_tokens``.
        progress: show the progress bar TransformerLens draws for each patching sweep; ``False``
            silences it (for notebooks and logs; TL's functions have no switch of their own, so its
            ``patching`` module's ``tqdm`` is replaced by a disabled one during the sweeps and restored
            after, also on errors).

    Returns:
        A :class:`Comparison`.

    Raises:
        DePassError: inputs of different shapes, padded prompts, unknown or unavailable layouts, bad answer tokens,
            a position out of range, a soft-capped model, or anything ``capture`` rejects.

    Examples:
        >>> import torch, depass_tl.compare as dc
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_vocab=20, attn_only=True, seed=0)
        >>> model = random_model(**cfg)
        >>> cmp = dc.compare(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 5, 3]]),
        ...                  answer_tokens=4, incorrect_tokens=7, layouts=["resid_pre", "attn_head_out_by_pos"])
        >>> cmp["attn_head_out_by_pos"].patching.shape, cmp["attn_head_out_by_pos"].depass_diff.shape
        (torch.Size([1, 3, 2]), torch.Size([1, 3, 2]))
        >>> list(cmp.agreement().columns)[:3]
        ['n_cells', 'spearman_diff', 'spearman_clean']
    """
    from transformer_lens import ActivationCache
    from transformer_lens import patching as tl_patching

    if not hasattr(model, "cfg") or not hasattr(model, "hook_dict"):
        raise DePassError(f"compare needs a transformer_lens HookedTransformer; got {type(model).__name__}.")
    clean_toks, clean_mask = tokens_and_mask(model, clean, prepend_bos=prepend_bos)
    corrupt_toks, corrupt_mask = tokens_and_mask(model, corrupted, prepend_bos=prepend_bos)
    if clean_mask is not None or corrupt_mask is not None:
        raise DePassError(
            "the clean or corrupted prompts have different token lengths, so they were padded; TransformerLens's "
            "patching functions run the model without an attention mask and the metric reads one position for "
            "every prompt, so padded prompts would be patched and measured at padding. Give prompts of one token "
            "length (compare() each length group separately), or run_with_depass(..., attention_mask=...) alone."
        )
    if clean_toks.shape != corrupt_toks.shape:
        raise DePassError(
            f"clean and corrupted inputs have token shapes {tuple(clean_toks.shape)} and "
            f"{tuple(corrupt_toks.shape)}; activation patching compares them position by position, so "
            "give prompts of the same length (and the same batch size)."
        )
    batch, P = clean_toks.shape
    if isinstance(pos, bool) or not isinstance(pos, int) or not -P <= pos < P:
        raise DePassError(f"pos must be an integer position in [-{P}, {P}); got {pos!r}.")
    rule = get_rule(mlp_rule, temperature=temperature)
    answer = _ids(model, answer_tokens, batch, "answer_tokens")
    incorrect = None if incorrect_tokens is None else _ids(model, incorrect_tokens, batch, "incorrect_tokens")

    cfg = model.cfg
    has_mlp = not bool(getattr(cfg, "attn_only", False))
    names = list(_DEFAULT_LAYOUTS if layouts is None else layouts)
    if isinstance(layouts, str) or not names:
        raise DePassError(f"layouts must be a non-empty list of names from {list(LAYOUTS)}; got {layouts!r}.")
    for name in names:
        if name not in LAYOUTS:
            raise DePassError(f"unknown layout {name!r}; choose from {list(LAYOUTS)}.")
        if LAYOUTS[name].needs_mlp and not has_mlp and layouts is not None:
            raise DePassError(f"layout {name!r} needs MLP blocks, but this model is attention-only (cfg.attn_only=True).")
    if len(set(names)) != len(names):
        raise DePassError(f"layouts must not repeat; got {names}.")
    names = [n for n in names if has_mlp or not LAYOUTS[n].needs_mlp]

    # the hooks TL's patching reads from the clean cache (the head layouts also read hook_z)
    for name in names:
        absent = [h for h in layout_hooks(name, cfg.n_layers) if h not in model.hook_dict]
        if absent:
            why = (" (parallel blocks, as in GPT-J and NeoX, have no hook_resid_mid: attention and MLP both read "
                   "hook_resid_pre)" if name == "resid_mid" else "")
            raise DePassError(f"layout {name!r} patches {absent[0]}, which this model does not have{why}; "
                              f"use another layout from {[n for n in LAYOUTS if n != name]}.")
    needed = {hook for n in names for hook in layout_hooks(n, cfg.n_layers)}
    run_clean = capture(model, clean_toks, extra_hooks=needed)
    run_corrupt = capture(model, corrupt_toks, extra_hooks=needed)
    if run_clean.view.output_logits_soft_cap is not None:
        raise DePassError(
            f"the model soft-caps its logits (output_logits_soft_cap={run_clean.view.output_logits_soft_cap}); "
            "DePass decomposes the pre-cap logits while patching sees the capped ones, so the metric would not "
            "be the same. Compare on a model without logit soft-capping."
        )

    metric = logit_diff_metric(answer, incorrect, pos=pos)
    metric_clean = float(metric(run_clean.logits.double()))
    metric_corrupt = metric(run_corrupt.logits)
    clean_cache = ActivationCache({k: run_clean.acts[k] for k in needed}, model)

    def patching_metric(logits: Tensor) -> Tensor:  # the effect of the patch, in the logits' dtype
        return metric(logits) - metric_corrupt

    results: dict[str, LayoutComparison] = {}
    for name in names:
        lay = LAYOUTS[name]
        with torch.no_grad(), _tl_progress_bars(tl_patching, enabled=progress):
            patched = getattr(tl_patching, lay.tl_function)(model, corrupt_toks, clean_cache, patching_metric)
        patched = patched.detach().double().cpu()
        assert tuple(patched.shape) == layout_shape(name, run_clean), (name, tuple(patched.shape))
        kw: dict[str, Any] = dict(pos=pos, mlp_rule=rule, dtype=dtype)
        d_clean, r_clean = depass_layout(run_clean, name, answer, incorrect, **kw)
        d_corrupt, r_corrupt = depass_layout(run_corrupt, name, answer, incorrect, **kw)
        results[name] = LayoutComparison(
            name=name,
            tl_function=f"transformer_lens.patching.{lay.tl_function}",
            axis_names=lay.axis_names,
            depass_clean=d_clean,
            depass_corrupted=d_corrupt,
            depass_diff=d_clean - d_corrupt,
            patching=patched,
            rest_clean=r_clean,
            rest_corrupted=r_corrupt,
        )
    return Comparison(
        layouts=MappingProxyType(results),
        metric_clean=metric_clean,
        metric_corrupted=float(metric_corrupt.double()),
        answer_tokens=answer,
        incorrect_tokens=incorrect,
        pos=pos,
        pos_labels=_pos_labels(model, clean_toks, corrupt_toks),
        mlp_rule=rule.name,
    )
