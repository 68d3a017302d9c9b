"""MLPs with frozen activation coefficients, per component, under any allocation rule.

Let ``γ_c`` be component c's contribution to the pre-activation (``ln2_c W_in``; the bias component
also holds ``b_in`` and the LN-bias path), so ``Σ_c γ_c = pre``. The clean activation output is split
into shares ``post_c`` with ``Σ_c post_c = post`` exactly, by an allocation rule
(:mod:`~depass_tl.replay.rules`: ``softmax``, ``ratio``, ``max`` or a registered custom rule), then
``out_c = post_c W_out`` (``b_out`` → bias).

Gated MLPs (``post = act(x W_gate) * (x W_in) + b_in`` in TransformerLens): the rule splits
``post - b_in`` by the gate contributions ``ln2_c W_gate`` (``softmax``/``max``, as the official DePass
code does) or by the linear ones ``ln2_c W_in`` (``ratio``: with ``act(x W_gate)`` frozen the MLP is
linear in ``x W_in``), as :attr:`~depass_tl.replay.rules.MLPRule.gated_keys` says; ``b_in`` goes to
the bias component. ``softmax`` is not additive across groupings of components.

SoLU (``solu(pre) = pre * softmax(pre)``, softmax over ``d_mlp``) couples the neurons. Freezing the whole
vector ``σ = softmax(pre)`` makes it linear and exact: under ``ratio`` ``mid_c = σ ⊙ γ_c``. Under
``softmax`` / ``max`` the activation's output (``hook_post`` for ``solu``, ``hook_mid`` for ``solu_ln``)
is allocated by the pre-activation contributions ``γ_c`` like any other MLP. ``solu_ln`` then applies
its inner LayerNorm over ``d_mlp`` with the frozen ``mlp.ln.hook_scale``; that norm's bias goes to the
bias component (:func:`~depass_tl.replay.norm.apply_norm`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from depass_tl.model_view import MLPView
from depass_tl.replay.norm import apply_norm
from depass_tl.replay.rules import MLPRule, Neurons, RuleStats

__all__ = ["credit_to_row", "linear", "mlp_keys", "mlp_neurons", "mlp_chunk"]


def linear(x: Tensor, W: Tensor) -> Tensor:
    """``x @ W`` for ``x [component, batch, pos, d_in]`` (one flat matmul)."""
    C, B, P, D = x.shape
    return (x.reshape(C * B * P, D) @ W).reshape(C, B, P, W.shape[-1])


def credit_to_row(out: Tensor, credit: tuple[tuple[int, ...], int] | None) -> Tensor:
    """Sources mode: move the source components' output to component ``row`` (returns a new tensor)."""
    if credit is None:
        return out
    sources, row = credit
    src = torch.tensor(sources, device=out.device)
    moved = out.index_select(0, src).sum(0)
    out = out.index_fill(0, src, 0.0)
    out[row] += moved
    return out


def mlp_keys(x_ln: Tensor, mlp_view: MLPView, bias_rows: Tensor, rule: MLPRule) -> Tensor:
    """The allocation keys of a chunk: ``ln2_c W_in`` (+ ``b_in`` in the bias rows); gated MLPs:
    ``ln2_c W_gate`` or ``ln2_c W_in``, as ``rule.gated_keys`` says (``b_in`` is added after gating)."""
    if mlp_view.kind == "standard":
        gamma = linear(x_ln, mlp_view.W_in)
        if mlp_view.b_in is not None and len(bias_rows):
            gamma[bias_rows] += mlp_view.b_in
        return gamma
    if rule.gated_keys == "in":
        return linear(x_ln, mlp_view.W_in)
    assert mlp_view.W_gate is not None
    return linear(x_ln, mlp_view.W_gate)


def mlp_neurons(mlp_view: MLPView, clean: Any) -> Neurons:
    """The clean tensors a rule reads at this MLP; ``clean(name)`` gives ``blocks.l.mlp.{name}`` at the
    chunk's positions (None when not captured)."""
    pre, post = clean("hook_pre"), clean("hook_post")
    assert pre is not None and post is not None
    if mlp_view.kind == "gated":
        target = post if mlp_view.b_in is None else post - mlp_view.b_in
        return Neurons(target, pre, gated=True, gate_act=clean("gate_act"), linear=clean("hook_pre_linear"))
    target = post if mlp_view.ln is None else clean("hook_mid")  # the activation's output, before any inner norm
    assert target is not None
    return Neurons(target, pre, solu_softmax=clean("solu_softmax"))


def mlp_chunk(
    x_ln: Tensor | None,
    mlp_view: MLPView,
    *,
    rule: MLPRule,
    neurons: Neurons,
    bias_rows: Tensor,
    n_rows: int,
    stats: RuleStats | None = None,
    keys: Any = None,
    row0: int = 0,
    lo: int = 0,
    credit: tuple[tuple[int, ...], int] | None = None,
    inner_scale: Tensor | None = None,
) -> Tensor:
    """MLP output ``[component, batch, pos, d_model]`` of a chunk of ``n_rows`` components.

    Linear rules split the chunk on its own. Competitive rules split it with the group's ``stats``
    (filled by a first pass over every chunk; :class:`~depass_tl.replay.rules.RuleStats`), reading
    the chunk's cached ``keys`` (what the first pass kept; consumed) or keys recomputed from ``x_ln``.
    Without ``stats`` the chunk must hold whole groups of ``n_rows`` components (a one-shot split).

    Args:
        x_ln: the chunk's normed input (not read by rules that need only their statistics).
        mlp_view: weights.
        rule: the allocation rule.
        neurons: the clean tensors at the chunk's positions (:func:`mlp_neurons`).
        bias_rows: the chunk's local index of its group's bias component (empty: not held).
        n_rows: components in the chunk.
        stats, keys, row0, lo: the group's statistics, the cached keys, the chunk's first component in
            its group and its first position.
        credit: ``(source_rows, row)``: move the source components' output to component ``row``
            (sources mode); ``b_out`` stays with the bias rows.
        inner_scale: frozen ``mlp.ln.hook_scale`` (``solu_ln``).
    """
    if rule.linear or stats is None:
        assert x_ln is not None
        post_c = rule.split(mlp_keys(x_ln, mlp_view, bias_rows, rule), neurons, bias_rows, n_rows)
    else:
        if keys is None and rule.reads_keys:
            assert x_ln is not None
            keys = mlp_keys(x_ln, mlp_view, bias_rows, rule)
        post_c = stats.allocate(keys, neurons.target, bias_rows, row0, n_rows, lo)
    if mlp_view.ln is not None:
        post_c = apply_norm(post_c, inner_scale, mlp_view.ln, bias_rows)
    if mlp_view.kind == "gated" and mlp_view.b_in is not None and len(bias_rows):
        post_c[bias_rows] += mlp_view.b_in
    out = credit_to_row(linear(post_c, mlp_view.W_out), credit)
    if mlp_view.b_out is not None and len(bias_rows):
        out[bias_rows] += mlp_view.b_out
    return out
