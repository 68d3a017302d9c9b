"""Component-level faithfulness: ablate the heads or neurons an attribution ranks first (or last).

Following the DePass paper (§4.2): rank every attention head (or MLP neuron) of the model by an
attribution to the answer, ablate the top-k (should hurt the most) or the bottom-k (should hurt the
least) at every position, and measure accuracy and the logit difference.

* Heads are ablated at ``blocks.l.attn.hook_z`` (``[batch, pos, head_index, d_head]``), neurons at
  ``blocks.l.mlp.hook_post`` (``[batch, pos, d_mlp]``), with scoped TL hooks (``run_with_hooks``).
* ``ablation="zero"`` writes 0; ``ablation="mean"`` writes the unit's mean activation over a
  reference batch (mean over prompts *and* positions, so prompts of any length can be used).
* Rankings may be per prompt (``[batch, n_layers, n_units]``, as in the paper, where each prompt is
  ablated by its own ranking) or shared (``[n_layers, n_units]``).
* ``k = max(1, floor(p·N))`` units for a fraction ``p > 0`` of all ``N = n_layers·n_units`` units.

Attributions: :func:`depass_head_attributions` / :func:`depass_neuron_attributions` (a DePass replay
from ``hook_resid_mid`` / ``hook_resid_post`` of each layer with one component per head / neuron and a
``rest`` component) and :func:`attribution_patching` (Nanda 2023; 2 forward + 1 backward passes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.evaluate.masking import top_k_count
from depass_tl.evaluate.token_metrics import target_ids

__all__ = [
    "AblationCurve",
    "Level",
    "ablate",
    "ablation_curve",
    "attribution_patching",
    "depass_head_attributions",
    "depass_neuron_attributions",
    "mean_activations",
    "unit_hook",
]

Level = Literal["heads", "neurons"]
Ablation = Literal["zero", "mean"]


def _check_level(model: Any, level: str) -> None:
    if level not in ("heads", "neurons"):
        raise DePassError(f"level must be 'heads' or 'neurons'; got {level!r}.")
    if level == "neurons" and (model.cfg.attn_only or model.cfg.d_mlp is None):
        raise DePassError("level='neurons' needs a model with MLPs; this one is attention-only. Use level='heads'.")


def unit_hook(level: Level, layer: int) -> str:
    """The TL hook a unit lives at: ``blocks.{layer}.attn.hook_z`` or ``blocks.{layer}.mlp.hook_post``."""
    return f"blocks.{layer}.attn.hook_z" if level == "heads" else f"blocks.{layer}.mlp.hook_post"


def _n_units(model: Any, level: Level) -> int:
    return int(model.cfg.n_heads if level == "heads" else model.cfg.d_mlp)


def _tokens(model: Any, tokens: Tensor) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise DePassError(f"tokens must be a [batch, pos] integer tensor; got {getattr(tokens, 'shape', type(tokens))}.")
    return tokens.to(model.cfg.device)


# ------------------------------------------------------------------------------- attributions
def _depass_units(
    model: Any, tokens: Tensor, target: Any, incorrect: Any, level: Level, mlp_rule: str, temperature: float
) -> Tensor:
    from depass_tl.api import replay
    from depass_tl.capture import capture
    from depass_tl.components import custom

    _check_level(model, level)
    if model.cfg.parallel_attn_mlp:
        raise DePassError("DePass unit attributions need a sequential block (parallel_attn_mlp=False).")
    tokens = _tokens(model, tokens)
    B = tokens.shape[0]
    ids = torch.tensor(target_ids(target, B, model.cfg.d_vocab))
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, B, model.cfg.d_vocab))
    L, U = model.cfg.n_layers, _n_units(model, level)
    extra = [unit_hook("heads", l) for l in range(L)] if level == "heads" else []
    run = capture(model, tokens, extra_hooks=extra)
    out = torch.zeros(B, L, U, dtype=torch.float64)
    for l in range(L):
        if level == "heads":
            z = run.acts[unit_hook("heads", l)].double()  # [batch, pos, head_index, d_head]
            units = torch.einsum("bphd,hdm->hbpm", z, model.W_O[l].detach().double())  # [head, batch, pos, d_model]
            has_mid = f"blocks.{l}.hook_resid_mid" in run.acts
            hook = f"blocks.{l}.hook_resid_mid" if has_mid else f"blocks.{l}.hook_resid_post"
            labels = [f"L{l}H{h}" for h in range(U)]
        else:
            post = run.acts[unit_hook("neurons", l)].double()  # [batch, pos, d_mlp]
            units = torch.einsum("bpn,nm->nbpm", post, model.W_out[l].detach().double())  # [d_mlp, batch, pos, d_model]
            hook = f"blocks.{l}.hook_resid_post"
            labels = [f"L{l}N{n}" for n in range(U)]
        clean = run.acts[hook].double()
        rest = clean - units.sum(0)
        spec = custom(hook, torch.cat([units, rest[None]]), labels + ["rest"])
        dc = replay(run, spec, mlp_rule=mlp_rule, temperature=temperature, names_filter=["unembed.hook_in"],
                    dtype=torch.float64)
        out[:, l] = dc.logit_attrs(ids, incorrect_tokens=bad)[:U].T.cpu()
    return out


def depass_head_attributions(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    incorrect: int | Sequence[int] | Tensor | None = None,
    mlp_rule: str = "softmax",
    temperature: float = 0.1,
) -> Tensor:
    """Each head's DePass contribution to the target logit (or ``target − incorrect``) at the last position.

    Head ``h`` of layer ``l`` is the component ``z_h @ W_O[h]`` written at ``blocks.l.hook_resid_mid``
    (``hook_resid_post`` for attention-only models), replayed through the rest of the model.

    Returns:
        ``[batch, n_layers, n_heads]``.
    """
    return _depass_units(model, tokens, target, incorrect, "heads", mlp_rule, temperature)


def depass_neuron_attributions(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    incorrect: int | Sequence[int] | Tensor | None = None,
    mlp_rule: str = "softmax",
    temperature: float = 0.1,
) -> Tensor:
    """Each MLP neuron's DePass contribution (``post_n · W_out[n]`` from ``blocks.l.hook_resid_post``).

    Returns:
        ``[batch, n_layers, d_mlp]``.
    """
    return _depass_units(model, tokens, target, incorrect, "neurons", mlp_rule, temperature)


def _logit_metric(logits: Tensor, ids: Tensor, bad: Tensor | None) -> Tensor:
    """Per prompt: ``logit[target]`` or ``logit[target] − logit[incorrect]`` at the last position."""
    last = logits[:, -1]
    m = last.gather(1, ids[:, None].to(last.device))[:, 0]
    if bad is not None:
        m = m - last.gather(1, bad[:, None].to(last.device))[:, 0]
    return m


def attribution_patching(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    incorrect: int | Sequence[int] | Tensor | None = None,
    corrupt_tokens: Tensor | None = None,
    level: Level = "heads",
) -> Tensor:
    """Attribution patching: ``(a_clean − a_corrupt) · ∂m/∂a`` at the corrupted run, summed over positions.

    ``m`` is the target logit (or ``target − incorrect``) at the last position. 2 forward passes and
    1 backward pass. With ``corrupt_tokens=None`` the corrupted activation is 0 and the gradient is
    taken at the clean run (``a · ∂m/∂a``, the DePass paper's AtP baseline before its ``|·|``).

    Returns:
        ``[batch, n_layers, n_units]``: the linear estimate of ``m(clean) − m(corrupt)`` per unit,
        from the corrupted run towards the clean one.
    """
    _check_level(model, level)
    tokens = _tokens(model, tokens)
    B = tokens.shape[0]
    ids = torch.tensor(target_ids(target, B, model.cfg.d_vocab))
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, B, model.cfg.d_vocab))
    L = model.cfg.n_layers
    names = [unit_hook(level, l) for l in range(L)]
    if corrupt_tokens is not None:
        corrupt_tokens = _tokens(model, corrupt_tokens)
        if corrupt_tokens.shape != tokens.shape:
            raise DePassError(f"corrupt_tokens must have the shape of tokens {tuple(tokens.shape)}; got {tuple(corrupt_tokens.shape)}.")
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    clean = {n: clean_cache[n].detach() for n in names}
    kept: dict[str, Tensor] = {}

    def keep_as(name: str) -> Any:
        # by the requested name: on a TransformerBridge ``hook.name`` is the canonical name of an alias
        # (``blocks.0.attn.hook_z`` fires as ``blocks.0.attn.o.hook_in``)
        def keep(act: Tensor, hook: Any) -> Tensor:
            kept[name] = act
            return act

        return keep

    grad_run = tokens if corrupt_tokens is None else corrupt_tokens
    with torch.enable_grad():
        hooks = [(n, keep_as(n)) for n in names]
        # the leaf that makes the graph reach every hook even if no parameter requires grad
        embed_leaf: dict[str, Tensor] = {}

        def grad_embed(act: Tensor, hook: Any) -> Tensor:
            embed_leaf["x"] = act.detach().requires_grad_(True)
            return embed_leaf["x"]

        logits = model.run_with_hooks(grad_run, fwd_hooks=[("hook_embed", grad_embed)] + hooks, return_type="logits")
        m = _logit_metric(logits, ids, bad).sum()
        grads = torch.autograd.grad(m, [kept[n] for n in names], allow_unused=True)
    out = []
    for n, g in zip(names, grads):
        g = torch.zeros_like(kept[n]) if g is None else g
        base = torch.zeros_like(clean[n]) if corrupt_tokens is None else kept[n].detach()
        delta = (clean[n] - base) * g  # [batch, pos, head, d_head] or [batch, pos, d_mlp]
        out.append(delta.sum(-1).sum(1) if level == "heads" else delta.sum(1))
    return torch.stack(out, dim=1).detach().cpu().double()


# ------------------------------------------------------------------------------------ ablation
@torch.no_grad()
def mean_activations(model: Any, reference_tokens: Tensor, *, level: Level = "heads") -> Tensor:
    """Each unit's mean activation over a reference batch (prompts and positions).

    Returns:
        ``[n_layers, n_heads, d_head]`` (heads) or ``[n_layers, d_mlp]`` (neurons).
    """
    _check_level(model, level)
    reference_tokens = _tokens(model, reference_tokens)
    names = [unit_hook(level, l) for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(reference_tokens, names_filter=lambda n: n in names)
    return torch.stack([cache[n].mean(dim=(0, 1)) for n in names]).detach()


@torch.no_grad()
def ablate(
    model: Any,
    tokens: Tensor,
    mask: Tensor,
    *,
    level: Level = "heads",
    ablation: Ablation = "zero",
    means: Tensor | None = None,
) -> Tensor:
    """Logits with the masked units ablated at every position.

    Args:
        mask: bool ``[batch, n_layers, n_units]`` (per prompt) or ``[n_layers, n_units]``: units to ablate.
        ablation: ``"zero"`` or ``"mean"`` (then ``means`` from :func:`mean_activations`).

    Returns:
        ``[batch, pos, d_vocab]`` logits.
    """
    _check_level(model, level)
    tokens = _tokens(model, tokens)
    L, U = model.cfg.n_layers, _n_units(model, level)
    if mask.ndim == 2:
        mask = mask[None].expand(tokens.shape[0], -1, -1)
    if tuple(mask.shape) != (tokens.shape[0], L, U):
        raise DePassError(f"mask must have shape [batch, n_layers, n_units] = {(tokens.shape[0], L, U)}; got {tuple(mask.shape)}.")
    if ablation not in ("zero", "mean"):
        raise DePassError(f"ablation must be 'zero' or 'mean'; got {ablation!r}.")
    if ablation == "mean" and means is None:
        raise DePassError("ablation='mean' needs means=mean_activations(model, reference_tokens, level=...).")
    mask = mask.to(model.cfg.device).bool()

    def make_hook(l: int) -> Any:
        def hook(act: Tensor, hook: Any) -> Tensor:
            m = mask[:, l][:, None, :, None] if level == "heads" else mask[:, l][:, None, :]
            fill = torch.zeros((), dtype=act.dtype, device=act.device) if ablation == "zero" else means[l].to(act)  # type: ignore[index]
            return torch.where(m, fill, act)
        return hook

    hooks = [(unit_hook(level, l), make_hook(l)) for l in range(L) if bool(mask[:, l].any())]
    return model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")


@dataclass(frozen=True)
class AblationCurve:
    """Results of ablating the top-k or bottom-k ranked units.

    Attributes:
        fractions: the ``F`` fractions of all units.
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
        return _logit_metric(logits, ids, bad) > 0
    return logits[:, -1].argmax(-1).cpu() == ids


def ablation_curve(
    model: Any,
    tokens: Tensor,
    scores: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    incorrect: int | Sequence[int] | Tensor | None = None,
    level: Level = "heads",
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
    direction: Literal["top", "bottom"] = "top",
    ablation: Ablation = "zero",
    reference_tokens: Tensor | None = None,
) -> AblationCurve:
    """Ablate the ``k`` highest- (``top``) or lowest-scored (``bottom``) units and measure the answer.

    Args:
        scores: ``[batch, n_layers, n_units]`` or ``[n_layers, n_units]`` attributions (larger = more
            important for the answer; signed, as in the paper's ``DePass``; pass ``.abs()`` for ``DePass_abs``).
        target / incorrect: answer token (and the token it must beat) per prompt.
        reference_tokens: the batch whose mean activations ``ablation="mean"`` writes (default: ``tokens``).

    Returns:
        An :class:`AblationCurve`.
    """
    _check_level(model, level)
    tokens = _tokens(model, tokens)
    B = tokens.shape[0]
    L, U = model.cfg.n_layers, _n_units(model, level)
    if scores.ndim == 2:
        scores = scores[None].expand(B, -1, -1)
    if tuple(scores.shape) != (B, L, U):
        raise DePassError(f"scores must have shape [batch, n_layers, n_units] = {(B, L, U)} or [n_layers, n_units]; got {tuple(scores.shape)}.")
    if direction not in ("top", "bottom"):
        raise DePassError(f"direction must be 'top' or 'bottom'; got {direction!r}.")
    if not torch.isfinite(scores).all():
        raise DePassError("scores contain NaN or inf; check the attribution method's output.")
    ids = torch.tensor(target_ids(target, B, model.cfg.d_vocab))
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, B, model.cfg.d_vocab))
    means = None
    if ablation == "mean":
        means = mean_activations(model, tokens if reference_tokens is None else reference_tokens, level=level)
    fr = tuple(float(f) for f in fractions)
    if not fr:
        raise DePassError("fractions is empty; give at least one fraction in (0, 1].")
    N = L * U
    ks = tuple(top_k_count(f, N) for f in fr)
    flat = scores.reshape(B, N).double().cpu()
    order = torch.argsort(-flat if direction == "top" else flat, dim=1, stable=True)  # [batch, N]
    with torch.no_grad():
        clean_logits = model(tokens, return_type="logits")
    clean_metric = _logit_metric(clean_logits, ids, bad).double().cpu()
    metric, correct = [], []
    for k in ks:
        mask = torch.zeros(B, N, dtype=torch.bool)
        mask.scatter_(1, order[:, :k], True)
        logits = ablate(model, tokens, mask.reshape(B, L, U), level=level, ablation=ablation, means=means)
        metric.append(_logit_metric(logits, ids, bad).double().cpu())
        correct.append(_correct(logits, ids, bad).cpu())
    return AblationCurve(fr, ks, clean_metric, torch.stack(metric, 1), torch.stack(correct, 1),
                         _correct(clean_logits, ids, bad).cpu())
