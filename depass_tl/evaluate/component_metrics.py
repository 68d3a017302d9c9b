"""Component-level attributions: a score per attention head or MLP neuron for the answer.

* :func:`depass_head_attributions` / :func:`depass_neuron_attributions`: a DePass replay from
  ``hook_resid_mid`` / ``hook_resid_post`` of each layer with one component per head (``z_h W_O[h]``)
  / neuron (``post_n W_out[n]``) and a ``rest`` component; the unit's exact share of the target logit
  (or logit difference) with the downstream attention patterns, norm scales and MLP coefficients frozen.
* :func:`attribution_patching` (Nanda 2023): ``(a_clean − a_corrupt) · ∂m/∂a``; 2 forward + 1
  backward passes.
* captum's layer integrated gradients and exact per-unit ablation live in
  :mod:`~depass_tl.evaluate.captum_methods` and :mod:`~depass_tl.evaluate.ablation`.

Heads live at ``blocks.l.attn.hook_z`` (``[batch, pos, head_index, d_head]``), neurons at
``blocks.l.mlp.hook_post`` (``[batch, pos, d_mlp]``). The weights are read through
:func:`depass_tl.model_view.read_model_view` (via the capture), so ``HookedTransformer`` and
``TransformerBridge`` models work alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.evaluate.token_metrics import target_ids, token_batch

__all__ = [
    "Level",
    "attribution_patching",
    "check_level",
    "depass_head_attributions",
    "depass_neuron_attributions",
    "depass_unit_scores",
    "logit_metric",
    "n_units",
    "unit_hook",
]

Level = Literal["heads", "neurons"]


def check_level(model: Any, level: str) -> None:
    if level not in ("heads", "neurons"):
        raise DePassError(f"level must be 'heads' or 'neurons'; got {level!r}.")
    if level == "neurons" and (model.cfg.attn_only or model.cfg.d_mlp is None):
        raise DePassError("level='neurons' needs a model with MLPs; this one is attention-only. Use level='heads'.")


def unit_hook(level: Level, layer: int) -> str:
    """The TL hook a unit lives at: ``blocks.{layer}.attn.hook_z`` or ``blocks.{layer}.mlp.hook_post``."""
    return f"blocks.{layer}.attn.hook_z" if level == "heads" else f"blocks.{layer}.mlp.hook_post"


def n_units(model: Any, level: Level) -> int:
    return int(model.cfg.n_heads if level == "heads" else model.cfg.d_mlp)


# ------------------------------------------------------------------------------- attributions
def depass_unit_scores(
    model: Any, tokens: Tensor, target: Any, incorrect: Any, level: Level, mlp_rule: str, temperature: float
) -> tuple[Tensor, int]:
    """DePass unit attributions ``[batch, n_layers, n_units]`` and the component streams replayed per prompt.

    One capture, then one replay per layer whose components are that layer's units and a ``rest``.
    """
    from depass_tl.api import replay
    from depass_tl.capture import capture
    from depass_tl.components import custom

    check_level(model, level)
    tokens = token_batch(model, tokens)
    B = tokens.shape[0]
    ids = torch.tensor(target_ids(target, B, model.cfg.d_vocab))
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, B, model.cfg.d_vocab))
    L, U = model.cfg.n_layers, n_units(model, level)
    extra = [unit_hook("heads", l) for l in range(L)] if level == "heads" else []
    run = capture(model, tokens, extra_hooks=extra)
    if any(b.parallel for b in run.view.blocks):
        raise DePassError("DePass unit attributions need a sequential block (parallel_attn_mlp=False).")
    out = torch.zeros(B, L, U, dtype=torch.float64)
    streams = 0
    for l in range(L):
        block = run.view.blocks[l]
        if level == "heads":
            z = run.acts[unit_hook("heads", l)].double()  # [batch, pos, head_index, d_head]
            units = torch.einsum("bphd,hdm->hbpm", z, block.attn.W_O.detach().to(z))  # [head, batch, pos, d_model]
            has_mid = f"blocks.{l}.hook_resid_mid" in run.acts
            hook = f"blocks.{l}.hook_resid_mid" if has_mid else f"blocks.{l}.hook_resid_post"
            labels = [f"L{l}H{h}" for h in range(U)]
        else:
            if block.mlp is None or not hasattr(block.mlp, "W_out"):
                raise DePassError(f"level='neurons' needs a dense MLP in every layer; layer {l} has {type(block.mlp).__name__}.")
            post = run.acts[unit_hook("neurons", l)].double()  # [batch, pos, d_mlp]
            units = torch.einsum("bpn,nm->nbpm", post, block.mlp.W_out.detach().to(post))  # [d_mlp, batch, pos, d_model]
            hook = f"blocks.{l}.hook_resid_post"
            labels = [f"L{l}N{n}" for n in range(U)]
        clean = run.acts[hook].double()
        rest = clean - units.sum(0)
        spec = custom(hook, torch.cat([units, rest[None]]), labels + ["rest"])
        dc = replay(run, spec, mlp_rule=mlp_rule, temperature=temperature, names_filter=["unembed.hook_in"],
                    dtype=torch.float64)
        out[:, l] = dc.logit_attrs(ids, incorrect_tokens=bad)[:U].T.cpu()
        streams += len(dc.labels)
    return out, streams


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
    return depass_unit_scores(model, tokens, target, incorrect, "heads", mlp_rule, temperature)[0]


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
    return depass_unit_scores(model, tokens, target, incorrect, "neurons", mlp_rule, temperature)[0]


def logit_metric(logits: Tensor, ids: Tensor, bad: Tensor | None) -> Tensor:
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
    check_level(model, level)
    tokens = token_batch(model, tokens)
    B = tokens.shape[0]
    ids = torch.tensor(target_ids(target, B, model.cfg.d_vocab))
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, B, model.cfg.d_vocab))
    L = model.cfg.n_layers
    names = [unit_hook(level, l) for l in range(L)]
    if corrupt_tokens is not None:
        corrupt_tokens = token_batch(model, corrupt_tokens)
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
        m = logit_metric(logits, ids, bad).sum()
        grads = torch.autograd.grad(m, [kept[n] for n in names], allow_unused=True)
    out = []
    for n, g in zip(names, grads):
        g = torch.zeros_like(kept[n]) if g is None else g
        base = torch.zeros_like(clean[n]) if corrupt_tokens is None else kept[n].detach()
        delta = (clean[n] - base) * g  # [batch, pos, head, d_head] or [batch, pos, d_mlp]
        out.append(delta.sum(-1).sum(1) if level == "heads" else delta.sum(1))
    return torch.stack(out, dim=1).detach().cpu().double()
