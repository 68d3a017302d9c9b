"""A small distributed-alignment-search (DAS) trainer: learn a subspace whose patch moves the output.

DAS (Geiger et al.; the 1-D form used by Makelov et al., ICLR 2024) learns an orthonormal basis
``V ∈ R^{d×k}`` at one hook such that the interchange intervention ``h + V Vᵀ (h' − h)`` (base run ``h``,
source run ``h'``) makes the base run behave like the source run, as judged by the user's metric.
``V`` is parametrised with ``torch.nn.utils.parametrizations.orthogonal`` and trained with Adam;
the model's weights are frozen (their ``requires_grad`` flags are restored afterwards, and the model
is otherwise never touched). A learned direction is exactly what the illusion report
(:func:`depass_tl.subspace_patching.illusion_report`) is meant to audit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from depass_tl.errors import DePassError
from depass_tl.subspace_patching.setters import Positions, subspace_patch

__all__ = ["DASResult", "metric_per_example", "train_das"]

Metric = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class DASResult:
    """Output of :func:`train_das`.

    Attributes:
        basis: ``[d, k]`` learned orthonormal basis (detached).
        losses: Training loss at every step (before the update of that step).
    """

    basis: Tensor
    losses: tuple[float, ...]


def metric_per_example(metric: Metric, logits: Tensor) -> Tensor:
    """Call a metric and check it returns a scalar or a ``[batch]`` vector."""
    value = metric(logits)
    if not isinstance(value, Tensor) or value.ndim > 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise DePassError(
            f"metric must map logits [batch, pos, d_vocab] to a scalar tensor or a [batch] tensor, "
            f"got {shape}"
        )
    if value.ndim == 1 and value.shape[0] != logits.shape[0]:
        raise DePassError(
            f"metric returned {value.shape[0]} values for a batch of {logits.shape[0]}; return one "
            "value per example or a scalar"
        )
    return value


def train_das(
    model: Any,
    base_tokens: Int[Tensor, "batch pos"],
    source_tokens: Int[Tensor, "batch_s pos_s"],
    hook_name: str,
    metric: Metric,
    *,
    k: int = 1,
    pos: Positions = -1,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    objective: str = "match",
    progress: bool = True,
) -> DASResult:
    """Learn a ``k``-dimensional subspace at ``hook_name`` by interchange intervention.

    Objectives (``metric`` maps logits to one value per example, ``[batch]``, or a scalar):

    * ``"match"`` (default): minimise ``mean((metric(patched) − metric(source run))²)``, i.e. the
      patched base run should reproduce the source run's metric (bounded; recommended).
    * ``"maximize"``: minimise ``−mean(metric(patched))`` (e.g. a log-probability of the source
      answer). An unbounded metric such as a raw logit difference can overshoot the source value.

    Args:
        model: A ``HookedTransformer`` (anything with ``run_with_hooks``/``run_with_cache``).
        base_tokens: Base (TL: corrupted) inputs ``[batch, pos]``.
        source_tokens: Source (TL: clean) inputs, same shape as ``base_tokens`` (checked).
        hook_name: Full TL hook name, e.g. ``"blocks.0.mlp.hook_post"``.
        metric: ``logits -> [batch] or scalar``.
        k: Subspace dimension.
        pos: Positions to patch (default: the last one).
        steps: Adam steps (full batch).
        lr: Adam learning rate.
        seed: Seed for the initial basis (the global RNG state is left unchanged).
        objective: ``"match"`` or ``"maximize"``.
        progress: Show a tqdm progress bar.

    Returns:
        :class:`DASResult` with the basis ``[d, k]`` and the loss history.

    Raises:
        DePassError: On bad shapes, an unknown hook, a bad ``k``/``steps``/``lr`` or objective.

    Examples:
        >>> from depass_tl.subspace_patching.examples import distilled_model, distilled_tokens, logit_diff
        >>> res = train_das(distilled_model(), distilled_tokens(1, 2), distilled_tokens(2, 3),
        ...                 "blocks.0.mlp.hook_post", logit_diff, steps=100, progress=False)
        >>> res.basis.shape, res.losses[-1] < 1e-3 * res.losses[0]
        (torch.Size([3, 1]), True)
    """
    if objective not in ("match", "maximize"):
        raise DePassError(f"objective must be 'match' or 'maximize', got {objective!r}")
    if base_tokens.shape != source_tokens.shape or base_tokens.ndim != 2:
        raise DePassError(
            f"base_tokens and source_tokens must both be [batch, pos] of the same shape, got "
            f"{tuple(base_tokens.shape)} and {tuple(source_tokens.shape)}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DePassError(f"steps must be a positive int, got {steps!r}")
    if not lr > 0:
        raise DePassError(f"lr must be positive, got {lr!r}")
    if hook_name not in model.hook_dict:
        raise DePassError(
            f"hook {hook_name!r} is not a hook of this model; use a full TL hook name such as "
            "'blocks.0.mlp.hook_post' (see model.hook_dict)"
        )
    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(source_tokens, names_filter=[hook_name])
        source_act = source_cache[hook_name].detach()
        target = metric_per_example(metric, source_logits).detach()
    d = source_act.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise DePassError(f"k must be an int in [1, d={d}], got {k!r}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(k, d, bias=False).to(dtype=source_act.dtype, device=source_act.device)
        rotation = nn.utils.parametrizations.orthogonal(layer)
    optimizer = torch.optim.Adam(rotation.parameters(), lr=lr)

    def hook_fn(activation: Tensor, hook: Any) -> Tensor:
        return subspace_patch(activation, source_act, rotation.weight, pos=pos)

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    losses: list[float] = []
    try:
        for p in params:
            p.requires_grad_(False)
        for _ in tqdm(range(steps), desc="DAS", disable=not progress):
            optimizer.zero_grad()
            logits = model.run_with_hooks(base_tokens, fwd_hooks=[(hook_name, hook_fn)])
            value = metric_per_example(metric, logits)
            if objective == "match":
                loss = ((value - target) ** 2).mean()
            else:
                loss = -value.mean()
            if not bool(torch.isfinite(loss.detach())):
                raise DePassError(f"DAS loss became {float(loss.detach())}; lower lr or check the metric")
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    with torch.no_grad():
        basis = rotation.weight.detach().clone()
    return DASResult(basis=basis, losses=tuple(losses))
