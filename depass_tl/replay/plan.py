"""How a replay is cut into chunks of components, and what memory it needs.

A chunk is a run of consecutive components of one group. Each chunk keeps its own state
``[chunk, batch, pos - lo, d_model]``: ``lo`` is the first position where any of its components is
nonzero at the start (causal skipping: a token component is exactly zero before its position, and
with a causal attention pattern it stays so, so those positions are never computed). A group's bias
component is always in a chunk whose ``lo`` is 0.

Memory (``max_memory``), in elements of the accumulation dtype:

* persistent: the initial components (dense, held by the caller), the chunk states
  (``Σ rows·batch·(pos - lo)·d_model``), every stored output hook (dense ``[component, batch, pos,
  d_model]``), per group the statistics of a competitive MLP rule (``[batch, pos, d_mlp]`` times
  :meth:`~depass_tl.replay.rules.MLPRule.stats_bytes`), and one block's weights laid out for the replay;
* working, per (component, position) of the chunk being processed: the larger of the attention
  intermediates (normed input, values, mixed values and the einsum's copies, output) and the MLP
  intermediates (normed input, keys, shares, output), with a 25 % margin.

Chunks are then as large as the budget allows (greedily, in component order). A budget that cannot
hold the persistent part plus one component at every position raises a :class:`DePassError` that
says what to drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.memory import format_bytes
from depass_tl.model_view import MLPView, ModelView, MoEView
from depass_tl.replay.rules import MLPRule, RuleLike, get_rule

__all__ = ["ChunkPlan", "row_starts", "working_elements", "plan_chunks", "DEFAULT_CAUSAL_SPLITS"]

DEFAULT_CAUSAL_SPLITS = 8  # without a budget, a group whose components start late is cut in this many chunks


@dataclass(frozen=True)
class ChunkPlan:
    """Chunks as ``(group, first row in group, stop row in group, lo)``; ``estimate`` in bytes (0: no budget)."""

    chunks: tuple[tuple[int, int, int, int], ...]
    estimate: int = 0
    cache_keys: bool = True  # rules that can: keep the first pass's per-chunk keys (softmax: exponentials)

    def of_group(self, g: int) -> list[tuple[int, int, int]]:
        return [(a, b, lo) for gg, a, b, lo in self.chunks if gg == g]


def row_starts(components: Tensor, causal: bool) -> list[int]:
    """Per component (the last one is the bias), the first position where it is nonzero (0 if ``not causal``)."""
    K, B, P, D = components.shape
    if not causal:
        return [0] * K
    nz = (components != 0).any(dim=3).any(dim=1)  # [component, pos]
    first = torch.where(nz.any(1), nz.to(torch.int8).argmax(1), torch.full((K,), P - 1, device=nz.device))
    starts = [min(int(v), P - 1) for v in first.tolist()]
    starts[-1] = 0  # the bias component receives constants everywhere
    return starts


def working_elements(view: ModelView, rule: MLPRule, cache_keys: bool) -> int:
    """Upper estimate of the working elements per (component, batch, position) of one chunk."""
    D = view.d_model
    attn = 0
    mlp = 0
    for block in view.blocks:
        n_kv, _, d_head = block.attn.W_V.shape
        n_heads = block.attn.W_O.shape[0]
        attn = max(attn, 3 * D + n_kv * d_head + 4 * n_heads * d_head)
        m = block.mlp
        if isinstance(m, MLPView):
            F = m.W_in.shape[1]
            extra = F if m.kind == "gated" else 0
            per = 3 * D + 3 * F + extra + (F if cache_keys and rule.caches_keys else 0)
            mlp = max(mlp, per)
        elif isinstance(m, MoEView):
            F = m.experts[0].W_in.shape[1]
            mlp = max(mlp, 4 * D + 4 * F)
    parallel = any(b.parallel for b in view.blocks)
    per = attn + mlp if parallel else max(attn, mlp)
    return int(per * 1.25) + 1


def _mlp_numel(m: MLPView | MoEView | None) -> int:
    if isinstance(m, MLPView):
        return sum(t.numel() for t in (m.W_in, m.W_gate, m.W_out) if t is not None)
    if isinstance(m, MoEView):
        return sum(t.numel() for e in m.experts for t in (e.W_gate, e.W_in, e.W_out))
    return 0


def plan_chunks(
    view: ModelView,
    starts: Sequence[Sequence[int]],
    *,
    batch: int,
    n_pos: int,
    itemsize: int,
    rule: RuleLike,
    n_stored: int,
    chunk_size: int | None,
    max_memory: int | None,
    splittable: bool,
    why_not: str,
) -> ChunkPlan:
    """Cut every group into chunks.

    Args:
        starts: per group, per component, its first nonzero position (:func:`row_starts`).
        rule: the MLP rule (a rule object or a registered name): its statistics and cached keys
            are budgeted.
        n_stored: how many hooks are stored densely (``unembed.hook_in`` included).
        chunk_size: at most this many components per chunk (the bias component is its own chunk).
        max_memory: a budget in bytes (see the module docstring).
        splittable: False when the replay cannot be chunked (sources mode, MoE under a competitive rule).
        why_not: the reason, for the error when a split is needed but impossible.
    """
    rule = get_rule(rule)
    G = len(starts)
    K = len(starts[0])
    C = G * K
    dense = C * batch * n_pos * view.d_model
    if chunk_size is None and max_memory is None:
        chunks: list[tuple[int, int, int, int]] = []
        for g, st in enumerate(starts):
            late = max(st[:-1], default=0)
            if not splittable or late == 0 or K <= 2:
                chunks.append((g, 0, K, 0))
                continue
            size = -(-(K - 1) // DEFAULT_CAUSAL_SPLITS)
            for a in range(0, K - 1, size):
                b = min(a + size, K - 1)
                chunks.append((g, a, b, min(st[a:b])))
            chunks.append((g, K - 1, K, 0))
        return ChunkPlan(tuple(chunks))
    if chunk_size is not None and chunk_size < 1:
        raise DePassError(f"chunk_size must be a positive number of components; got {chunk_size}.")
    d_mlp = max(
        [b.mlp.W_in.shape[1] for b in view.blocks if isinstance(b.mlp, MLPView)]
        + [b.mlp.experts[0].W_in.shape[1] for b in view.blocks if isinstance(b.mlp, MoEView)]
        + [0]
    )
    per_rowpos = working_elements(view, rule, cache_keys=False) * batch * itemsize
    stats = 0 if rule.linear else G * batch * n_pos * d_mlp * rule.stats_bytes(itemsize)
    state = sum((n_pos - lo) for st in starts for lo in st) * batch * view.d_model * itemsize
    block_weights = max(
        sum(t.numel() for t in (b.attn.W_V, b.attn.W_O)) + _mlp_numel(b.mlp) for b in view.blocks
    ) * itemsize
    persistent = state + (n_stored + 1) * dense * itemsize + stats + 2 * block_weights
    if max_memory is None:
        cap = None  # rows * positions per chunk: unlimited
    else:
        room = max_memory - persistent
        if room < per_rowpos * n_pos:
            raise DePassError(
                f"max_memory={format_bytes(max_memory)} is too small: the component states and stored hooks alone "
                f"need {format_bytes(persistent)} (the initial components and {n_stored} stored hook(s) of "
                f"{format_bytes(dense * itemsize)} each, states {format_bytes(state)}) and one component needs {format_bytes(per_rowpos * n_pos)} of working "
                "memory. Store fewer hooks (names_filter=[] keeps only unembed.hook_in), use fewer components, "
                "a shorter input or a smaller batch, or raise max_memory."
            )
        cap = room // per_rowpos
    chunks = []
    for g, st in enumerate(starts):
        body = K - 1
        max_rows = chunk_size or K
        if chunk_size is None and max(st[:-1], default=0) > 0:  # keep the causal split of the default plan
            max_rows = -(-(K - 1) // DEFAULT_CAUSAL_SPLITS)
        a = 0
        while a < body:
            lo = st[a]
            b = a + 1
            while b < body:
                new_lo = min(lo, st[b])
                if b + 1 - a > max_rows:
                    break
                if cap is not None and (b + 1 - a) * (n_pos - new_lo) > cap:
                    break
                lo, b = new_lo, b + 1
            chunks.append((g, a, b, lo))
            a = b
        chunks.append((g, K - 1, K, 0))
    if not splittable and len(chunks) > G:
        if max_memory is not None and cap is not None and cap >= K * n_pos and chunk_size is None:
            return ChunkPlan(tuple((g, 0, K, 0) for g in range(G)), persistent + cap * per_rowpos)
        raise DePassError(
            f"this replay cannot be cut into chunks of components ({why_not}), and the budget "
            f"(chunk_size={chunk_size}, max_memory={None if max_memory is None else format_bytes(max_memory)}) "
            "asks for it. Drop chunk_size/max_memory or raise the budget."
        )
    if not splittable:
        chunks = [(g, 0, K, 0) for g in range(G)]
    used = 0 if cap is None else max((b - a) * (n_pos - lo) for _, a, b, lo in chunks) * per_rowpos
    # keeping every chunk's keys (softmax: exponentials) between the two passes saves recomputing them
    cached = sum((b - a) * (n_pos - lo) for _, a, b, lo in chunks) * batch * d_mlp * itemsize
    cache = rule.caches_keys and max_memory is not None and persistent + used + cached <= max_memory
    return ChunkPlan(tuple(chunks), persistent + used + (cached if cache else 0), cache)
