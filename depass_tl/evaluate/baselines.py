"""Token attribution methods to compare: DePass (each MLP rule) and the usual baselines.

Every method has the same call shape, ``method(model, tokens, target) -> [batch, pos]``: one score
per input position for the target token predicted at the last position (larger = more relevant).

* :func:`depass_token_attributions`: each token's exact contribution to the target logit
  (``DePassCache.logit_attrs``), for an MLP rule and temperature.
* :func:`gradient_x_input`: ``Σ_d e_{i,d} · ∂f/∂e_{i,d}`` with ``e`` the token embeddings
  (``hook_embed``) and ``f`` the target log-probability (the DePass paper's ``signed``).
* :func:`integrated_gradients`: Sundararajan et al. 2017 on the token embeddings, zero baseline,
  ``steps + 1`` points ``α = 0, 1/steps, …, 1`` averaged (as the DePass paper's scripts);
  positional embeddings stay in place.
* :func:`attention_rollout`: Abnar & Zuidema 2020, ``Π_l (0.5·Ā_l + 0.5·I)`` with ``Ā_l`` the
  head-averaged pattern, read at the last query row.
* :func:`last_layer_attention`: the last layer's head-averaged pattern at the last query row.
* :func:`random_attributions`: uniform noise from a seeded generator (the floor every method must beat).

Gradients are taken with ``torch.autograd.grad`` with respect to a leaf put in at ``hook_embed`` by a
scoped hook (``run_with_hooks`` removes it, also on error); no parameter's ``.grad`` is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.evaluate.token_metrics import target_ids

__all__ = [
    "TokenMethod",
    "attention_rollout",
    "depass_token_attributions",
    "gradient_x_input",
    "integrated_gradients",
    "last_layer_attention",
    "random_attributions",
    "token_methods",
]

TokenMethod = Callable[[Any, Tensor, Any], Tensor]
GradMetric = Literal["logprob", "prob", "logit"]


def _tokens(model: Any, tokens: Tensor) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise DePassError(f"tokens must be a [batch, pos] integer tensor; got {getattr(tokens, 'shape', type(tokens))}.")
    return tokens.to(model.cfg.device)


def depass_token_attributions(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    mlp_rule: str = "softmax",
    temperature: float = 0.1,
    incorrect: int | Sequence[int] | Tensor | None = None,
) -> Tensor:
    """DePass: each token's contribution to the target logit (or logit difference) at the last position.

    Returns:
        ``[batch, pos]`` (the ``bias`` component is left out; it is no token).
    """
    from depass_tl.api import run_with_depass

    tokens = _tokens(model, tokens)
    ids = torch.tensor(target_ids(target, tokens.shape[0], model.cfg.d_vocab))
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, tokens.shape[0], model.cfg.d_vocab))
    _, dc = run_with_depass(model, tokens, mlp_rule=mlp_rule, temperature=temperature, names_filter=["unembed.hook_in"])
    attrs = dc.logit_attrs(ids, incorrect_tokens=bad)  # [component, batch]
    return attrs[: tokens.shape[1]].T.detach().cpu().double()


def _score(logits: Tensor, ids: Tensor, metric: GradMetric) -> Tensor:
    last = logits[:, -1]  # [batch, d_vocab]
    if metric == "logit":
        return last.gather(1, ids[:, None])[:, 0]
    logp = last.log_softmax(-1).gather(1, ids[:, None])[:, 0]
    return logp if metric == "logprob" else logp.exp()


def _embed_grads(model: Any, tokens: Tensor, ids: Tensor, scales: Tensor, metric: GradMetric) -> tuple[Tensor, Tensor]:
    """Gradients of ``f`` w.r.t. the token embeddings scaled by each of ``scales``: ``[S, batch, pos, d_model]``.

    Also returns the clean embeddings ``[batch, pos, d_model]``.
    """
    if metric not in ("logprob", "prob", "logit"):
        raise DePassError(f"metric must be 'logprob', 'prob' or 'logit'; got {metric!r}.")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter="hook_embed")
    embed = cache["hook_embed"].detach()  # [batch, pos, d_model]
    S, B = scales.shape[0], tokens.shape[0]
    leaf = (scales.to(embed)[:, None, None, None] * embed[None]).reshape(S * B, *embed.shape[1:])
    leaf = leaf.detach().requires_grad_(True)

    def put_leaf(act: Tensor, hook: Any) -> Tensor:
        return leaf

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens.repeat(S, 1), fwd_hooks=[("hook_embed", put_leaf)], return_type="logits")
        f = _score(logits, ids.repeat(S).to(logits.device), metric)
        (grad,) = torch.autograd.grad(f.sum(), leaf)
    return grad.reshape(S, B, *embed.shape[1:]), embed


def gradient_x_input(
    model: Any, tokens: Tensor, target: int | Sequence[int] | Tensor, *, metric: GradMetric = "logprob"
) -> Tensor:
    """Gradient × input on the token embeddings: ``Σ_d e_{i,d} ∂f/∂e_{i,d}``; ``[batch, pos]``."""
    tokens = _tokens(model, tokens)
    ids = torch.tensor(target_ids(target, tokens.shape[0], model.cfg.d_vocab), device=tokens.device)
    grad, embed = _embed_grads(model, tokens, ids, torch.ones(1), metric)
    return (grad[0] * embed).sum(-1).detach().cpu().double()


def integrated_gradients(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    steps: int = 32,
    metric: GradMetric = "logprob",
    chunk: int = 8,
) -> Tensor:
    """Integrated gradients on the token embeddings from a zero baseline; ``[batch, pos]``.

    ``IG_i = Σ_d e_{i,d} · mean_{s=0..steps} ∂f/∂e_{i,d}(s/steps · e)``; sums over positions to about
    ``f(x) − f(embeddings = 0)`` (exactly when ``f`` is linear in the embeddings).

    Args:
        steps: number of path intervals (``steps + 1`` gradient evaluations).
        chunk: path points per forward/backward pass.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DePassError(f"steps must be a positive integer; got {steps!r}.")
    tokens = _tokens(model, tokens)
    ids = torch.tensor(target_ids(target, tokens.shape[0], model.cfg.d_vocab), device=tokens.device)
    alphas = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    total, embed = None, None
    for start in range(0, steps + 1, chunk):
        grad, embed = _embed_grads(model, tokens, ids, alphas[start : start + chunk], metric)
        part = grad.sum(0)
        total = part if total is None else total + part
    assert total is not None and embed is not None
    return (total / (steps + 1) * embed).sum(-1).detach().cpu().double()


def _patterns(model: Any, tokens: Tensor) -> list[Tensor]:
    """Head-averaged attention patterns per layer: ``[batch, query_pos, key_pos]``."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return [cache[n].mean(1).double().cpu() for n in names]


def attention_rollout(model: Any, tokens: Tensor, target: Any = None) -> Tensor:
    """Attention rollout at the last query position: ``[batch, pos]`` (``target`` is ignored)."""
    tokens = _tokens(model, tokens)
    pats = _patterns(model, tokens)
    eye = torch.eye(tokens.shape[1], dtype=torch.float64)
    rollout = eye.expand_as(pats[0])
    for a in pats:  # rollout_l = (0.5 A_l + 0.5 I) @ rollout_{l-1}
        rollout = (0.5 * a + 0.5 * eye) @ rollout
    return rollout[:, -1].clone()


def last_layer_attention(model: Any, tokens: Tensor, target: Any = None) -> Tensor:
    """The last layer's head-averaged attention from the last position: ``[batch, pos]``."""
    tokens = _tokens(model, tokens)
    return _patterns(model, tokens)[-1][:, -1].clone()


def random_attributions(model: Any, tokens: Tensor, target: Any = None, *, seed: int = 0) -> Tensor:
    """Uniform random scores from ``torch.Generator().manual_seed(seed)``: ``[batch, pos]``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(tokens.shape), generator=gen, dtype=torch.float64)


def token_methods(
    *,
    temperatures: Sequence[float] = (0.01, 0.1, 1.0),
    ig_steps: int = 32,
    seed: int = 0,
) -> dict[str, TokenMethod]:
    """The standard set of token attribution methods, by display name.

    DePass with the softmax rule at each temperature, the ratio rule and the max rule; gradient ×
    input; integrated gradients; attention rollout; last-layer attention; random.

    Examples:
        >>> list(token_methods(temperatures=(0.1,)))
        ['depass softmax T=0.1', 'depass ratio', 'depass max', 'grad x input', 'integrated gradients', 'attention rollout', 'last-layer attention', 'random']
    """
    methods: dict[str, TokenMethod] = {}
    for t in temperatures:
        methods[f"depass softmax T={t:g}"] = partial(depass_token_attributions, mlp_rule="softmax", temperature=t)
    methods["depass ratio"] = partial(depass_token_attributions, mlp_rule="ratio")
    methods["depass max"] = partial(depass_token_attributions, mlp_rule="max")
    methods["grad x input"] = gradient_x_input
    methods["integrated gradients"] = partial(integrated_gradients, steps=ig_steps)
    methods["attention rollout"] = attention_rollout
    methods["last-layer attention"] = last_layer_attention
    methods["random"] = partial(random_attributions, seed=seed)
    return methods
