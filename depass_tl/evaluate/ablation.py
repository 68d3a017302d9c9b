"""Exact ablation of attention heads and MLP neurons: single-unit effects and top-k / bottom-k curves.

Following the DePass paper (§4.2): rank every head (or neuron) of the model by an attribution to the
answer, ablate the top-k (should hurt the most) or the bottom-k (should hurt the least) at every
position, and measure accuracy and the logit difference. The same machinery gives the exact
single-unit baseline: ablate one unit at a time and record how much the answer drops.

* Heads are ablated at ``blocks.l.attn.hook_z`` (``[batch, pos, head_index, d_head]``), neurons at
  ``blocks.l.mlp.hook_post`` (``[batch, pos, d_mlp]``), with scoped TL hooks (``run_with_hooks``).
* ``ablation="zero"`` writes 0; ``"mean"`` writes the unit's mean activation over a reference set
  (mean over prompts *and* positions, so prompts of any length can be used); ``"resample"`` writes
  the unit's activation on a corrupted prompt of the same shape (``corrupt_tokens``), position by position.
* Rankings may be per prompt (``[batch, n_layers, n_units]``, as in the paper, where each prompt is
  ablated by its own ranking) or shared (``[n_layers, n_units]``).
* ``k = max(1, floor(p·N))`` units for a fraction ``p > 0`` of all ``N = n_layers·n_units`` units, or
  explicit counts ``k=(1, 2, 4)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.evaluate.component_metrics import Level, check_level, logit_metric, n_units, unit_hook
from depass_tl.evaluate.masking import top_k_count
from depass_tl.evaluate.token_metrics import target_ids, token_batch

__all__ = [
    "ABLATIONS",
    "Ablation",
    "AblationCurve",
    "ablate",
    "ablation_curve",
    "ablation_fills",
    "exact_ablation_scores",
    "mean_activations",
]

Ablation = Literal["zero", "mean", "resample"]
ABLATIONS: tuple[str, ...] = ("zero", "mean", "resample")


@torch.no_grad()
def mean_activations(model: Any, reference_tokens: Tensor | Sequence[Tensor], *, level: Level = "heads") -> Tensor:
    """Each unit's mean activation over a reference set (every prompt and position).

    Args:
        reference_tokens: ``[batch, pos]``, or several such batches (e.g. prompts grouped by length):
            the mean is over all their (prompt, position) pairs.

    Returns:
        ``[n_layers, n_heads, d_head]`` (heads) or ``[n_layers, d_mlp]`` (neurons).
    """
    check_level(model, level)
    batches = [reference_tokens] if isinstance(reference_tokens, Tensor) else list(reference_tokens)
    if not batches:
        raise DePassError("reference_tokens is empty; give at least one [batch, pos] batch.")
    names = [unit_hook(level, l) for l in range(model.cfg.n_layers)]
    total, count = None, 0
    for toks in batches:
        _, cache = model.run_with_cache(token_batch(model, toks), names_filter=lambda n: n in names)
        s = torch.stack([cache[n].double().sum(dim=(0, 1)) for n in names])
        total = s if total is None else total + s
        count += toks.shape[0] * toks.shape[1]
    assert total is not None
    return (total / count).to(model.cfg.dtype).detach()


@torch.no_grad()
def ablation_fills(
    model: Any,
    tokens: Tensor,
    *,
    level: Level = "heads",
    ablation: Ablation = "zero",
    means: Tensor | None = None,
    corrupt_tokens: Tensor | None = None,
) -> list[Tensor]:
    """Per layer, the value an ablated unit takes: broadcastable to the unit hook's activation.

    ``zero``: a 0-d zero; ``mean``: ``means[l]`` (from :func:`mean_activations`); ``resample``: the
    activation of ``corrupt_tokens`` (same shape as ``tokens``) at every position.

    Raises:
        DePassError: unknown ablation, or the value it needs is missing or of the wrong shape.
    """
    if ablation not in ABLATIONS:
        raise DePassError(f"ablation must be one of {', '.join(ABLATIONS)}; got {ablation!r}.")
    L = model.cfg.n_layers
    if ablation == "zero":
        return [torch.zeros((), dtype=model.cfg.dtype, device=model.cfg.device)] * L
    if ablation == "mean":
        if means is None:
            raise DePassError("ablation='mean' needs means=mean_activations(model, reference_tokens, level=...).")
        return [means[l] for l in range(L)]
    if corrupt_tokens is None:
        raise DePassError("ablation='resample' needs corrupt_tokens=<[batch, pos] prompts of the same shape>.")
    corrupt_tokens = token_batch(model, corrupt_tokens)
    if corrupt_tokens.shape != tokens.shape:
        raise DePassError(f"corrupt_tokens must have the shape of tokens {tuple(tokens.shape)}; got {tuple(corrupt_tokens.shape)}.")
    names = [unit_hook(level, l) for l in range(L)]
    _, cache = model.run_with_cache(corrupt_tokens, names_filter=lambda n: n in names)
    return [cache[n].detach() for n in names]


def _run_ablated(model: Any, tokens: Tensor, mask: Tensor, level: Level, fills: Sequence[Tensor]) -> Tensor:
    """Logits with ``mask`` (bool ``[batch, n_layers, n_units]``) units set to ``fills``."""

    def make_hook(l: int) -> Any:
        def hook(act: Tensor, hook: Any) -> Tensor:
            m = mask[:, l][:, None, :, None] if level == "heads" else mask[:, l][:, None, :]
            return torch.where(m, fills[l].to(act), act)
        return hook

    hooks = [(unit_hook(level, l), make_hook(l)) for l in range(mask.shape[1]) if bool(mask[:, l].any())]
    return model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")


@torch.no_grad()
def ablate(
    model: Any,
    tokens: Tensor,
    mask: Tensor,
    *,
    level: Level = "heads",
    ablation: Ablation = "zero",
    means: Tensor | None = None,
    corrupt_tokens: Tensor | None = None,
) -> Tensor:
    """Logits with the masked units ablated at every position.

    Args:
        mask: bool ``[batch, n_layers, n_units]`` (per prompt) or ``[n_layers, n_units]``: units to ablate.
        ablation: ``"zero"``, ``"mean"`` (then ``means`` from :func:`mean_activations`) or
            ``"resample"`` (then ``corrupt_tokens``).

    Returns:
        ``[batch, pos, d_vocab]`` logits.
    """
    check_level(model, level)
    tokens = token_batch(model, tokens)
    L, U = model.cfg.n_layers, n_units(model, level)
    if mask.ndim == 2:
        mask = mask[None].expand(tokens.shape[0], -1, -1)
    if tuple(mask.shape) != (tokens.shape[0], L, U):
        raise DePassError(f"mask must have shape [batch, n_layers, n_units] = {(tokens.shape[0], L, U)}; got {tuple(mask.shape)}.")
    fills = ablation_fills(model, tokens, level=level, ablation=ablation, means=means, corrupt_tokens=corrupt_tokens)
    return _run_ablated(model, tokens, mask.to(model.cfg.device).bool(), level, fills)


def _metric_inputs(model: Any, B: int, target: Any, incorrect: Any) -> tuple[Tensor, Tensor | None]:
    ids = torch.tensor(target_ids(target, B, model.cfg.d_vocab))
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, B, model.cfg.d_vocab))
    return ids, bad


@torch.no_grad()
def exact_ablation_scores(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    incorrect: int | Sequence[int] | Tensor | None = None,
    level: Level = "heads",
    ablation: Ablation = "zero",
    means: Tensor | None = None,
    corrupt_tokens: Tensor | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Each unit's exact single-unit ablation effect: ``m(clean) − m(only that unit ablated)``.

    ``m`` is the target logit (or ``target − incorrect``) at the last position; larger = the unit
    matters more for the answer. One forward pass per (prompt, unit), ``batch_size`` rows at a time.

    Returns:
        ``[batch, n_layers, n_units]`` (float64, CPU).
    """
    check_level(model, level)
    tokens = token_batch(model, tokens)
    B, L, U = tokens.shape[0], model.cfg.n_layers, n_units(model, level)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DePassError(f"batch_size must be a positive integer; got {batch_size!r}.")
    ids, bad = _metric_inputs(model, B, target, incorrect)
    fills = ablation_fills(model, tokens, level=level, ablation=ablation, means=means, corrupt_tokens=corrupt_tokens)
    clean = logit_metric(model(tokens, return_type="logits"), ids, bad).double().cpu()
    N = L * U
    per_chunk = max(1, batch_size // B)
    drops = []
    for start in range(0, N, per_chunk):
        units = list(range(start, min(N, start + per_chunk)))
        n = len(units)
        mask = torch.zeros(n, B, N, dtype=torch.bool, device=tokens.device)
        mask[torch.arange(n), :, torch.tensor(units)] = True  # row (j, b) ablates unit units[j]
        rep_fills = [f if f.ndim == 0 or ablation == "mean" else f.repeat(n, *([1] * (f.ndim - 1))) for f in fills]
        logits = _run_ablated(model, tokens.repeat(n, 1), mask.reshape(n * B, L, U), level, rep_fills)
        m = logit_metric(logits, ids.repeat(n), None if bad is None else bad.repeat(n)).double().cpu()
        drops.append(clean.repeat(n) - m)  # [n * B], unit-major
    return torch.cat(drops).reshape(N, B).T.reshape(B, L, U).contiguous()


@dataclass(frozen=True)
class AblationCurve:
    """Results of ablating the top-k or bottom-k ranked units.

    Attributes:
        fractions: the ``F`` fractions of all units (``k / N`` when counts were given).
        k: ``[F]`` units ablated per prompt at each fraction.
        clean_metric: ``[batch]`` target logit (or logit difference) with nothing ablated.
        metric: ``[batch, F]`` the same after ablation.
        correct: ``[batch, F]`` bool: the answer still wins (``logit difference > 0`` when
            ``incorrect`` is given, else the target is the argmax).
        clean_correct: ``[batch]`` bool.
    """

    fractions: tuple[float, ...]
    k: tuple[int, ...]
    clean_metric: Tensor
    metric: Tensor
    correct: Tensor
    clean_correct: Tensor

    @property
    def accuracy(self) -> Tensor:
        """``[F]`` fraction of prompts still correct."""
        return self.correct.double().mean(0)


def _correct(logits: Tensor, ids: Tensor, bad: Tensor | None) -> Tensor:
    if bad is not None:
        return logit_metric(logits, ids, bad) > 0
    return logits[:, -1].argmax(-1).cpu() == ids


def _counts(fractions: Sequence[float] | None, k: Sequence[int] | None, N: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
    if k is not None:
        if fractions is not None:
            raise DePassError("give fractions or k, not both.")
        ks = tuple(k)
        if not ks or any(isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= N for x in ks):
            raise DePassError(f"k must be unit counts in [1, {N}]; got {k!r}.")
        return tuple(x / N for x in ks), ks
    fr = tuple(float(f) for f in (fractions if fractions is not None else (0.05, 0.1, 0.2, 0.3, 0.5)))
    if not fr:
        raise DePassError("fractions is empty; give at least one fraction in (0, 1].")
    return fr, tuple(top_k_count(f, N) for f in fr)


def ablation_curve(
    model: Any,
    tokens: Tensor,
    scores: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    incorrect: int | Sequence[int] | Tensor | None = None,
    level: Level = "heads",
    fractions: Sequence[float] | None = None,
    k: Sequence[int] | None = None,
    direction: Literal["top", "bottom"] = "top",
    ablation: Ablation = "zero",
    reference_tokens: Tensor | Sequence[Tensor] | None = None,
    means: Tensor | None = None,
    corrupt_tokens: Tensor | None = None,
) -> AblationCurve:
    """Ablate the ``k`` highest- (``top``) or lowest-scored (``bottom``) units and measure the answer.

    Args:
        scores: ``[batch, n_layers, n_units]`` or ``[n_layers, n_units]`` attributions (larger = more
            important for the answer; signed, as in the paper's ``DePass``; pass ``.abs()`` for ``DePass_abs``).
        target / incorrect: answer token (and the token it must beat) per prompt.
        fractions / k: fractions of all units (default 5, 10, 20, 30, 50%) or explicit unit counts.
        ablation: ``"zero"``, ``"mean"`` or ``"resample"``.
        reference_tokens / means: the set whose mean activations ``"mean"`` writes (default:
            ``tokens``), or the means themselves.
        corrupt_tokens: the prompts ``"resample"`` takes activations from.

    Returns:
        An :class:`AblationCurve`.
    """
    check_level(model, level)
    tokens = token_batch(model, tokens)
    B = tokens.shape[0]
    L, U = model.cfg.n_layers, n_units(model, level)
    if scores.ndim == 2:
        scores = scores[None].expand(B, -1, -1)
    if tuple(scores.shape) != (B, L, U):
        raise DePassError(f"scores must have shape [batch, n_layers, n_units] = {(B, L, U)} or [n_layers, n_units]; got {tuple(scores.shape)}.")
    if direction not in ("top", "bottom"):
        raise DePassError(f"direction must be 'top' or 'bottom'; got {direction!r}.")
    if not torch.isfinite(scores).all():
        raise DePassError("scores contain NaN or inf; check the attribution method's output.")
    ids, bad = _metric_inputs(model, B, target, incorrect)
    if ablation == "mean" and means is None:
        means = mean_activations(model, tokens if reference_tokens is None else reference_tokens, level=level)
    fills = ablation_fills(model, tokens, level=level, ablation=ablation, means=means, corrupt_tokens=corrupt_tokens)
    N = L * U
    fr, ks = _counts(fractions, k, N)
    flat = scores.reshape(B, N).double().cpu()
    order = torch.argsort(-flat if direction == "top" else flat, dim=1, stable=True)  # [batch, N]
    with torch.no_grad():
        clean_logits = model(tokens, return_type="logits")
    clean_metric = logit_metric(clean_logits, ids, bad).double().cpu()
    metric, correct = [], []
    for kk in ks:
        mask = torch.zeros(B, N, dtype=torch.bool)
        mask.scatter_(1, order[:, :kk], True)
        with torch.no_grad():
            logits = _run_ablated(model, tokens, mask.reshape(B, L, U).to(tokens.device), level, fills)
        metric.append(logit_metric(logits, ids, bad).double().cpu())
        correct.append(_correct(logits, ids, bad).cpu())
    return AblationCurve(fr, ks, clean_metric, torch.stack(metric, 1), torch.stack(correct, 1),
                         _correct(clean_logits, ids, bad).cpu())
