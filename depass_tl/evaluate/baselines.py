"""Token attribution methods to compare: DePass (every MLP rule) and the usual baselines.

Every method has the same call shape, ``method(model, tokens, target) -> [batch, pos]`` (or an
:class:`Attribution` carrying the scores and what the method reports about itself): one score per
input position for the target token predicted at the last position (larger = more relevant).

* :func:`depass_token_attributions`: each token's exact contribution to the target logit
  (``DePassCache.logit_attrs``), for an MLP rule and temperature; :func:`depass_variants` lists one
  variant per rule of the replay's rule registry (``softmax`` at several temperatures), so a new
  rule joins every table by itself.
* From captum (:mod:`~depass_tl.evaluate.captum_methods`, the optional ``[eval]`` extra):
  :func:`integrated_gradients` with a convergence-delta-controlled step count,
  :func:`gradient_x_input`, :func:`occlusion`.
* Our own, where captum has nothing: :func:`attention_rollout` (Abnar & Zuidema 2020,
  ``Π_l (0.5·Ā_l + 0.5·I)`` with ``Ā_l`` the head-averaged pattern, read at the last query row),
  :func:`last_layer_attention`, :func:`random_attributions` (the floor every method must beat).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.evaluate.captum_methods import (
    DEFAULT_DELTA_TOL,
    gradient_x_input,
    integrated_gradients,
    integrated_gradients_with_delta,
    occlusion,
    require_captum,
)
from depass_tl.evaluate.token_metrics import target_ids, token_batch

__all__ = [
    "Attribution",
    "TokenMethod",
    "as_attribution",
    "attention_rollout",
    "depass_token_attributions",
    "depass_variants",
    "gradient_x_input",
    "integrated_gradients",
    "last_layer_attention",
    "mlp_rules",
    "occlusion",
    "prompt_seed",
    "random_attributions",
    "token_methods",
]

DEFAULT_TEMPERATURES: tuple[float, ...] = (0.01, 0.1, 1.0)


@dataclass(frozen=True)
class Attribution:
    """Scores and what a method reports about its own cost and accuracy.

    Attributes:
        scores: ``[batch, pos]`` (tokens) or ``[batch, n_layers, n_units]`` (components).
        replay: DePass component streams replayed per prompt (0 for other methods).
        info: other numbers, e.g. ``{"ig_steps": 32, "ig_delta": 0.004}``.
    """

    scores: Tensor
    replay: int = 0
    info: Mapping[str, float] = field(default_factory=dict)


TokenMethod = Callable[[Any, Tensor, Any], "Tensor | Attribution"]


def as_attribution(out: Tensor | Attribution) -> Attribution:
    """Wrap a plain score tensor; pass an :class:`Attribution` through."""
    if isinstance(out, Attribution):
        return out
    if isinstance(out, Tensor):
        return Attribution(out)
    raise DePassError(f"an attribution method must return a Tensor or an Attribution; got {type(out).__name__}.")


def _registered_rules() -> list[tuple[str, bool]]:
    """``(name, takes a temperature)`` for every MLP rule the replay engine knows, in registry order."""
    from depass_tl.replay.rules import get_rule, rule_names

    return [(name, hasattr(get_rule(name), "temperature")) for name in rule_names()]


def mlp_rules() -> tuple[str, ...]:
    """The MLP rules the replay engine knows, in its registry order."""
    return tuple(name for name, _ in _registered_rules())


def depass_variants(
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES, *, attn_only: bool = False
) -> dict[str, dict[str, Any]]:
    """Display name -> ``{"mlp_rule": ..., "temperature": ...}`` for every rule (and temperature).

    On an attention-only model every rule gives the same numbers, so there is one variant.

    Examples:
        >>> list(depass_variants((0.1, 1.0)))[:3]
        ['depass softmax T=0.1', 'depass softmax T=1', 'depass ratio']
        >>> depass_variants(attn_only=True)
        {'depass (no MLP: every rule)': {'mlp_rule': 'softmax', 'temperature': 0.1}}
    """
    if attn_only:
        return {"depass (no MLP: every rule)": {"mlp_rule": "softmax", "temperature": 0.1}}
    out: dict[str, dict[str, Any]] = {}
    for rule, takes_temperature in _registered_rules():
        if takes_temperature:
            for t in temperatures:
                out[f"depass {rule} T={t:g}"] = {"mlp_rule": rule, "temperature": float(t)}
        else:
            out[f"depass {rule}"] = {"mlp_rule": rule, "temperature": 0.1}
    return out


def _depass_tokens(model: Any, tokens: Tensor, target: Any, incorrect: Any, mlp_rule: str,
                   temperature: float) -> Attribution:
    from depass_tl.api import run_with_depass

    tokens = token_batch(model, tokens)
    ids = torch.tensor(target_ids(target, tokens.shape[0], model.cfg.d_vocab))
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, tokens.shape[0], model.cfg.d_vocab))
    _, dc = run_with_depass(model, tokens, mlp_rule=mlp_rule, temperature=temperature, names_filter=["unembed.hook_in"])
    attrs = dc.logit_attrs(ids, incorrect_tokens=bad)  # [component, batch]
    return Attribution(attrs[: tokens.shape[1]].T.detach().cpu().double(), replay=len(dc.labels))


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
    return _depass_tokens(model, tokens, target, incorrect, mlp_rule, temperature).scores


def _patterns(model: Any, tokens: Tensor) -> list[Tensor]:
    """Head-averaged attention patterns per layer: ``[batch, query_pos, key_pos]``."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return [cache[n].mean(1).double().cpu() for n in names]


def attention_rollout(model: Any, tokens: Tensor, target: Any = None) -> Tensor:
    """Attention rollout at the last query position: ``[batch, pos]`` (``target`` is ignored)."""
    tokens = token_batch(model, tokens)
    pats = _patterns(model, tokens)
    eye = torch.eye(tokens.shape[1], dtype=torch.float64)
    rollout = eye.expand_as(pats[0])
    for a in pats:  # rollout_l = (0.5 A_l + 0.5 I) @ rollout_{l-1}
        rollout = (0.5 * a + 0.5 * eye) @ rollout
    return rollout[:, -1].clone()


def last_layer_attention(model: Any, tokens: Tensor, target: Any = None) -> Tensor:
    """The last layer's head-averaged attention from the last position: ``[batch, pos]``."""
    tokens = token_batch(model, tokens)
    return _patterns(model, tokens)[-1][:, -1].clone()


def prompt_seed(seed: int, row: Sequence[int]) -> int:
    """A generator seed from ``seed`` and a prompt's token ids (random baselines per prompt, batch-independent)."""
    digest = hashlib.sha256(repr((seed, list(row))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_attributions(model: Any, tokens: Tensor, target: Any = None, *, seed: int = 0) -> Tensor:
    """Uniform random scores, seeded per prompt by ``seed`` and the prompt's tokens: ``[batch, pos]``.

    A prompt gets the same scores whatever batch it is in (so per-prompt results can be recomputed).
    """
    rows = [torch.rand(len(r), generator=torch.Generator().manual_seed(prompt_seed(seed, r)), dtype=torch.float64)
            for r in tokens.tolist()]
    return torch.stack(rows) if rows else torch.zeros(tuple(tokens.shape), dtype=torch.float64)


def _ig_method(model: Any, tokens: Tensor, target: Any, *, delta_tol: float) -> Attribution:
    r = integrated_gradients_with_delta(model, tokens, target, delta_tol=delta_tol)
    return Attribution(r.scores, info={"ig_steps": float(r.steps), "ig_delta": r.delta,
                                       "ig_converged": float(r.converged)})


def token_methods(
    *,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    attn_only: bool = False,
    captum: bool = True,
    replace_with: int = 0,
    ig_delta: float = DEFAULT_DELTA_TOL,
    seed: int = 0,
) -> dict[str, TokenMethod]:
    """The standard set of token attribution methods, by display name.

    DePass with every rule (:func:`depass_variants`); from captum, integrated gradients (step count
    reaching ``|delta| ≤ ig_delta``), gradient × input and occlusion by ``replace_with``; attention
    rollout; last-layer attention; random.

    Args:
        attn_only: the model has no MLPs (one DePass variant; every rule coincides).
        captum: include the captum baselines (needs the ``[eval]`` extra; checked here).

    Raises:
        CaptumMissingError: ``captum=True`` and captum is not installed.

    Examples:
        >>> list(token_methods(temperatures=(0.1,), captum=False))
        ['depass softmax T=0.1', 'depass ratio', 'depass max', 'depass taylor', 'attention rollout', 'last-layer attention', 'random']
    """
    methods: dict[str, TokenMethod] = {}
    for name, kw in depass_variants(temperatures, attn_only=attn_only).items():
        methods[name] = partial(_depass_tokens, incorrect=None, **kw)
    if captum:
        require_captum()
        methods["integrated gradients (captum)"] = partial(_ig_method, delta_tol=ig_delta)
        methods["grad x input (captum)"] = gradient_x_input
        methods["occlusion (captum)"] = partial(occlusion, replace_with=replace_with)
    methods["attention rollout"] = attention_rollout
    methods["last-layer attention"] = last_layer_attention
    methods["random"] = partial(random_attributions, seed=seed)
    return methods
