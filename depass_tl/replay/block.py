"""One transformer block's sublayers on the flat state (pure tensor code).

A pre-norm block is ``resid_mid = resid_pre + attn(ln1(resid_pre))`` and ``resid_post = resid_mid +
mlp(ln2(resid_mid))``. The engine (:mod:`~depass_tl.replay.engine`) calls :func:`attn_step` and
:func:`mlp_step` once per sublayer on the :class:`~depass_tl.replay.layout.State` (every chunk of
components in one ``[rows, d_model]`` tensor), and they write what the replay stores into
:class:`Outputs`. Each matrix is applied to many chunks at once, with the pre-norm folded in
(:mod:`~depass_tl.replay.weights`: ``x W' / s``); attention mixes values per chunk; the MLP rule splits
each :class:`~depass_tl.replay.layout.Unit` (every component of a group at a block of positions), so a
competitive rule's statistics are complete in one pass. Variants handled here, each with frozen
coefficients:

* ``parallel_attn_mlp`` (GPT-J, NeoX): the MLP reads ``ln2(resid_pre)``; ``resid_post = resid_pre +
  attn_out + mlp_out`` and there is no ``hook_resid_mid`` (:func:`attn_step` does both sublayers).
* Gemma-2/3 post-norms (``use_normalization_before_and_after``): ``attn_out = ln1_post(attn(...))`` and
  ``mlp_out = ln2_post(mlp(...))``, RMS norms with their own frozen ``hook_scale``.
* MLP kinds: standard / gated / SoLU (:mod:`~depass_tl.replay.mlp`) and Mixtral MoE
  (:mod:`~depass_tl.replay.moe`, chunk by chunk), under any allocation rule (:mod:`~depass_tl.replay.rules`).
* Padding: :func:`pad_to_bias` puts everything at padded positions into the bias component (whole
  groups, for the initial components); :meth:`Outputs.emit` and :meth:`Outputs.settle` do the same
  for every sublayer output.
* Sources mode: module outputs of the source components are credited to the module (one chunk).

**The statistics seam.** Under a competitive rule each unit's statistics are complete after
``stats.fold`` over the unit's keys; :attr:`BlockStep.reducer`, when set, is called right there with the
statistics (e.g. an all-reduce over processes that each hold some of the unit's components, merging with
:meth:`~depass_tl.replay.rules.RuleStats.merge`) before ``stats.allocate``. Without a reducer the rule's
one-shot :meth:`~depass_tl.replay.rules.MLPRule.share` is used. A sharded replay
(:mod:`~depass_tl.replay.shard`) sets the reducer to :meth:`Shard.reduce_one
<depass_tl.replay.shard.Shard.reduce_one>`: every rank walks the same units (cut from the global plan,
:mod:`~depass_tl.replay.layout`), calls it on each, fresh statistics where it holds none of the unit's
components, and sums the padding moves with :meth:`Shard.reduce_sums
<depass_tl.replay.shard.Shard.reduce_sums>` in :meth:`Outputs.settle`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from depass_tl.model_view import BlockView, MLPView, MoEView
from depass_tl.replay.layout import Chunk, MLPPass, State
from depass_tl.replay.matmul import Operand, accumulate_, apply, operand, product
from depass_tl.replay.mlp import mlp_neurons
from depass_tl.replay.moe import moe
from depass_tl.replay.norm import apply_norm
from depass_tl.replay.rules import MLPRule, Neurons, RuleStats
from depass_tl.replay.shard import Shard
from depass_tl.replay.state import SourcesPlan
from depass_tl.replay.weights import PreparedBlock

__all__ = ["pad_to_bias", "Chunk", "Outputs", "BlockStep", "attn_step", "mlp_step", "unit_shares", "query_blocks"]

Reducer = Callable[[RuleStats], None]


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

    def needs(self, name: str) -> bool:
        """Whether a sublayer output must be seen chunk by chunk (stored, or padding to move)."""
        return self.pad is not None or name in self.wanted

    def store_state(self, name: str, chunks: list[Chunk]) -> None:
        """Store the chunks' current residual state as hook ``name`` (zeros before each chunk's ``lo``)."""
        if name in self.wanted:
            buf = torch.zeros(self.shape, dtype=chunks[0].x.dtype if chunks else self.dtype,
                              device=chunks[0].x.device if chunks else self.device)
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

    def settle(self, totals: dict[str, Tensor], chunks: list[Chunk], names: tuple[str, ...] = (),
               shard: Shard | None = None) -> None:
        """Padding: hand each group's moved totals to its bias component (state and stored output).

        ``names``: the hooks this sublayer emitted; a sharded replay sums their totals over the ranks
        first (every rank the same tensors, zeros where it moved nothing)."""
        if shard is not None and self.pad is not None:
            _, B, P, D = self.shape
            for name in names:
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
    """What the state needs at one block: its weights, its frozen tensors, the rule, the sources plan.

    Attributes:
        layer: the block index.
        w: the block's weights in the accumulation dtype.
        prep: the matrices laid out for the flat replay, norms folded in.
        acts: the block's frozen tensors (``blocks.{layer}.*``), on the block's device.
        rule: the MLP allocation rule.
        group_size: components per group.
        sources: the sources plan (None: plain components).
        reducer: called with each unit's statistics once they are complete (competitive rules).
        shard: a sharded replay's part (None: one process); its ``reduce_sums`` settles padding.
        causal: every replayed layer's frozen pattern is causal (no query attends a later key), so the
            mixing skips the keys after each block of queries (:func:`query_blocks`).
    """

    layer: int
    w: BlockView
    prep: PreparedBlock
    acts: dict[str, Tensor]
    rule: MLPRule
    group_size: int
    sources: SourcesPlan | None = None
    reducer: Reducer | None = None
    shard: Shard | None = None
    causal: bool = False
    _matrices: dict[int, tuple[Tensor, Operand]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def prefix(self) -> str:
        return f"blocks.{self.layer}."

    def scale(self, name: str, lo: int = 0, hi: int | None = None) -> Tensor | None:
        """The frozen ``blocks.{layer}.{name}`` at positions ``lo:hi`` (None when not captured)."""
        t = self.acts.get(self.prefix + name)
        return t if t is None or (lo == 0 and hi is None) else t[:, lo:hi]

    def matrix(self, W: Tensor, state: State) -> Operand:
        """``W`` (one of this block's matrices) as the products with the ``state``'s rows take it: under
        ``precision="tf32x3"`` on CUDA split once per layer (:func:`~depass_tl.replay.matmul.operand`;
        the planner budgets the parts), not once per pass; else ``W`` itself."""
        if id(W) not in self._matrices:
            self._matrices[id(W)] = (W, operand(W, beside=state.X))  # W kept with its parts: its id stays its own
        return self._matrices[id(W)][1]

    def inv_scale(self, name: str) -> Tensor | None:
        """``1 / hook_scale`` flattened to ``[batch * pos]`` (None when the norm has no scale)."""
        s = self.acts.get(self.prefix + name)
        return None if s is None else s.reshape(-1).reciprocal()

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


def _bias_add(t: Tensor, rows: slice | None, const: Tensor | None) -> None:
    if rows is not None and const is not None:
        t[rows] += const


def _bias_rows_add(t: Tensor, rows: Tensor, const: Tensor | None) -> None:
    """``t[rows] += const`` for a row index (one kernel)."""
    if const is not None:
        t.index_add_(0, rows, const.expand(len(rows), -1))


# ----------------------------------------------------------------------------------- attention
def scaled_pattern(step: BlockStep) -> tuple[Tensor, Tensor | None]:
    """The frozen pattern with ``ln1``'s row scale folded into its key columns, and that scale ``s``.

    Values are ``v_c = (x_c W') / s + b`` (:mod:`~depass_tl.replay.weights`, ``b`` on the bias rows) and
    are mixed as ``Σ_k A[q, k] v_c[k]``; ``A[q, k] / s[k]`` applied to ``x_c W'`` gives the same without a
    pass over the values, and the bias rows then add ``b · s[k]`` (``[batch, pos]`` small). Computed
    once per layer; ``s`` is None when ``ln1`` has no scale (the pattern is returned as is)."""
    pattern = step.acts[step.prefix + "attn.hook_pattern"]
    scale = step.acts.get(step.prefix + "ln1.hook_scale")
    if not step.prep.V.scaled:
        return pattern, None
    assert scale is not None, "a norm needs its captured scale"
    B, P = scale.shape[0], scale.shape[1]
    return pattern / scale.reshape(B, 1, 1, P), scale.reshape(B * P)


QUERY_BLOCK = 256
"""Causal mixing: queries are cut into blocks of at least this many positions (at most
:data:`MAX_QUERY_BLOCKS`), each multiplied only with the keys up to its end."""
MAX_QUERY_BLOCKS = 4


def query_blocks(n_pos: int, causal: bool) -> list[tuple[int, int]]:
    """Query ranges ``[q0, q1)`` of a chunk's ``n_pos`` positions for the value mixing.

    With a causal pattern ``A[q, k] = 0`` for ``k > q``, so queries ``q0:q1`` need keys ``:q1`` only: ``s``
    equal blocks multiply ``(s + 1) / (2 s)`` of the ``n_pos²`` pattern (5/8 at four blocks) instead of
    all of it, for ``s - 1`` more matrix products; the terms left out are exact zeros. Short chunks stay
    one block (the launches would cost more than the FLOPs).

    Examples:
        >>> query_blocks(1024, True)
        [(0, 256), (256, 512), (512, 768), (768, 1024)]
        >>> query_blocks(1024, False), query_blocks(300, True)
        ([(0, 1024)], [(0, 300)])
    """
    s = max(1, min(MAX_QUERY_BLOCKS, n_pos // QUERY_BLOCK)) if causal else 1
    bounds = [n_pos * j // s for j in range(s + 1)]
    return list(zip(bounds, bounds[1:]))


def _attention(state: State, step: BlockStep, i: int, j: int, pattern: Operand, scale: Tensor | None,
               fused: bool) -> Tensor | None:
    """Attention of chunks ``[i, j)``; adds into ``X`` when ``fused``, else returns ``[rows, d_model]``.

    ``pattern`` and ``scale``: :func:`scaled_pattern` (the pattern split once per layer when the
    products are, :mod:`~depass_tl.replay.matmul`)."""
    pb, B = step.prep, state.B
    chunks = state.chunks[i:j]
    r0, r1 = chunks[0].off, chunks[-1].off + chunks[-1].numel_rows
    H, e, n_kv = pb.n_heads, pb.d_head, pb.n_kv
    v = product(state.X[r0:r1], step.matrix(pb.V.W, state))  # x W'; the 1/s of ln1 is in the pattern's key columns
    clip = step.scale("attn.clip_ratio")
    z = torch.empty(r1 - r0, H * e, dtype=v.dtype, device=v.device)
    for ch in chunks:
        a, n, P_i, lo = ch.off - r0, ch.n_rows, ch.x.shape[2], ch.lo
        rows = slice(a, a + ch.numel_rows)
        bias_rows = _shift(ch.bias_flat(), r0)
        if bias_rows is not None and pb.V.const is not None:  # b_V (and ln1's bias path): b · s, see above
            v[bias_rows] += pb.V.const if scale is None else scale[:, None] * pb.V.const
        vi = v[rows].view(n, B, P_i, n_kv, e)
        if clip is not None:
            vi = vi * clip[:, lo:]
        if pb.kv_of_head is not None:
            vi = vi.index_select(3, pb.kv_of_head)  # [chunk, batch, key_pos, head, d_head]
        # z[c, b, q, h, :] = Σ_k A[b, h, q, k] v[c, b, k, h, :], one matmul per (batch, head)
        vp = operand(vi.permute(1, 3, 2, 0, 4).reshape(B * H, P_i, n * e), consume=True)  # v is not read again
        A = apply(pattern, lambda t: t[:, :, lo:, lo:].reshape(B * H, P_i, P_i))
        zr = z[rows].view(n, B, P_i, H, e)
        for q0, q1 in query_blocks(P_i, step.causal):  # causal: queries q0:q1 read keys :q1 only
            zp = product(apply(A, lambda t: t[:, q0:q1, :q1]), apply(vp, lambda t: t[:, :q1]))
            zp = zp.view(B, H, q1 - q0, n, e)
            zr[:, :, q0:q1].copy_(zp.permute(3, 0, 2, 1, 4))
    del v
    credit = step.credit_attn
    per_head = None
    if credit is not None:
        assert len(chunks) == 1, "sources mode replays one chunk"
        sources, head_rows = credit
        src = torch.tensor(sources, device=z.device)
        zc = z.view(chunks[0].n_rows, -1, H, e)
        per_head = torch.einsum("ihe,hed->hid", zc.index_select(0, src).sum(0), pb.W_O_heads)  # [head, B*P, D]
        zc.index_fill_(0, src, 0.0)
    if fused:  # resid += z W_O in one matmul
        if _needs_copy(state.X, z):
            state.add_(slice(r0, r1), z @ pb.W_O)
        else:
            accumulate_(state.X[r0:r1], z, step.matrix(pb.W_O, state), consume_a=True)
        for ch in chunks:
            rows_b = ch.bias_flat()
            if rows_b is not None and pb.b_O is not None:
                state.add_(rows_b, pb.b_O)
        return None
    out = product(z, step.matrix(pb.W_O, state), consume_a=True)
    del z
    for ch in chunks:
        _bias_add(out, _shift(ch.bias_flat(), r0), pb.b_O)
    if per_head is not None:
        ch = chunks[0]
        oc = out.view(ch.n_rows, -1, out.shape[-1])
        oc.index_add_(0, torch.tensor(credit[1], device=out.device), per_head)  # type: ignore[index]
    if step.w.ln1_post is not None:
        out = _post_norm(out, chunks, r0, step, "ln1_post.hook_scale", step.w.ln1_post)
    return out


def _shift(s: slice | None, by: int) -> slice | None:
    return None if s is None else slice(s.start - by, s.stop - by)


def _needs_copy(x: Tensor, t: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or t.requires_grad)


def _post_norm(out: Tensor, chunks: list[Chunk], r0: int, step: BlockStep, name: str, norm) -> Tensor:  # type: ignore[no-untyped-def]
    """A post-norm (Gemma) on the chunks' output rows, chunk by chunk."""
    parts = []
    for ch in chunks:
        a = ch.off - r0
        t = out[a : a + ch.numel_rows].view_as(ch.x)
        parts.append(apply_norm(t, step.scale(name, ch.lo), norm, ch.bias_local).reshape(-1, t.shape[-1]))
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------- MLP
def unit_shares(keys: Tensor, neurons: Neurons, rule: MLPRule, bias: Tensor, reducer: Reducer | None,
                rows: tuple[int, ...] | None = None) -> Tensor:
    """The rule's shares ``[n_comp, batch, width, d_mlp]`` of one unit's target (``keys`` may be consumed).

    The unit holds every component of its group that can be nonzero there, the bias last. A competitive
    rule folds every key into fresh statistics, which are then complete (``reducer`` is called with
    them), and allocates; without a reducer its one-shot :meth:`~depass_tl.replay.rules.MLPRule.share`.
    ``bias``: the unit's bias component, ``[n_comp - 1]`` (empty when the unit does not hold it).
    ``rows``: in a sharded replay, each held component's row among every rank's components of the unit
    (None: ``0 .. n_comp - 1``); the keys are folded and allocated in runs of consecutive rows, so the
    statistics' row numbers (a ``max`` winner's index) are the same on every rank. With no component
    held (``n_comp`` 0) the reducer still receives fresh statistics (every rank calls it per unit).
    """
    n_comp = keys.shape[0]
    if rule.linear or reducer is None:
        return rule.split(keys, neurons, bias, n_comp) if n_comp else keys
    stats = rule.init_stats(tuple(neurons.target.shape), keys.dtype, keys.device)
    rows = tuple(range(n_comp)) if rows is None else rows
    runs = [i for i in range(n_comp) if i == 0 or rows[i] != rows[i - 1] + 1] + [n_comp]  # starts of runs
    cached = [stats.fold(keys[i:j], rows[i], 0, keep=rule.caches_keys) for i, j in zip(runs, runs[1:])]
    reducer(stats)  # the statistics of this unit are complete here
    if not n_comp:
        return keys
    parts = []
    for (i, j), c in zip(zip(runs, runs[1:]), cached):
        use = c if rule.caches_keys else (keys[i:j] if rule.reads_keys else None)
        local = bias[(bias >= i) & (bias < j)] - i
        parts.append(stats.allocate(use, neurons.target, local, rows[i], j - i, 0))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _mlp_pass(state: State, step: BlockStep, mp: MLPPass, inv: Tensor | None) -> Tensor:
    """The MLP of one pass's units: returns their outputs ``[rows, d_model]`` in the pass's row order."""
    w, pb, rule, B = step.w, step.prep, step.rule, state.B
    m = w.mlp
    assert isinstance(m, MLPView) and pb.key is not None
    x = state.X.index_select(0, mp.index)
    if pb.key.scaled:
        assert inv is not None, "a norm needs its captured scale"
        x.mul_(inv.index_select(0, mp.pos)[:, None])
    keys = product(x, step.matrix(pb.key.W, state), consume_a=True)  # [rows, d_mlp]
    del x
    F = keys.shape[-1]
    credit = step.credit_mlp
    _bias_rows_add(keys, mp.bias_rows, pb.key.const)
    for i, u in enumerate(mp.units):
        k = keys[u.off : u.off + u.n_rows].view(u.n_comp, B, u.width, F)
        neurons = mlp_neurons(m, lambda name: step.scale("mlp." + name, u.p0, u.p1))
        unit_rule = rule
        if hasattr(rule, "edit_unit_keys"):  # the official code's key edits (rules/official.py), then its rule
            if u.n_comp:
                rule.edit_unit_keys(k, u.comps, u.p0)
            unit_rule = rule.inner
        share = unit_shares(k, neurons, unit_rule, mp.bias_of(i), step.reducer, u.rows)
        if not u.n_comp:  # a sharded replay's unit with none of this rank's components (the reducer was called)
            continue
        if m.ln is not None:  # solu_ln: the inner norm over d_mlp, its bias to the bias component
            share = apply_norm(share, step.scale("mlp.ln.hook_scale", u.p0, u.p1), m.ln, mp.bias_of(i))
        if share.data_ptr() != k.data_ptr():
            if _needs_copy(keys, share):
                keys = torch.cat([keys[: u.off], share.reshape(-1, F), keys[u.off + u.n_rows :]])
            else:
                k.copy_(share)
        del share, k
    if m.kind == "gated":
        _bias_rows_add(keys, mp.bias_rows, m.b_in)
    out = product(keys, step.matrix(m.W_out, state), consume_a=True)
    del keys
    _bias_rows_add(out, mp.bias_rows, m.b_out)
    for u in mp.units:
        if not u.n_comp:
            continue
        if credit is not None:  # sources mode: one chunk, so a unit holds every component in group order
            o = out[u.off : u.off + u.n_rows].view(u.n_comp, -1, out.shape[-1])
            src = torch.tensor(credit[0], device=out.device)
            moved = o.index_select(0, src).sum(0)
            o.index_fill_(0, src, 0.0)
            o[credit[1]] += moved
        if w.ln2_post is not None:
            o = out[u.off : u.off + u.n_rows].view(u.n_comp, B, u.width, -1)
            o.copy_(apply_norm(o, step.scale("ln2_post.hook_scale", u.p0, u.p1), w.ln2_post, mp.bias_of(mp.units.index(u))))
    return out


def _moe_chunk(ch: Chunk, step: BlockStep) -> Tensor:
    w = step.w
    assert isinstance(w.mlp, MoEView) and w.ln2 is not None and ch.lo == 0
    x_ln = apply_norm(ch.x, step.scale("ln2.hook_scale"), w.ln2, ch.bias_local)
    out = moe(x_ln, w.mlp, coeffs=step.acts, prefix=step.prefix + "mlp.", rule=step.rule, bias_rows=ch.bias_local,
              group_size=step.group_size, credit=step.credit_mlp)
    if w.ln2_post is not None:
        out = apply_norm(out, step.scale("ln2_post.hook_scale"), w.ln2_post, ch.bias_local)
    return out


def _mlp_all(state: State, step: BlockStep, fused: bool) -> Tensor | None:
    """The MLP on every active chunk; adds into ``X`` when ``fused``, else returns ``[rows, d_model]``
    in the state's row order. Reads ``X`` before writing it (units gather their rows first)."""
    R = state.active_rows
    if isinstance(step.w.mlp, MoEView):
        out = state.X.new_empty(R, state.D)
        for ch in state.active:
            out[ch.off : ch.off + ch.numel_rows] = _moe_chunk(ch, step).reshape(-1, state.D)
        if fused:
            state.add_(slice(0, R), out)
            return None
        return out
    inv = step.inv_scale("ln2.hook_scale")
    out = None if fused else state.X.new_empty(R, state.D)
    for mp in state.mlp_passes():  # passes hold disjoint rows: adding one never changes what the next reads
        y = _mlp_pass(state, step, mp, inv)
        if out is None:
            state.index_add_(mp.index, y)
        elif _needs_copy(out, y):
            out = out.index_copy(0, mp.index, y)
        else:
            out.index_copy_(0, mp.index, y)
    return out


# ----------------------------------------------------------------------------------- the steps
def _emit(state: State, out: Outputs, name: str, t: Tensor, totals: dict[str, Tensor]) -> Tensor:
    """Every active chunk's part of ``t`` ``[rows, d_model]`` through :meth:`Outputs.emit`."""
    parts = []
    changed = False
    for ch in state.active:
        part = t[ch.off : ch.off + ch.numel_rows].view_as(ch.x)
        got = out.emit(name, part, ch, totals)
        changed |= got is not part
        parts.append(got.reshape(-1, state.D))
    return torch.cat(parts) if changed else t


def attn_step(state: State, step: BlockStep, out: Outputs, *, store_pre: bool, store_after: bool) -> None:
    """The attention sublayer (and, in a parallel block, the MLP) on every active chunk.

    ``store_pre``: store ``hook_resid_pre`` first; ``store_after``: store the residual state after the
    sublayer (``hook_resid_mid``, or ``hook_resid_post`` when the block has no separate MLP stage).
    """
    p, block = step.prefix, step.w
    if store_pre:
        out.store_state(p + "hook_resid_pre", state.active)
    pattern, scale = scaled_pattern(step)
    # split once per layer when the products are (precision="tf32x3"); a scaled pattern is this layer's own
    pattern = operand(pattern, consume=scale is not None, beside=state.X)
    parallel = block.parallel and block.mlp is not None
    fused = not parallel and not out.needs(p + "hook_attn_out") and step.sources is None and block.ln1_post is None
    parts = []
    for i, j in state.attn_passes():
        parts.append(_attention(state, step, i, j, pattern, scale, fused))
    if fused:
        return _store_after(state, out, p, block, store_after)
    a_out = torch.cat(parts) if len(parts) > 1 else parts[0] if parts else state.X.new_zeros(0, state.D)
    assert a_out is not None
    m_out = _mlp_all(state, step, fused=False) if parallel else None
    totals: dict[str, Tensor] = {}
    a_out = _emit(state, out, p + "hook_attn_out", a_out, totals)
    if m_out is not None:
        a_out = a_out + _emit(state, out, p + "hook_mlp_out", m_out, totals)
    state.add_(slice(0, state.active_rows), a_out)
    del a_out, m_out
    out.settle(totals, state.active, (p + "hook_attn_out",) + ((p + "hook_mlp_out",) if parallel else ()), step.shard)
    _store_after(state, out, p, block, store_after)


def _store_after(state: State, out: Outputs, p: str, block: BlockView, store_after: bool) -> None:
    if store_after:
        out.store_state(p + ("hook_resid_mid" if block.mlp is not None and not block.parallel else "hook_resid_post"),
                        state.active)


def mlp_step(state: State, step: BlockStep, out: Outputs, *, store_after: bool) -> None:
    """The MLP sublayer on every active chunk; stores ``hook_resid_post``."""
    p = step.prefix
    name = p + "hook_mlp_out"
    fused = not out.needs(name)
    m_out = _mlp_all(state, step, fused)
    if m_out is not None:
        totals: dict[str, Tensor] = {}
        m_out = _emit(state, out, name, m_out, totals)
        state.add_(slice(0, state.active_rows), m_out)
        del m_out
        out.settle(totals, state.active, (name,), step.shard)
    if store_after:
        out.store_state(p + "hook_resid_post", state.active)
