"""One transformer block's sublayers, per chunk of components (pure tensor code).

A pre-norm block is ``resid_mid = resid_pre + attn(ln1(resid_pre))`` and ``resid_post = resid_mid +
mlp(ln2(resid_mid))``. The engine (:mod:`~depass_tl.replay.engine`) calls :func:`attn_step` and
:func:`mlp_step` once per sublayer, on every chunk of components (:class:`Chunk`), and they write what
the replay stores into :class:`Outputs`. Variants handled here, each with frozen coefficients:

* ``parallel_attn_mlp`` (GPT-J, NeoX): the MLP reads ``ln2(resid_pre)``; ``resid_post = resid_pre +
  attn_out + mlp_out`` and there is no ``hook_resid_mid`` (:func:`attn_step` does both sublayers).
* Gemma-2/3 post-norms (``use_normalization_before_and_after``): ``attn_out = ln1_post(attn(...))`` and
  ``mlp_out = ln2_post(mlp(...))``, RMS norms with their own frozen ``hook_scale``.
* MLP kinds: standard / gated / SoLU (:mod:`~depass_tl.replay.mlp`) and Mixtral MoE
  (:mod:`~depass_tl.replay.moe`), under any allocation rule (:mod:`~depass_tl.replay.rules`). A
  competitive rule's shares span every component of a group: :func:`mlp_step` first folds every
  chunk's keys into the group's statistics, then allocates chunk by chunk.
* Padding: :func:`pad_to_bias` puts everything at padded positions into the bias component (whole
  groups, for the initial components); :meth:`Outputs.emit` and :meth:`Outputs.settle` do the same
  for every sublayer output of a chunked replay.
* Causal skipping: a chunk holds positions ``lo:`` only; :func:`attn_step` widens every chunk back to
  all positions the first time a pattern is not causal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from depass_tl.model_view import BlockView, MLPView, MoEView
from depass_tl.replay.attention import PreparedAttn, attention_prepared
from depass_tl.replay.mlp import mlp_chunk, mlp_keys, mlp_neurons
from depass_tl.replay.moe import moe
from depass_tl.replay.norm import apply_norm
from depass_tl.replay.rules import MLPRule, RuleStats
from depass_tl.replay.shard import Shard
from depass_tl.replay.state import SourcesPlan

__all__ = ["pad_to_bias", "Chunk", "Outputs", "BlockStep", "attn_step", "mlp_step"]


def pad_to_bias(t: Tensor, pad: Tensor | None, group_size: int) -> Tensor:
    """Move, per group, the whole of ``t`` ``[component, batch, pos, d]`` at padded positions to the bias row.

    ``pad`` is ``[batch, pos]`` bool (True = padding) or None. The group sums are unchanged, so
    completeness holds; every other component is exactly zero at padded positions. TL's mask keeps
    real query positions from attending padded keys, so nothing moved here reaches a real position.
    """
    if pad is None:
        return t
    C = t.shape[0]
    g = t.reshape(C // group_size, group_size, *t.shape[1:])  # [group, component, batch, pos, d]
    total = g.sum(1)  # [group, batch, pos, d]
    at_pad = pad[None, :, :, None]
    g = torch.where(at_pad[:, None], torch.zeros_like(g), g)
    last = torch.where(at_pad, total, g[:, -1])
    return torch.cat([g[:, :-1], last[:, None]], dim=1).reshape(t.shape)


def _sl(t: Tensor | None, lo: int) -> Tensor | None:
    """A clean ``[batch, pos, ...]`` tensor from position ``lo`` on (``t`` itself for ``lo == 0``)."""
    return t if t is None or lo == 0 else t[:, lo:]


def _add(x: Tensor, t: Tensor) -> Tensor:
    """``x + t``, in place unless autograd is recording through either."""
    if torch.is_grad_enabled() and (x.requires_grad or t.requires_grad):
        return x + t
    return x.add_(t)


class Chunk:
    """Consecutive components ``[a, b)`` of group ``g`` (groups of ``K``), held from position ``lo`` on."""

    def __init__(self, g: int, a: int, b: int, lo: int, K: int, x: Tensor) -> None:
        self.g, self.a, self.b, self.lo = g, a, b, lo
        self.rows = slice(g * K + a, g * K + b)  # in the concatenated component axis
        self.has_bias = b == K
        self.x: Tensor = x  # [chunk, batch, pos - lo, d_model]
        self.keys: object = None  # a competitive rule's cached keys, between its two passes

    @property
    def n_rows(self) -> int:
        return self.b - self.a

    @property
    def bias_local(self) -> Tensor:
        """The local index of the group's bias component (empty when this chunk does not hold it)."""
        return torch.tensor([self.b - self.a - 1] if self.has_bias else [], dtype=torch.long, device=self.x.device)

    def widen(self) -> None:
        """Hold every position again (``lo`` = 0), padding the state with exact zeros."""
        if self.lo:
            C, B, _, D = self.x.shape
            self.x = torch.cat([self.x.new_zeros(C, B, self.lo, D), self.x], dim=2)
            self.lo = 0


class Outputs:
    """The hooks a replay stores, ``[component, batch, pos, d_model]`` each, and the padding rule.

    Args:
        wanted: the hook names to store.
        shape: ``(components of all groups, batch, pos, d_model)``.
        n_groups: number of groups (padding moves are settled per group).
        pad: ``[batch, pos]`` bool, True at padded positions (None: no padding).
        dtype, device: of the stored tensors when no chunk says (a rank of a sharded replay holding none).
    """

    def __init__(self, wanted: set[str], shape: tuple[int, int, int, int], n_groups: int, pad: Tensor | None, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.wanted = wanted
        self.shape = shape
        self.n_groups = n_groups
        self.pad = pad
        self.dtype, self.device = dtype, torch.device(device)
        self.acts: dict[str, Tensor] = {}

    def to(self, device: torch.device) -> None:
        """Work on ``device`` from now on (the padding mask follows the block)."""
        self.device = torch.device(device)
        if self.pad is not None:
            self.pad = self.pad.to(device)

    def store_state(self, name: str, chunks: list[Chunk]) -> None:
        """Store the chunks' current residual state as hook ``name`` (zeros before each chunk's ``lo``)."""
        if name in self.wanted:
            buf = chunks[0].x.new_zeros(self.shape) if chunks else torch.zeros(self.shape, dtype=self.dtype,
                                                                                 device=self.device)
            for ch in chunks:
                buf[ch.rows, :, ch.lo:] = ch.x
            self.acts[name] = buf

    def emit(self, name: str, t: Tensor, ch: Chunk, totals: dict[str, Tensor]) -> Tensor:
        """Padding (everything at padded positions to the bias, via ``totals``), then store ``t``; returns it."""
        if self.pad is not None:
            moved = t * self.pad[:, ch.lo:, None].to(t.dtype)
            if ch.has_bias:
                moved = moved.index_fill(0, ch.bias_local, 0.0)
            t = t - moved
            _, B, P, D = self.shape
            tot = totals.setdefault(name, t.new_zeros(self.n_groups, B, P, D))
            tot[ch.g, :, ch.lo:] += moved.sum(0)
        if name in self.wanted:
            if name not in self.acts:
                self.acts[name] = t.new_zeros(self.shape)
            self.acts[name][ch.rows, :, ch.lo:] = t
        return t

    def settle(self, totals: dict[str, Tensor], chunks: list[Chunk], names: tuple[str, ...],
               shard: Shard | None = None) -> None:
        """Padding: hand each group's moved totals to its bias component (state and stored output).

        ``names``: the hooks this sublayer emitted; a sharded replay sums their totals over the ranks first.
        """
        if shard is not None and self.pad is not None:
            _, B, P, D = self.shape
            for name in names:  # every rank the same tensors, whether or not it emitted any
                totals.setdefault(name, torch.zeros(self.n_groups, B, P, D, dtype=self.dtype, device=self.device))
            shard.reduce_sums(totals)
        for name, tot in totals.items():
            for ch in chunks:
                if ch.has_bias:
                    i = ch.b - ch.a - 1
                    ch.x[i] = ch.x[i] + tot[ch.g, :, ch.lo:]
                    if name in self.wanted:
                        self.acts[name][ch.rows.stop - 1] += tot[ch.g]


@dataclass(frozen=True)
class BlockStep:
    """What every chunk needs at one block: its weights, its frozen tensors, the rule, the sources plan.

    Attributes:
        layer: the block index.
        w: the block's weights in the accumulation dtype.
        attn: the value/output weights laid out for the replay.
        acts: the block's frozen tensors (``blocks.{layer}.*``), on the block's device.
        rule: the MLP allocation rule.
        cache_keys: a competitive rule may keep every chunk's keys between its two passes.
        group_size: components per group.
        sources: the sources plan (None: plain components).
        shard: a sharded replay's reductions (:mod:`~depass_tl.replay.shard`; None: one process).
    """

    layer: int
    w: BlockView
    attn: PreparedAttn
    acts: dict[str, Tensor]
    rule: MLPRule
    cache_keys: bool
    group_size: int
    sources: SourcesPlan | None = None
    shard: Shard | None = None

    @property
    def prefix(self) -> str:
        return f"blocks.{self.layer}."

    def scale(self, name: str, lo: int) -> Tensor | None:
        """The frozen ``blocks.{layer}.{name}`` from position ``lo`` on (None when not captured)."""
        return _sl(self.acts.get(self.prefix + name), lo)

    @property
    def credit_attn(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        s = self.sources
        return None if s is None else (s.source_rows, s.head_rows[self.layer])

    @property
    def credit_mlp(self) -> tuple[tuple[int, ...], int] | None:
        s = self.sources
        if s is None or s.mlp_rows[self.layer] is None:
            return None
        return s.source_rows, s.mlp_rows[self.layer]  # type: ignore[return-value]


def attn_step(chunks: list[Chunk], step: BlockStep, out: Outputs, causal: bool, *, store_pre: bool,
              store_after: bool) -> bool:
    """The attention sublayer (and, in a parallel block, the MLP) on every chunk; returns ``causal``.

    ``store_pre``: store ``hook_resid_pre`` first; ``store_after``: store the residual state after the
    sublayer (``hook_resid_mid``, or ``hook_resid_post`` when the block has no separate MLP stage).
    """
    p, block = step.prefix, step.w
    if store_pre:
        out.store_state(p + "hook_resid_pre", chunks)
    pattern = step.acts[p + "attn.hook_pattern"]
    if causal and any(ch.lo for ch in chunks) and bool(torch.triu(pattern, diagonal=1).any()):
        causal = False  # a non-causal pattern: every component may reach every position
        for ch in chunks:
            ch.widen()
    stats = _mlp_stats(chunks, step, out) if block.parallel else {}
    totals: dict[str, Tensor] = {}
    for ch in chunks:
        a_out = _attn_chunk(ch, step, pattern)
        m_out = _mlp_chunk(ch, step, stats) if block.parallel else None
        ch.x = _add(ch.x, out.emit(p + "hook_attn_out", a_out, ch, totals))
        del a_out
        if m_out is not None:
            ch.x = _add(ch.x, out.emit(p + "hook_mlp_out", m_out, ch, totals))
    emitted = (p + "hook_attn_out",) + ((p + "hook_mlp_out",) if block.parallel and block.mlp is not None else ())
    out.settle(totals, chunks, emitted, step.shard)
    if store_after:
        out.store_state(p + ("hook_resid_mid" if block.mlp is not None and not block.parallel else "hook_resid_post"), chunks)
    return causal


def mlp_step(chunks: list[Chunk], step: BlockStep, out: Outputs, *, store_after: bool) -> None:
    """The MLP sublayer on every chunk (two passes under a competitive rule); stores ``hook_resid_post``."""
    p = step.prefix
    stats = _mlp_stats(chunks, step, out)
    totals: dict[str, Tensor] = {}
    for ch in chunks:
        ch.x = _add(ch.x, out.emit(p + "hook_mlp_out", _mlp_chunk(ch, step, stats), ch, totals))
    out.settle(totals, chunks, (p + "hook_mlp_out",), step.shard)
    if store_after:
        out.store_state(p + "hook_resid_post", chunks)


def _attn_chunk(ch: Chunk, step: BlockStep, pattern: Tensor) -> Tensor:
    lo, bias, w = ch.lo, ch.bias_local, step.w
    x_ln = apply_norm(ch.x, step.scale("ln1.hook_scale", lo), w.ln1, bias)
    pat = pattern[:, :, lo:, lo:] if lo else pattern
    out = attention_prepared(x_ln, pat, step.attn, bias, credit=step.credit_attn,
                             clip_ratio=step.scale("attn.clip_ratio", lo))
    del x_ln
    if w.ln1_post is not None:
        out = apply_norm(out, step.scale("ln1_post.hook_scale", lo), w.ln1_post, bias)
    return out


def _mlp_stats(chunks: list[Chunk], step: BlockStep, out: Outputs) -> dict[int, RuleStats]:
    """First pass over the chunks for a competitive rule: per group, the statistics of every key
    (a sharded replay: of this rank's chunks, then reduced over the ranks)."""
    rule, w = step.rule, step.w
    if rule.linear or not isinstance(w.mlp, MLPView):
        return {}
    assert w.ln2 is not None
    stats: dict[int, RuleStats] = {}
    F = w.mlp.W_out.shape[0]
    per_group: dict[int, int] = {}
    for ch in chunks:
        per_group[ch.g] = per_group.get(ch.g, 0) + 1
    for ch in chunks:
        if ch.g not in stats:
            B, P = ch.x.shape[1], ch.x.shape[2] + ch.lo
            stats[ch.g] = rule.init_stats((B, P, F), ch.x.dtype, ch.x.device)
        x_ln = apply_norm(ch.x, step.scale("ln2.hook_scale", ch.lo), w.ln2, ch.bias_local)
        keys = mlp_keys(x_ln, w.mlp, ch.bias_local, rule)
        del x_ln
        keep = rule.caches_keys and (step.cache_keys or per_group[ch.g] == 1)
        ch.keys = stats[ch.g].fold(keys, ch.a, ch.lo, keep=keep)
    if step.shard is not None:  # the pass's statistics are complete here: merge them across the ranks
        _, B, P, _ = out.shape
        for g in range(out.n_groups):
            if g not in stats:
                like = chunks[0].x if chunks else torch.empty(0, dtype=out.dtype, device=out.device)
                stats[g] = rule.init_stats((B, P, F), like.dtype, like.device)
        step.shard.reduce_stats(stats)
    return stats


def _mlp_chunk(ch: Chunk, step: BlockStep, stats: dict[int, RuleStats]) -> Tensor:
    w, rule = step.w, step.rule
    assert w.mlp is not None and w.ln2 is not None
    lo, bias = ch.lo, ch.bias_local
    keys, ch.keys = ch.keys, None
    # rules that read only their statistics (and cached keys) split the clean post without the chunk's input
    needs_input = rule.linear or not isinstance(w.mlp, MLPView) or (keys is None and rule.reads_keys)
    x_ln = apply_norm(ch.x, step.scale("ln2.hook_scale", lo), w.ln2, bias) if needs_input else None
    if isinstance(w.mlp, MoEView):
        assert lo == 0 and x_ln is not None
        out = moe(x_ln, w.mlp, coeffs=step.acts, prefix=step.prefix + "mlp.", rule=rule, bias_rows=bias,
                  group_size=step.group_size, credit=step.credit_mlp)
    else:
        out = mlp_chunk(
            x_ln, w.mlp, rule=rule, neurons=mlp_neurons(w.mlp, lambda name: step.scale("mlp." + name, lo)),
            bias_rows=bias, n_rows=ch.n_rows, stats=stats.get(ch.g), keys=keys, row0=ch.a, lo=lo,
            credit=step.credit_mlp, inner_scale=step.scale("mlp.ln.hook_scale", lo),
        )
    del x_ln
    if w.ln2_post is not None:
        out = apply_norm(out, step.scale("ln2_post.hook_scale", lo), w.ln2_post, bias)
    return out
