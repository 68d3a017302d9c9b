"""Token-level faithfulness protocols: does masking the tokens an attribution ranks first matter?

Notation: ``f(x)`` is the target score at the last position (``p(target | x)`` by default, or its
log or logit); ``R_k`` the ``k`` most relevant maskable tokens (descending signed attribution);
``x \\ R`` the prompt with ``R`` masked; ``x_R`` the prompt with only ``R`` kept (BOS and the last
token are always kept). See :mod:`depass_tl.evaluate.masking` for masking and ``k``.

* **Disrupt-top-k / Recover-top-k** (the DePass paper, Hong et al. 2025, scripts ``patch_top`` /
  ``recover_top``): ``Δ_k = min(100, |p(x) − p(x')| / p(x) · 100)`` with ``x' = x \\ R_k``
  (disrupt; higher is better) or ``x' = x_{R_k}`` (recover; lower is better), at
  ``k = 10%, 20%, …, 100%``. Always on probabilities, absolute change, in percent.
* **Deletion / insertion curves** (Petsiuk et al. 2018) and **AOPC** (Samek et al. 2017): the
  deletion curve is ``f`` after removing the ``l`` most relevant tokens, ``l = 0..n``; insertion
  starts from every maskable token masked and puts them back in the same order. AUCs use the
  trapezoid rule over the fraction ``l/n ∈ [0, 1]`` (deletion: lower is better; insertion: higher
  is better). ``AOPC = 1/(n+1) Σ_l (f(x) − f(x^(l)))`` on the deletion curve (higher is better).
* **ERASER comprehensiveness / sufficiency** (DeYoung et al. 2020): ``comp_k = f(x) − f(x \\ R_k)``
  (higher is better), ``suff_k = f(x) − f(x_{R_k})`` (lower is better), and their AOPC: the mean
  over the fractions (default ``{1, 5, 10, 20, 50}%`` as in ERASER).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.evaluate.masking import (
    Masking,
    Metric,
    apply_mask,
    check_masking,
    rank_positions,
    score_rows,
    top_k_count,
)

__all__ = [
    "DEFAULT_TOPK_FRACTIONS",
    "ERASER_FRACTIONS",
    "DeletionInsertion",
    "Erasure",
    "TopKChange",
    "comprehensiveness_sufficiency",
    "deletion_insertion",
    "disrupt_recover",
    "target_ids",
    "token_batch",
]

DEFAULT_TOPK_FRACTIONS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
ERASER_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)


@dataclass(frozen=True)
class TopKChange:
    """Disrupt-top-k / Recover-top-k results.

    Attributes:
        fractions: the ``F`` fractions of maskable tokens.
        k: ``[F]`` the number of tokens masked (or kept) at each fraction.
        clean: ``[batch]`` ``p(target | x)``.
        disrupt: ``[batch, F]`` percent change after masking the top k (higher is better).
        recover: ``[batch, F]`` percent change after keeping only the top k (lower is better).
    """

    fractions: tuple[float, ...]
    k: tuple[int, ...]
    clean: Tensor
    disrupt: Tensor
    recover: Tensor


@dataclass(frozen=True)
class DeletionInsertion:
    """Deletion and insertion curves and their summaries.

    Attributes:
        deletion: ``[batch, n+1]`` ``f`` after deleting the ``l`` most relevant tokens, ``l = 0..n``.
        insertion: ``[batch, n+1]`` ``f`` after inserting the ``l`` most relevant tokens into the
            fully masked prompt.
        deletion_auc: ``[batch]`` trapezoid AUC over ``l/n`` (lower is better).
        insertion_auc: ``[batch]`` (higher is better).
        aopc: ``[batch]`` ``mean_l (f(x) − deletion[l])`` (higher is better).
    """

    deletion: Tensor
    insertion: Tensor
    deletion_auc: Tensor
    insertion_auc: Tensor
    aopc: Tensor


@dataclass(frozen=True)
class Erasure:
    """ERASER comprehensiveness and sufficiency.

    Attributes:
        fractions: the ``F`` fractions.
        k: ``[F]`` tokens masked (comprehensiveness) / kept (sufficiency) per fraction.
        comprehensiveness: ``[batch, F]`` ``f(x) − f(x \\ R_k)`` (higher is better).
        sufficiency: ``[batch, F]`` ``f(x) − f(x_{R_k})`` (lower is better).
        aopc_comprehensiveness: ``[batch]`` mean over fractions.
        aopc_sufficiency: ``[batch]`` mean over fractions.
    """

    fractions: tuple[float, ...]
    k: tuple[int, ...]
    comprehensiveness: Tensor
    sufficiency: Tensor
    aopc_comprehensiveness: Tensor
    aopc_sufficiency: Tensor


def token_batch(model: Any, tokens: Tensor) -> Tensor:
    """Check that ``tokens`` is a ``[batch, pos]`` integer tensor and move it to the model's device.

    Raises:
        DePassError: anything else.
    """
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise DePassError(f"tokens must be a [batch, pos] integer tensor; got {getattr(tokens, 'shape', type(tokens))}.")
    return tokens.to(model.cfg.device)


def target_ids(target: int | Sequence[int] | Tensor, batch: int, d_vocab: int) -> list[int]:
    """One target token id per prompt (a single id is broadcast)."""
    if isinstance(target, Tensor):
        ids = [int(t) for t in target.flatten().tolist()]
    elif isinstance(target, int):
        ids = [target]
    else:
        ids = [int(t) for t in target]
    if len(ids) == 1:
        ids = ids * batch
    if len(ids) != batch:
        raise DePassError(f"give one target token, or one per prompt ({batch}); got {len(ids)}.")
    bad = [t for t in ids if not 0 <= t < d_vocab]
    if bad:
        raise DePassError(f"target token ids must lie in [0, {d_vocab}); got {bad[:5]}.")
    return ids


def _prepare(
    model: Any, tokens: Tensor, attributions: Tensor, target: Any, masking: str, replace_with: int | None,
    protect_bos: bool,
) -> tuple[list[list[int]], list[int], Tensor]:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise DePassError(f"tokens must be a [batch, pos] integer tensor; got {getattr(tokens, 'shape', type(tokens))}.")
    if not isinstance(attributions, Tensor) or tuple(attributions.shape) != tuple(tokens.shape):
        raise DePassError(
            f"attributions must be a tensor with the shape of tokens {tuple(tokens.shape)} ([batch, pos]); got "
            f"{tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__}. "
            "For a DePassCache use depass_tl.evaluate.depass_token_attributions."
        )
    d_vocab = int(model.cfg.d_vocab)
    check_masking(masking, replace_with, d_vocab)
    targets = target_ids(target, tokens.shape[0], d_vocab)
    rows = [[int(t) for t in r] for r in tokens.cpu().tolist()]
    ranks = rank_positions(attributions.detach(), protect_bos=protect_bos)  # [batch, n]
    return rows, targets, ranks


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if not fr:
        raise DePassError("fractions is empty; give at least one fraction in (0, 1].")
    return fr


def _score_masks(
    model: Any, rows: list[list[int]], targets: list[int], masks: list[list[list[int]]], *, keep: bool,
    ranks: Tensor, masking: Masking, replace_with: int | None, metric: Metric, batch_size: int,
) -> Tensor:
    """``masks[b][j]``: positions to mask (``keep=False``) or to keep among the maskable (``keep=True``)."""
    variant_rows, variant_targets = [], []
    for b, per_prompt in enumerate(masks):
        maskable = ranks[b].tolist()
        for chosen in per_prompt:
            kept = set(chosen)
            masked = [p for p in maskable if p not in kept] if keep else chosen
            variant_rows.append(apply_mask(rows[b], masked, masking=masking, replace_with=replace_with))
            variant_targets.append(targets[b])
    scores = score_rows(model, variant_rows, variant_targets, metric=metric, batch_size=batch_size)
    return scores.reshape(len(masks), -1)


def disrupt_recover(
    model: Any,
    tokens: Tensor,
    attributions: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_TOPK_FRACTIONS,
    masking: Masking = "delete",
    replace_with: int | None = None,
    protect_bos: bool = True,
    batch_size: int = 64,
) -> TopKChange:
    """Disrupt-top-k and Recover-top-k (the DePass paper's token-level protocol).

    Args:
        model: a ``HookedTransformer`` (any callable ``model(tokens, return_type="logits")`` with a ``cfg``).
        tokens: ``[batch, pos]`` prompts; the target is predicted at the last position.
        attributions: ``[batch, pos]`` one score per token (larger = more relevant).
        target: the target token id, or one per prompt.
        fractions: fractions of the maskable tokens (default 10%, 20%, …, 100%).
        masking: ``"delete"`` (the paper: tokens removed) or ``"replace"`` (by ``replace_with``).
        replace_with: the replacement token id for ``masking="replace"``.
        protect_bos: never mask position 0.
        batch_size: masked prompts per forward pass.

    Returns:
        A :class:`TopKChange` with per-prompt percent changes.
    """
    rows, targets, ranks = _prepare(model, tokens, attributions, target, masking, replace_with, protect_bos)
    fr = _check_fractions(fractions)
    n = ranks.shape[1]
    ks = tuple(top_k_count(f, n) for f in fr)
    top = [[ranks[b, :k].tolist() for k in ks] for b in range(len(rows))]
    clean = score_rows(model, rows, targets, metric="prob", batch_size=batch_size)
    kw = dict(ranks=ranks, masking=masking, replace_with=replace_with, metric="prob", batch_size=batch_size)
    disrupted = _score_masks(model, rows, targets, top, keep=False, **kw)  # type: ignore[arg-type]
    recovered = _score_masks(model, rows, targets, top, keep=True, **kw)  # type: ignore[arg-type]

    def change(p: Tensor) -> Tensor:
        return ((clean[:, None] - p).abs() / clean[:, None] * 100).clamp(max=100.0)

    return TopKChange(fr, ks, clean, change(disrupted), change(recovered))


def _trapezoid(curve: Tensor) -> Tensor:
    """AUC of ``curve[:, l]`` over ``l/n`` for ``l = 0..n`` (trapezoid rule)."""
    n = curve.shape[1] - 1
    return ((curve[:, 1:] + curve[:, :-1]) / 2).sum(1) / n


def deletion_insertion(
    model: Any,
    tokens: Tensor,
    attributions: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    metric: Metric = "prob",
    masking: Masking = "delete",
    replace_with: int | None = None,
    protect_bos: bool = True,
    batch_size: int = 64,
) -> DeletionInsertion:
    """Deletion and insertion curves (one token at a time, most relevant first) and AOPC.

    Args: as :func:`disrupt_recover`, plus ``metric``: ``"prob"``, ``"logprob"`` or ``"logit"`` of the target.

    Returns:
        A :class:`DeletionInsertion`.
    """
    rows, targets, ranks = _prepare(model, tokens, attributions, target, masking, replace_with, protect_bos)
    n = ranks.shape[1]
    prefixes = [[ranks[b, :l].tolist() for l in range(n + 1)] for b in range(len(rows))]
    kw = dict(ranks=ranks, masking=masking, replace_with=replace_with, metric=metric, batch_size=batch_size)
    deletion = _score_masks(model, rows, targets, prefixes, keep=False, **kw)  # type: ignore[arg-type]
    insertion = _score_masks(model, rows, targets, prefixes, keep=True, **kw)  # type: ignore[arg-type]
    aopc = (deletion[:, :1] - deletion).mean(1)
    return DeletionInsertion(deletion, insertion, _trapezoid(deletion), _trapezoid(insertion), aopc)


def comprehensiveness_sufficiency(
    model: Any,
    tokens: Tensor,
    attributions: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    fractions: Sequence[float] = ERASER_FRACTIONS,
    metric: Metric = "prob",
    masking: Masking = "delete",
    replace_with: int | None = None,
    protect_bos: bool = True,
    batch_size: int = 64,
) -> Erasure:
    """ERASER comprehensiveness and sufficiency at each fraction, and their AOPC (mean over fractions).

    Args: as :func:`deletion_insertion`; ``fractions`` default ``(0.01, 0.05, 0.1, 0.2, 0.5)``.

    Returns:
        An :class:`Erasure`.
    """
    rows, targets, ranks = _prepare(model, tokens, attributions, target, masking, replace_with, protect_bos)
    fr = _check_fractions(fractions)
    n = ranks.shape[1]
    ks = tuple(top_k_count(f, n) for f in fr)
    top = [[ranks[b, :k].tolist() for k in ks] for b in range(len(rows))]
    clean = score_rows(model, rows, targets, metric=metric, batch_size=batch_size)
    kw = dict(ranks=ranks, masking=masking, replace_with=replace_with, metric=metric, batch_size=batch_size)
    comp = clean[:, None] - _score_masks(model, rows, targets, top, keep=False, **kw)  # type: ignore[arg-type]
    suff = clean[:, None] - _score_masks(model, rows, targets, top, keep=True, **kw)  # type: ignore[arg-type]
    return Erasure(fr, ks, comp, suff, comp.mean(1), suff.mean(1))
