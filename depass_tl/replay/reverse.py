"""Reverse mode: every component's share of a scalar target from one backward pass.

Under a linear MLP rule (:attr:`~depass_tl.replay.rules.MLPRule.linear`, e.g. ``ratio``) every frozen
coefficient (norm scales, attention patterns, MLP slopes, routing) is independent of the components,
so the replay is an affine map of the initial components: ``f(x_1, ..., x_C) = Σ_c L(x_c) + const``,
the constants landing in the bias component. For a scalar target ``t = <d, f(x)[hook, pos]>`` (a logit,
a logit difference, a direction at a residual-stream hook) component c's share is then
``<d, L(x_c)> = <∇_x t, x_c>``, summed over positions and ``d_model``: one backward pass through a
replay of *one* component per group (the sum of its non-bias components) beside the group's bias
component gives the gradient, and a dot product per component gives every share. The bias
component's share is its own row of that replay. The numbers equal the forward replay projected on
the target up to float rounding, at the cost of about three replays of two components per group.

Pure tensor code, like the rest of :mod:`depass_tl.replay`; :func:`depass_tl.attribute` chooses
between this and the forward replay.
"""

from __future__ import annotations

import torch
from torch import Tensor

from depass_tl.coefficients import FrozenRun
from depass_tl.errors import DePassError
from depass_tl.model_view import MoEView
from depass_tl.replay.block import pad_to_bias
from depass_tl.replay.engine import replay_components
from depass_tl.replay.plan import row_starts
from depass_tl.replay.rules import MLPRule, Ratio
from depass_tl.replay.state import Group, InitialState

__all__ = ["project", "forward_cost", "reverse_values", "reverse_token_values"]


def project(h: Tensor, pos: Tensor, direction: Tensor) -> Tensor:
    """``<direction_b, h[:, b, pos_b]>``: ``[component, batch, pos, d] -> [component, batch]``."""
    rows = torch.arange(h.shape[1], device=h.device)
    return (h[:, rows, pos.to(h.device)] * direction.to(h.device)[None]).sum(-1)


def forward_cost(run: FrozenRun, init: InitialState) -> int:
    """The forward replay's work in (component, position) pairs, after causal skipping."""
    has_moe = any(isinstance(b.mlp, MoEView) for b in run.view.blocks)
    causal = init.sources is None and not has_moe
    return sum(run.n_pos - lo for g in init.groups for lo in row_starts(g.components, causal))


def _check_linear(rule: MLPRule) -> None:
    if not rule.linear:
        raise DePassError(f"reverse mode needs a linear MLP rule; {rule.name!r} is not linear in the components.")


def _grads(
    run: FrozenRun, groups: tuple[Group, ...], hook: str, pos: Tensor, direction: Tensor, dtype: torch.dtype,
    rule: MLPRule,
) -> tuple[Tensor, list[Tensor]]:
    """Replay groups ``(sum, bias)``; returns the target's share of every row ``[2 * group, batch]`` and
    the gradient of the sum rows' share with respect to each group's sum row ``[batch, pos, d_model]``."""
    with torch.enable_grad():  # also under a caller's torch.no_grad()
        xs = [g.components[0].detach().requires_grad_(True) for g in groups]
        grouped = tuple(Group(g.start_hook, torch.stack([x, g.components[1]]), g.labels) for g, x in zip(groups, xs))
        # chunk_size=1: the sum row and the bias row are separate chunks, so the backward pass runs
        # through the sum row only
        acts = replay_components(
            run, InitialState(grouped), mlp_rule=rule, dtype=dtype, keep=lambda n: n == hook, causal_skip=False,
            chunk_size=1,
        )
        proj = project(acts[hook], pos, direction)  # [2 * group, batch]
        grads = torch.autograd.grad(proj[0::2].sum(), xs)
    return proj.detach(), list(grads)


def reverse_values(
    run: FrozenRun, init: InitialState, hook: str, pos: Tensor, direction: Tensor, dtype: torch.dtype,
    rule: MLPRule = Ratio(),
) -> Tensor:
    """Every component's share ``[component, batch]`` of ``<direction, activation at hook, pos>``.

    Args:
        run: the frozen clean run.
        init: the initial components (no sources plan).
        hook: a hook the replay stores (:meth:`~depass_tl.replay.state.InitialState.stored_hook_names`).
        pos: ``[batch]`` the position read per prompt.
        direction: ``[batch, d_model]``.
        dtype: the accumulation dtype.
        rule: a linear MLP rule.
    """
    _check_linear(rule)
    K = init.group_size
    comps = [
        pad_to_bias(g.components.to(dtype), None if run.pad is None else run.pad.to(g.components.device), K).detach()
        for g in init.groups
    ]
    groups = tuple(
        Group(g.start_hook, torch.stack([x[:-1].sum(0), x[-1]]), ("sum", "bias")) for g, x in zip(init.groups, comps)
    )  # the replay is linear: the sum row's value does not change the gradient
    proj, grads = _grads(run, groups, hook, pos, direction, dtype, rule)
    values = []
    for x, grad, bias_share in zip(comps, grads, proj[1::2]):  # on the target hook's device (a split model's last)
        values.append(torch.einsum("cbpd,bpd->cb", x[:-1], grad).to(proj.device))
        values.append(bias_share[None])
    return torch.cat(values)


def reverse_token_values(
    run: FrozenRun, start: str, hook: str, pos: Tensor, direction: Tensor, dtype: torch.dtype,
    rule: MLPRule = Ratio(),
) -> Tensor:
    """:func:`reverse_values` for token components at ``start`` (``tok0 … tok{P-1}, bias``: ``[pos + 1, batch]``)
    without building the dense ``[pos, batch, pos, d_model]`` initial state.

    Token p's component is the start residual at position p only, so its share is
    ``<gradient[:, p], resid[:, p]>``: one ``[batch, pos]`` product instead of a dense contraction.
    """
    _check_linear(rule)
    resid = run.get(start).to(dtype)[None]  # [1, batch, pos, d_model]: every token's part, summed
    state = torch.cat([resid, torch.zeros_like(resid)])  # (sum of the token components, bias)
    values, grad = _grads(run, (Group(start, state, ("sum", "bias")),), hook, pos, direction, dtype, rule)
    tokens = (resid[0] * grad[0]).sum(-1).T  # [pos, batch]
    if run.pad is not None:
        tokens = tokens.masked_fill(run.pad.T.to(tokens.device), 0.0)  # pad_to_bias: padded tokens hold nothing
    return torch.cat([tokens.to(values.device), values[1][None]])
