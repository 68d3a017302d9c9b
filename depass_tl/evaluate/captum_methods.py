"""Gradient and perturbation baselines from captum (the optional ``[eval]`` extra).

captum is imported lazily: without it every function here raises :class:`CaptumMissingError` saying
``pip install "depass_tl[eval]"``. The model is only driven through TransformerLens hooks
(``run_with_hooks`` on ``hook_embed``; captum's own scoped module hooks on a ``HookPoint`` for layer
attributions), so a ``HookedTransformer`` and a ``TransformerBridge`` work alike.

Token level (``[batch, pos]``, one score per input position for the target at the last position):

* :func:`integrated_gradients_with_delta` / :func:`integrated_gradients`: captum
  ``IntegratedGradients`` on the token embeddings (``hook_embed``) from a zero-embedding baseline
  (positional embeddings stay), Gauss-Legendre quadrature. Unless ``steps`` is given, the step
  count doubles from ``min_steps`` until captum's convergence delta ``|Σ_i IG_i − (f(x) − f(x'))|``
  is at most ``delta_tol`` for every prompt; the steps and the delta reached are returned.
* :func:`gradient_x_input`: captum ``InputXGradient`` on the token embeddings, summed over ``d_model``.
* :func:`occlusion`: captum ``FeatureAblation`` on the token ids: ``f(x) − f(x with token i
  replaced by replace_with)``, one position at a time.

Component level (``[batch, n_layers, n_units]``):

* :func:`layer_integrated_gradients`: captum ``LayerIntegratedGradients`` on each layer's
  ``attn.hook_z`` (heads) or ``mlp.hook_post`` (neurons), from the activation of a baseline
  (corrupted) prompt to the clean one, for the logit (difference) at the last position. captum's own
  convergence delta assumes the layer is the input layer; for an inner layer the path starts at the
  clean run with only that layer's activation replaced, so the delta is computed here against that
  run (one extra forward pass per layer).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.evaluate.token_metrics import target_ids, token_batch

__all__ = [
    "DEFAULT_DELTA_TOL",
    "CaptumMissingError",
    "IGResult",
    "gradient_x_input",
    "integrated_gradients",
    "integrated_gradients_with_delta",
    "layer_integrated_gradients",
    "occlusion",
    "require_captum",
]

INSTALL_HINT = 'pip install "depass_tl[eval]"'
DEFAULT_DELTA_TOL = 1e-2
"""Default convergence target: ``|Σ IG − (f(x) − f(x'))| ≤ 0.01`` (nats for ``metric="logprob"``)."""

GradMetric = Literal["logprob", "prob", "logit"]
Level = Literal["heads", "neurons"]


class CaptumMissingError(DePassError, ImportError):
    """captum is not installed (it is the optional ``[eval]`` extra)."""


def require_captum() -> Any:
    """Import and return ``captum.attr``, or raise :class:`CaptumMissingError` with the install command."""
    try:
        import captum.attr as attr
    except ImportError as e:
        raise CaptumMissingError(
            f"this baseline uses captum, which is not installed; run `{INSTALL_HINT}` (or `pip install captum`)."
        ) from e
    return attr


@dataclass(frozen=True)
class IGResult:
    """Integrated gradients with their convergence evidence.

    Attributes:
        scores: ``[batch, pos]`` (token level) or ``[batch, n_layers, n_units]`` (layer level).
        steps: quadrature points of the run whose scores are returned (per layer for layer IG).
        delta: max over prompts (and layers) of the absolute convergence delta of that run.
        converged: ``delta ≤ delta_tol``.

    The runs tried while searching for the step count are part of the method's cost: run it under
    :func:`~depass_tl.evaluate.budget.count_compute` to count them.
    """

    scores: Tensor
    steps: int
    delta: float
    converged: bool


def _check_metric(metric: str) -> None:
    if metric not in ("logprob", "prob", "logit"):
        raise DePassError(f"metric must be 'logprob', 'prob' or 'logit'; got {metric!r}.")


def _check_steps(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DePassError(f"{name} must be a positive integer; got {value!r}.")


def _scores(logits: Tensor, metric: str) -> Tensor:
    """``[batch, d_vocab]`` target scores at the last position (captum picks the target column)."""
    last = logits[:, -1]
    if metric == "logit":
        return last
    logp = last.log_softmax(-1)
    return logp if metric == "logprob" else logp.exp()


def _embed_forward(model: Any, metric: str) -> Any:
    """``f(embeds, tokens) -> [batch, d_vocab]`` with ``hook_embed`` replaced by ``embeds``."""

    def forward(embeds: Tensor, tokens: Tensor) -> Tensor:
        def put(act: Tensor, hook: Any) -> Tensor:
            return embeds.to(act.dtype)

        return _scores(model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", put)], return_type="logits"), metric)

    return forward


def _clean_embeddings(model: Any, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter="hook_embed")
    return cache["hook_embed"].detach()


def integrated_gradients_with_delta(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    metric: GradMetric = "logprob",
    steps: int | None = None,
    delta_tol: float = DEFAULT_DELTA_TOL,
    min_steps: int = 16,
    max_steps: int = 512,
) -> IGResult:
    """captum integrated gradients on the token embeddings, with a step count that reaches ``delta_tol``.

    Args:
        metric: ``f`` = target ``"logprob"`` (default), ``"prob"`` or ``"logit"`` at the last position.
        steps: a fixed number of quadrature points (no search); ``None``: double from ``min_steps``
            up to ``max_steps`` until the max absolute convergence delta is ``≤ delta_tol``.
        delta_tol: the stated convergence target, in the units of ``f``.

    Returns:
        An :class:`IGResult` (``scores`` ``[batch, pos]``, float64 on the CPU). If ``max_steps`` does
        not reach ``delta_tol``, the result says ``converged=False`` and a warning is issued.

    Raises:
        CaptumMissingError: captum is not installed.
        DePassError: bad tokens, metric or step counts.
    """
    attr = require_captum()
    _check_metric(metric)
    _check_steps("min_steps", min_steps)
    _check_steps("max_steps", max_steps)
    if steps is not None:
        _check_steps("steps", steps)
    if not delta_tol > 0:
        raise DePassError(f"delta_tol must be positive; got {delta_tol!r}.")
    tokens = token_batch(model, tokens)
    ids = target_ids(target, tokens.shape[0], model.cfg.d_vocab)
    embed = _clean_embeddings(model, tokens)
    ig = attr.IntegratedGradients(_embed_forward(model, metric))
    schedule = [steps] if steps is not None else _doubling(min_steps, max_steps)
    for n in schedule:
        with torch.enable_grad():
            a, d = ig.attribute(embed, baselines=torch.zeros_like(embed), target=ids, additional_forward_args=(tokens,),
                                n_steps=n, method="gausslegendre", return_convergence_delta=True)
        delta = float(d.detach().abs().max())
        if delta <= delta_tol:
            break
    converged = delta <= delta_tol
    if not converged and steps is None:
        warnings.warn(f"integrated gradients did not reach |delta| <= {delta_tol:g} in {max_steps} steps "
                      f"(|delta| = {delta:.3g}); the result says converged=False.", stacklevel=2)
    scores = a.detach().sum(-1).cpu().double()
    return IGResult(scores, n, delta, converged)


def _doubling(start: int, stop: int) -> list[int]:
    out, n = [], start
    while n < stop:
        out.append(n)
        n *= 2
    return out + [stop]


def integrated_gradients(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    metric: GradMetric = "logprob",
    steps: int | None = None,
    delta_tol: float = DEFAULT_DELTA_TOL,
) -> Tensor:
    """The scores of :func:`integrated_gradients_with_delta`: ``[batch, pos]``.

    Examples:
        >>> import torch
        >>> from depass_tl.subspace_patching.examples import distilled_model
        >>> model = distilled_model()  # logit[0] − logit[3] = (the last token's id) at the last position
        >>> integrated_gradients(model, torch.tensor([[0, 2]]), 0, metric="logit", steps=4)
        tensor([[0., 2.]], dtype=torch.float64)
    """
    return integrated_gradients_with_delta(model, tokens, target, metric=metric, steps=steps, delta_tol=delta_tol).scores


def gradient_x_input(
    model: Any, tokens: Tensor, target: int | Sequence[int] | Tensor, *, metric: GradMetric = "logprob"
) -> Tensor:
    """captum ``InputXGradient`` on the token embeddings, summed over ``d_model``: ``[batch, pos]``."""
    attr = require_captum()
    _check_metric(metric)
    tokens = token_batch(model, tokens)
    ids = target_ids(target, tokens.shape[0], model.cfg.d_vocab)
    embed = _clean_embeddings(model, tokens)
    with torch.enable_grad():
        a = attr.InputXGradient(_embed_forward(model, metric)).attribute(
            embed.clone().requires_grad_(True), target=ids, additional_forward_args=(tokens,))
    return a.detach().sum(-1).cpu().double()


def occlusion(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    replace_with: int = 0,
    metric: GradMetric = "logprob",
) -> Tensor:
    """captum ``FeatureAblation`` on token ids: ``f(x) − f(x with position i set to replace_with)``; ``[batch, pos]``.

    Every position is occluded on its own (BOS and the last position too; the masking protocols
    never rank those). All occlusions of a batch run as one forward pass.
    """
    attr = require_captum()
    _check_metric(metric)
    tokens = token_batch(model, tokens)
    if isinstance(replace_with, bool) or not isinstance(replace_with, int) or not 0 <= replace_with < model.cfg.d_vocab:
        raise DePassError(f"replace_with must be a token id in [0, {model.cfg.d_vocab}); got {replace_with!r}.")
    ids = target_ids(target, tokens.shape[0], model.cfg.d_vocab)

    def forward(toks: Tensor) -> Tensor:
        return _scores(model(toks, return_type="logits"), metric)

    with torch.no_grad():
        a = attr.FeatureAblation(forward).attribute(tokens, baselines=replace_with, target=ids,
                                                    perturbations_per_eval=tokens.shape[1])
    return a.detach().cpu().double()


def _unit_hook(level: str, layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z" if level == "heads" else f"blocks.{layer}.mlp.hook_post"


def _as_hook_view(a: Tensor, shape: tuple[int, ...]) -> Tensor:
    """captum sees the HookPoint module's raw output; a Bridge's ``attn.hook_z`` is ``[batch, pos,
    n_heads·d_head]`` there and ``[batch, pos, n_heads, d_head]`` in TL hooks (heads are contiguous)."""
    if tuple(a.shape) == shape:
        return a
    if a.numel() != math.prod(shape) or tuple(a.shape[:2]) != shape[:2]:
        raise DePassError(f"captum's layer attribution has shape {tuple(a.shape)}, the hook's activation {shape}; "
                          "this model's hook layout is not supported by layer_integrated_gradients.")
    return a.reshape(shape)


def layer_integrated_gradients(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    baseline_tokens: Tensor,
    incorrect: int | Sequence[int] | Tensor | None = None,
    level: Level = "heads",
    steps: int | None = None,
    delta_tol: float = DEFAULT_DELTA_TOL,
    min_steps: int = 8,
    max_steps: int = 256,
) -> IGResult:
    """captum ``LayerIntegratedGradients`` per layer, from ``baseline_tokens``' activation to the clean one.

    ``m`` is ``logit[target]`` (or ``logit[target] − logit[incorrect]``) at the last position. For each
    layer ``l`` the path moves only that layer's units (``attn.hook_z`` or ``mlp.hook_post``, all
    positions) from the baseline run's values to the clean ones, everything downstream recomputed;
    a unit's score is its attribution summed over positions (and ``d_head``). Per layer, the scores
    sum to ``m(clean) − m(clean with layer l's units from the baseline run)`` up to the delta.

    Returns:
        An :class:`IGResult` with ``scores`` ``[batch, n_layers, n_units]``; ``steps`` and ``delta``
        are the largest over layers.

    Raises:
        CaptumMissingError: captum is not installed.
        DePassError: bad level, shapes or step counts.
    """
    attr = require_captum()
    if level not in ("heads", "neurons"):
        raise DePassError(f"level must be 'heads' or 'neurons'; got {level!r}.")
    if level == "neurons" and (model.cfg.attn_only or model.cfg.d_mlp is None):
        raise DePassError("level='neurons' needs a model with MLPs; this one is attention-only. Use level='heads'.")
    tokens = token_batch(model, tokens)
    baseline_tokens = token_batch(model, baseline_tokens)
    if baseline_tokens.shape != tokens.shape:
        raise DePassError(f"baseline_tokens must have the shape of tokens {tuple(tokens.shape)}; "
                          f"got {tuple(baseline_tokens.shape)}.")
    for name, value in (("min_steps", min_steps), ("max_steps", max_steps)):
        _check_steps(name, value)
    if steps is not None:
        _check_steps("steps", steps)
    if not delta_tol > 0:
        raise DePassError(f"delta_tol must be positive; got {delta_tol!r}.")
    B = tokens.shape[0]
    ids = torch.tensor(target_ids(target, B, model.cfg.d_vocab), device=tokens.device)
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, B, model.cfg.d_vocab), device=tokens.device)

    def metric(logits: Tensor) -> Tensor:
        last = logits[:, -1]
        m = last.gather(1, ids.repeat(last.shape[0] // B)[:, None])[:, 0]
        if bad is not None:
            m = m - last.gather(1, bad.repeat(last.shape[0] // B)[:, None])[:, 0]
        return m

    def forward(toks: Tensor) -> Tensor:
        return metric(model(toks, return_type="logits"))

    names = [_unit_hook(level, l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        clean_m = forward(tokens).double()
        _, base_cache = model.run_with_cache(baseline_tokens, names_filter=lambda n: n in names)
    schedule = [steps] if steps is not None else _doubling(min_steps, max_steps)
    out, worst_delta, worst_steps = [], 0.0, 0
    for name in names:
        with torch.no_grad():
            patched = base_cache[name]
            end_m = metric(model.run_with_hooks(tokens, fwd_hooks=[(name, lambda act, hook: patched.to(act.dtype))],
                                                return_type="logits")).double()
        lig = attr.LayerIntegratedGradients(forward, model.hook_dict[name])
        for n in schedule:
            with torch.enable_grad():
                a = lig.attribute(tokens, baselines=baseline_tokens, n_steps=n, method="gausslegendre")
            a = a.detach().double()
            delta = float((a.flatten(1).sum(1).cpu() - (clean_m - end_m).cpu()).abs().max())
            if delta <= delta_tol:
                break
        worst_delta, worst_steps = max(worst_delta, delta), max(worst_steps, n)
        a = _as_hook_view(a, tuple(base_cache[name].shape))
        out.append(a.sum(dim=(1, 3)) if level == "heads" else a.sum(1))  # [batch, n_units]
    converged = worst_delta <= delta_tol
    if not converged and steps is None:
        warnings.warn(f"layer integrated gradients did not reach |delta| <= {delta_tol:g} in {max_steps} steps "
                      f"(|delta| = {worst_delta:.3g}); the result says converged=False.", stacklevel=2)
    return IGResult(torch.stack(out, dim=1).cpu(), worst_steps, worst_delta, converged)
