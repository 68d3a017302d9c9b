"""MLPs with frozen activation coefficients, per component, under three allocation rules.

Let ``γ_c`` be component c's contribution to the pre-activation (``ln2_c W_in``; the bias component
also holds ``b_in`` and the LN-bias path), so ``Σ_c γ_c = pre``. The clean ``post = act(pre)`` is split
into ``post_c`` with ``Σ_c post_c = post`` exactly, then ``out_c = post_c W_out`` (``b_out`` → bias):

* ``softmax`` (DePass default, temperature T): ``post_c = α_c post`` with ``α = softmax(γ/T)`` over the
  components whose ``γ_c`` is nonzero there (exact zeros, e.g. tokens that cannot reach a position,
  get nothing); where none is active the whole ``post`` goes to the bias component.
* ``ratio`` (DecompX "ZO", DePass "taylor"): ``post_c = (post / pre) γ_c``, a frozen elementwise
  slope; where ``pre == 0`` the share goes to the bias component. Linear in the components.
* ``max``: the whole ``post`` to ``argmax_c γ_c`` among active components (lowest index on ties).

Gated MLPs (``post = act(x W_gate) * (x W_in) + b_in`` in TransformerLens): with ``act(x W_gate)``
frozen the MLP is linear in ``x W_in``, which is the ``ratio`` rule; ``softmax`` and ``max`` split
``post - b_in`` by the gate contributions ``γ_c = ln2_c W_gate`` as the official DePass code does, and
``b_in`` goes to the bias component. ``softmax`` is not additive across groupings of components.

SoLU (``solu(pre) = pre * softmax(pre)``, softmax over ``d_mlp``) couples the neurons. Freezing the whole
vector ``σ = softmax(pre)`` makes it linear and exact: under ``ratio`` ``mid_c = σ ⊙ γ_c``. Under
``softmax`` / ``max`` the activation's output (``hook_post`` for ``solu``, ``hook_mid`` for ``solu_ln``)
is allocated by the pre-activation contributions ``γ_c`` like any other MLP. ``solu_ln`` then applies
its inner LayerNorm over ``d_mlp`` with the frozen ``mlp.ln.hook_scale``; that norm's bias goes to the
bias component (:func:`~depass_tl.replay.norm.apply_norm`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from depass_tl.model_view import MLPView
from depass_tl.replay.norm import apply_norm

__all__ = ["MLPRule", "MLP_RULES", "mlp", "allocate", "credit_to_row", "Allocator", "mlp_keys", "mlp_chunk"]

MLPRule = Literal["softmax", "ratio", "max"]
MLP_RULES: tuple[str, ...] = ("softmax", "ratio", "max")


def _linear(x: Tensor, W: Tensor) -> Tensor:
    C, B, P, D = x.shape
    return (x.reshape(C * B * P, D) @ W).reshape(C, B, P, W.shape[-1])


def _split_weights(keys: Tensor, rule: str, temperature: float, group_size: int) -> tuple[Tensor, Tensor]:
    """Allocation weights ``α`` (same shape as ``keys``) and, per group, where no component is active.

    Components compete only within their group of ``group_size`` consecutive components.
    """
    C = keys.shape[0]
    k = keys.reshape(C // group_size, group_size, *keys.shape[1:])  # [group, component, ...]
    active = k != 0
    none_active = ~active.any(1)  # [group, batch, pos, d_mlp]
    if rule == "softmax":
        scores = torch.where(active, k / temperature, torch.full_like(k, float("-inf")))
        alpha = torch.softmax(scores, dim=1)
    else:  # max
        scores = torch.where(active, k, torch.full_like(k, float("-inf")))
        winner = scores.argmax(dim=1, keepdim=True)  # first maximal index on ties
        alpha = torch.zeros_like(k).scatter_(1, winner, 1.0)
    alpha = torch.where(none_active[:, None], torch.zeros_like(alpha), alpha)  # all -inf → NaN softmax; drop it
    return alpha.reshape(keys.shape), none_active


def allocate(keys: Tensor, post: Tensor, rule: str, temperature: float, bias_rows: Tensor, group_size: int) -> Tensor:
    alpha, none_active = _split_weights(keys, rule, temperature, group_size)
    post_c = alpha * post
    post_c[bias_rows] += torch.where(none_active, post, torch.zeros_like(post))
    return post_c


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


def mlp(
    x_ln: Tensor,
    mlp_view: MLPView,
    *,
    pre: Tensor,
    post: Tensor,
    gate_act: Tensor | None,
    rule: str,
    temperature: float,
    bias_rows: Tensor,
    group_size: int,
    credit: tuple[tuple[int, ...], int] | None = None,
    solu_softmax: Tensor | None = None,
    mid: Tensor | None = None,
    inner_scale: Tensor | None = None,
) -> Tensor:
    """MLP output per component, ``[component, batch, pos, d_model]``.

    Args:
        x_ln: ``[component, batch, pos, d_model]`` normed components (bias component included).
        mlp_view: weights.
        pre: clean ``hook_pre`` (for gated MLPs: the gate pre-activation).
        post: clean ``hook_post``.
        gate_act: frozen ``act(hook_pre)`` for gated MLPs, else None.
        rule: ``softmax`` | ``ratio`` | ``max``.
        temperature: softmax temperature.
        bias_rows: the bias components (one per group of ``group_size`` components).
        group_size: components compete (softmax, max) only within their group.
        credit: ``(source_rows, row)``: move the source components' output to component ``row``
            (sources mode); ``b_out`` stays with the bias rows.
        solu_softmax: frozen ``softmax(hook_pre)`` for ``solu`` / ``solu_ln``.
        mid: clean ``hook_mid`` (``solu_ln``: the SoLU output before the inner norm).
        inner_scale: frozen ``mlp.ln.hook_scale`` (``solu_ln``).
    """
    if mlp_view.kind == "standard":
        gamma = _linear(x_ln, mlp_view.W_in)  # [component, batch, pos, d_mlp]
        if mlp_view.b_in is not None:
            gamma[bias_rows] += mlp_view.b_in
        act_out = post if mlp_view.ln is None else mid  # the activation's output, before any inner norm
        assert act_out is not None
        if rule == "ratio" and mlp_view.solu:
            assert solu_softmax is not None
            post_c = solu_softmax * gamma
        elif rule == "ratio":
            nonzero = pre != 0
            slope = torch.where(nonzero, act_out / torch.where(nonzero, pre, torch.ones_like(pre)), torch.zeros_like(pre))
            post_c = slope * gamma
            post_c[bias_rows] += torch.where(nonzero, torch.zeros_like(act_out), act_out)
        else:
            post_c = allocate(gamma, act_out, rule, temperature, bias_rows, group_size)
        if mlp_view.ln is not None:
            post_c = apply_norm(post_c, inner_scale, mlp_view.ln, bias_rows)
    else:
        assert gate_act is not None and mlp_view.W_gate is not None
        if rule == "ratio":
            post_c = gate_act * _linear(x_ln, mlp_view.W_in)
        else:
            gated = post if mlp_view.b_in is None else post - mlp_view.b_in
            post_c = allocate(_linear(x_ln, mlp_view.W_gate), gated, rule, temperature, bias_rows, group_size)
        if mlp_view.b_in is not None:
            post_c[bias_rows] += mlp_view.b_in
    out = credit_to_row(_linear(post_c, mlp_view.W_out), credit)
    if mlp_view.b_out is not None:
        out[bias_rows] += mlp_view.b_out
    return out


class Allocator:
    """Streaming ``softmax`` / ``max`` allocation over the components of one group, chunk by chunk.

    The softmax of a neuron spans every component of the group, so a chunked replay makes two passes
    per MLP layer: :meth:`update` sees every chunk's keys ``γ`` and keeps, per ``(batch, pos, neuron)``,
    the running max ``m`` and ``s = Σ exp(γ/T - m)`` over the active components (``max``: the best key
    and its component index, the first on ties); :meth:`allocate` then splits the clean ``post`` of a
    chunk with ``α_c = exp(γ_c/T - m) / s`` (``max``: one-hot). The result equals the unchunked rule up
    to float rounding. Chunks hold consecutive components and are visited in order; ``row0`` is the
    chunk's first component within the group and ``lo`` its first position.
    """

    def __init__(self, rule: str, temperature: float, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> None:
        self.rule, self.temperature = rule, temperature
        if rule == "softmax":
            self.m = torch.full(shape, float("-inf"), dtype=dtype, device=device)  # [batch, pos, d_mlp]
            self.s = torch.zeros(shape, dtype=dtype, device=device)
        else:
            self.best = torch.full(shape, float("-inf"), dtype=dtype, device=device)
            self.index = torch.full(shape, -1, dtype=torch.long, device=device)

    def update(self, keys: Tensor, row0: int, lo: int, *, keep: bool = False) -> tuple[Tensor, Tensor] | None:
        """Fold a chunk's keys ``[chunk, batch, n, d_mlp]`` (positions ``lo:``) into the statistics.

        With ``keep`` (``softmax`` only) returns ``(e, m_t)`` for :meth:`allocate`: the chunk's
        ``exp(γ/T - m_t)`` (0 where inactive) and the running max ``m_t`` it is relative to, so the
        second pass is one multiplication instead of recomputing the exponentials.
        """
        inactive = keys == 0
        if self.rule == "softmax":
            scores = (keys / self.temperature).masked_fill_(inactive, float("-inf"))
            del inactive
            m_old = self.m[:, lo:]
            m_new = torch.maximum(m_old, scores.amax(0))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # -inf: nothing active yet
            e = scores.sub_(safe).exp_()
            self.s[:, lo:] = self.s[:, lo:] * torch.exp(m_old - safe) + e.sum(0)
            self.m[:, lo:] = m_new
            return (e, m_new) if keep else None
        scores = keys.masked_fill(inactive, float("-inf"))
        idx = scores.argmax(0)  # first maximal component on ties
        val = scores.gather(0, idx[None])[0]
        better = val > self.best[:, lo:]  # strict: an earlier chunk wins ties
        self.best[:, lo:] = torch.where(better, val, self.best[:, lo:])
        self.index[:, lo:] = torch.where(better, idx + row0, self.index[:, lo:])
        return None

    def none_active(self, lo: int) -> Tensor:
        return self.s[:, lo:] == 0 if self.rule == "softmax" else self.index[:, lo:] < 0

    def allocate(
        self, keys: Tensor | tuple[Tensor, Tensor] | None, post: Tensor, bias_rows: Tensor, row0: int, n_rows: int,
        lo: int,
    ) -> Tensor:
        """``post_c`` for a chunk: ``α_c ⊙ post`` (``post`` ``[batch, n, d_mlp]``); ``keys`` is consumed.

        ``keys``: the chunk's keys, or what :meth:`update` returned with ``keep=True``; not read by
        the ``max`` rule (pass None). Where no component of the group is active, the bias rows of the
        chunk get the whole ``post``.
        """
        none = self.none_active(lo)
        if self.rule == "softmax":
            assert keys is not None
            m = self.m[:, lo:]
            safe_m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
            safe_s = torch.where(none, torch.ones_like(self.s[:, lo:]), self.s[:, lo:])
            if isinstance(keys, tuple):  # exp(γ/T - m_t) from the first pass: rescale to the final max
                e, m_t = keys
                factor = torch.where(torch.isinf(m_t), torch.zeros_like(m_t), torch.exp(m_t - safe_m))
                post_c = e.mul_((factor / safe_s * post)[None])
            else:
                inactive = keys == 0
                post_c = keys.div_(self.temperature).masked_fill_(inactive, float("-inf")).sub_(safe_m).exp_()
                post_c = post_c.mul_((post / safe_s)[None])
        else:
            rows = torch.arange(row0, row0 + n_rows, device=post.device).view(-1, 1, 1, 1)
            post_c = (self.index[:, lo:][None] == rows).to(post.dtype).mul_(post)
        if len(bias_rows):
            post_c[bias_rows] += torch.where(none, post, torch.zeros_like(post))
        return post_c


def mlp_keys(x_ln: Tensor, mlp_view: MLPView, bias_rows: Tensor) -> Tensor:
    """The allocation keys ``γ`` of a chunk: ``ln2_c W_in`` (+ ``b_in`` in the bias rows), gated: ``ln2_c W_gate``."""
    if mlp_view.kind == "standard":
        gamma = _linear(x_ln, mlp_view.W_in)
        if mlp_view.b_in is not None and len(bias_rows):
            gamma[bias_rows] += mlp_view.b_in
        return gamma
    assert mlp_view.W_gate is not None
    return _linear(x_ln, mlp_view.W_gate)


def mlp_chunk(
    x_ln: Tensor | None,
    mlp_view: MLPView,
    *,
    n_rows: int,
    pre: Tensor,
    post: Tensor,
    gate_act: Tensor | None,
    rule: str,
    bias_rows: Tensor,
    allocator: Allocator | None,
    keys: Tensor | tuple[Tensor, Tensor] | None,
    row0: int,
    lo: int,
    credit: tuple[tuple[int, ...], int] | None = None,
    solu_softmax: Tensor | None = None,
    mid: Tensor | None = None,
    inner_scale: Tensor | None = None,
) -> Tensor:
    """:func:`mlp` for one chunk, with ``softmax`` / ``max`` shares from a filled :class:`Allocator`.

    The clean tensors (``pre``, ``post`` ...) are restricted to the chunk's positions; ``keys`` are the
    chunk's cached keys (None: recomputed when needed; consumed). ``x_ln`` (the chunk's normed input,
    ``n_rows`` components) is only read by ``ratio`` and to recompute ``softmax`` keys.
    """
    if rule == "ratio":
        assert x_ln is not None
        return mlp(
            x_ln, mlp_view, pre=pre, post=post, gate_act=gate_act, rule=rule, temperature=1.0, bias_rows=bias_rows,
            group_size=n_rows, credit=credit, solu_softmax=solu_softmax, mid=mid, inner_scale=inner_scale,
        )
    assert allocator is not None
    if keys is None and rule == "softmax":
        assert x_ln is not None
        keys = mlp_keys(x_ln, mlp_view, bias_rows)
    if mlp_view.kind == "standard":
        act_out = post if mlp_view.ln is None else mid
        assert act_out is not None
        post_c = allocator.allocate(keys, act_out, bias_rows, row0, n_rows, lo)
        if mlp_view.ln is not None:
            post_c = apply_norm(post_c, inner_scale, mlp_view.ln, bias_rows)
    else:
        gated = post if mlp_view.b_in is None else post - mlp_view.b_in
        post_c = allocator.allocate(keys, gated, bias_rows, row0, n_rows, lo)
        if mlp_view.b_in is not None and len(bias_rows):
            post_c[bias_rows] += mlp_view.b_in
    out = credit_to_row(_linear(post_c, mlp_view.W_out), credit)
    if mlp_view.b_out is not None and len(bias_rows):
        out[bias_rows] += mlp_view.b_out
    return out
