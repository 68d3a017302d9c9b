"""How a replay is cut into chunks and passes, and what memory it needs.

A chunk is a run of consecutive components of one group, held from position ``lo`` on (the first
position where any of them is nonzero: causal skipping). Token components start one position apart, so
a chunk of ``r`` of them also holds about ``r / 2`` positions per component that are still zero: with
``n`` equal chunks the replay computes ``(n + 1) / (2n)`` of the full ``components x positions`` area
against the ideal ``1/2``, a waste of ``1/n``. More chunks waste less but cost more (smaller) kernels,
so the default size (:data:`DEFAULT_CHUNK_ROWS` components) depends on the device: kernel launches
are cheap next to the arithmetic on a CPU, expensive on a GPU for short inputs; at most
:data:`MAX_CAUSAL_CHUNKS` per group. A group's bias component is always its own chunk (``lo`` = 0).

The chunks live in one flat state (:mod:`~depass_tl.replay.layout`); each sublayer runs in *passes* of
at most ``attn_rows`` / ``mlp_rows`` (component, batch, position) rows, sized so the working tensors fit.

**Memory** (``max_memory``, bytes; it bounds the whole call, capture included). Counted:

* held: the captured run (``held_bytes``, measured by the caller) and the initial components
  (``init_bytes``; token components are kept as ``[batch, pos, d_model]``, not densely);
* the flat state (``Σ rows · d_model``) and its index tensors; every stored hook but the last
  (dense ``[component, batch, pos, d_model]``); one block's weights in the accumulation dtype, laid out
  for the replay, its frozen tensors and its attention pattern with ``ln1``'s scale folded in;
* per pass row, the working tensors: attention values, mixed values and their per-chunk copies (and the
  output unless it is added in place); the MLP's gathered input, keys/shares (``d_mlp``), the rule's
  temporaries and the output;
* at the end, the dense ``unembed.hook_in`` next to the state.

Passes get the room left (at most :data:`DEFAULT_PASS_BYTES` of working memory without a budget). A
budget that cannot hold the fixed part plus one pass of the smallest possible size raises a
:class:`DePassError` that says what to drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from depass_tl.errors import DePassError, DePassValueError
from depass_tl.memory import format_bytes
from depass_tl.model_view import MLPView, ModelView, MoEView
from depass_tl.replay.rules import MLPRule, RuleLike, get_rule

__all__ = [
    "ChunkPlan", "row_starts", "plan_chunks", "DEFAULT_CHUNK_ROWS", "MAX_CAUSAL_CHUNKS", "DEFAULT_PASS_BYTES",
    "MARGIN",
]

DEFAULT_CHUNK_ROWS = {"cpu": 8, "cuda": 32}
"""Components per causal chunk by device type (others: as ``cuda``): the causal waste is about
``rows / pos``, the number of per-chunk kernels per sublayer about ``pos / rows``."""
MAX_CAUSAL_CHUNKS = 64
DEFAULT_PASS_BYTES = 2 * 2**30
"""Working memory of one pass when no ``max_memory`` is given."""
MARGIN = 1.15
"""Safety factor on the working-memory estimate (allocator rounding, small temporaries)."""


@dataclass(frozen=True)
class ChunkPlan:
    """Chunks as ``(group, first row in group, stop row in group, lo)``; rows per pass; ``estimate``
    in bytes: the planned peak of the call (0 without a budget)."""

    chunks: tuple[tuple[int, int, int, int], ...]
    attn_rows: int = 2**62
    mlp_rows: int = 2**62
    estimate: int = 0
    final_rows: int = 2**62  # rows per pass of the final norm (next to the dense output)

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


def _d_mlp(view: ModelView) -> int:
    return max(
        [b.mlp.W_in.shape[1] for b in view.blocks if isinstance(b.mlp, MLPView)]
        + [b.mlp.experts[0].W_in.shape[1] for b in view.blocks if isinstance(b.mlp, MoEView)]
        + [0]
    )


def _attn_row_elems(view: ModelView, split_operands: bool = False) -> int:
    """Working elements per (component, batch, position) row of an attention pass (``split_operands``:
    the products' operands split into two parts, :mod:`~depass_tl.replay.matmul`)."""
    out = 0
    for b in view.blocks:
        n_kv, D, e = b.attn.W_V.shape
        H = b.attn.W_O.shape[0]
        gqa = H * e if n_kv != H else 0
        # values, mixed values, the chunk's permuted copy and matmul output, the output (when not added
        # in place), the 1/scale per row; a parallel block's MLP output beside it
        per = n_kv * e + 3 * H * e + gqa + D + 1 + (D if b.parallel else 0)
        if split_operands:  # the state's rows as hi and lo, the permuted values' and z's hi parts
            per += 2 * D + 2 * H * e
        out = max(out, per)
    return out


def _mlp_row_bytes(view: ModelView, rule: MLPRule, itemsize: int, split_operands: bool = False) -> int:
    """Working bytes per row of an MLP pass: gathered input, keys (shares in place), the rule's
    temporaries, output, and the row index / position (int64 each); ``split_operands``: the hi parts
    of the input and of the shares beside them."""
    D, out = view.d_model, 0
    for b in view.blocks:
        m = b.mlp
        if isinstance(m, MLPView):
            F = m.W_in.shape[1]
            tmp = rule.split_temporaries * F  # what the rule's split allocates beside the keys
            extra = 2 * F if m.ln is not None else 0  # solu_ln's inner norm
            elems = 2 * D + F + tmp + extra + (D + F if split_operands else 0)
            out = max(out, int(elems * itemsize) + 16)  # + the row index and position
        elif isinstance(m, MoEView):
            F = m.experts[0].W_in.shape[1]
            out = max(out, (4 * D + 4 * F) * itemsize)
    return max(out, 1)


def _block_weight_bytes(view: ModelView, itemsize: int, *, split: bool = False) -> int:
    """The largest block's matrices; ``split``: only those ``precision="tf32x3"`` splits
    (``BlockStep.matrix``: ``W_V``, ``W_O`` and, on dense MLPs, the key matrix, ``W_in`` or ``W_gate`` of
    the same shape, and ``W_out``; MoE layers stay IEEE)."""
    def mlp_numel(m: MLPView | MoEView | None) -> int:
        if isinstance(m, MLPView):
            return sum(t.numel() for t in ((m.W_in, m.W_out) if split else (m.W_in, m.W_gate, m.W_out)) if t is not None)
        if isinstance(m, MoEView) and not split:
            return sum(t.numel() for e in m.experts for t in (e.W_gate, e.W_in, e.W_out))
        return 0

    return max(b.attn.W_V.numel() + b.attn.W_O.numel() + mlp_numel(b.mlp) for b in view.blocks) * itemsize


def _cut(starts: Sequence[int], K: int, size: int, g: int) -> list[tuple[int, int, int, int]]:
    """Components ``0 .. K-2`` of group ``g`` in chunks of at most ``size``, then the bias."""
    out = []
    for a in range(0, K - 1, size):
        b = min(a + size, K - 1)
        out.append((g, a, b, min(starts[a:b])))
    out.append((g, K - 1, K, 0))
    return out


def _default_rows(device_type: str, K: int, late: bool) -> int:
    if not late:
        return K
    rows = DEFAULT_CHUNK_ROWS.get(device_type, DEFAULT_CHUNK_ROWS["cuda"])
    return max(rows, -(-(K - 1) // MAX_CAUSAL_CHUNKS))


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
    device_type: str = "cpu",
    held_bytes: int = 0,
    init_bytes: int = 0,
    split_operands: bool = False,
) -> ChunkPlan:
    """Cut every group into chunks and size the passes.

    Args:
        starts: per group, per component, its first nonzero position (:func:`row_starts`).
        rule: the MLP rule (a rule object or a registered name): its temporaries are budgeted.
        n_stored: how many hooks are stored densely (``unembed.hook_in`` included).
        chunk_size: at most this many components per chunk (the bias component is its own chunk).
        max_memory: a budget in bytes for the whole call (see the module docstring).
        splittable: False when the replay cannot be cut into chunks (sources mode, MoE under a
            competitive rule).
        why_not: the reason, for the error when a split is needed but impossible.
        device_type: where the replay runs (``"cpu"``, ``"cuda"``): the default chunk size.
        held_bytes: memory already held for the call (the captured run).
        init_bytes: memory of the initial components.
        split_operands: the products' float32 operands are split in two (``precision="tf32x3"``,
            :mod:`~depass_tl.replay.matmul`): their parts are budgeted.
    """
    rule = get_rule(rule)
    if isinstance(chunk_size, bool) or (chunk_size is not None and chunk_size < 1):  # True is not a size
        raise DePassValueError(f"chunk_size must be a positive number of components; got {chunk_size}.")
    G, K = len(starts), len(starts[0])
    C, D, B, P = G * K, view.d_model, batch, n_pos
    dense = C * B * P * D * itemsize
    attn_row = _attn_row_elems(view, split_operands) * itemsize
    mlp_row = _mlp_row_bytes(view, rule, itemsize, split_operands)
    heads = max(b.attn.W_O.shape[0] for b in view.blocks) if view.blocks else 0
    # one block's weights laid out for the replay, and its pattern with ln1's scale folded in (block.py)
    weights = 2 * _block_weight_bytes(view, itemsize) + B * heads * P * P * itemsize
    if split_operands:  # the pattern's second part, and the block's split matrices as two parts each
        weights += B * heads * P * P * itemsize + 2 * _block_weight_bytes(view, itemsize, split=True)

    def cut(size: int) -> list[tuple[int, int, int, int]]:
        if not splittable:
            return [(g, 0, K, 0) for g in range(G)]
        return [c for g, st in enumerate(starts) for c in _cut(st, K, size, g)]

    if not splittable and chunk_size is not None and chunk_size < K:
        raise DePassError(
            f"this replay cannot be cut into chunks of components ({why_not}), and chunk_size={chunk_size} "
            "asks for it. Drop chunk_size (max_memory still bounds the working memory)."
        )
    late = any(max(st[:-1], default=0) > 0 for st in starts)
    size = min(chunk_size or K, _default_rows(device_type, K, late) if chunk_size is None else K)
    chunks = cut(size)

    def rows(ch: tuple[int, int, int, int]) -> int:
        return (ch[2] - ch[1]) * B * (P - ch[3])

    final_row = int(3 * D * itemsize * MARGIN)  # the final norm's temporaries per row

    def fixed(chs: list[tuple[int, int, int, int]]) -> tuple[int, int]:
        """Bytes held through the layers, and at the final norm (before its temporaries)."""
        R = sum(rows(c) for c in chs)
        layers = held_bytes + init_bytes + R * (D * itemsize + 24) + max(n_stored - 1, 0) * dense + weights
        final = held_bytes + init_bytes + R * (D * itemsize + 24) + n_stored * dense
        return layers, final

    if max_memory is None:
        attn_rows = max(1, int(DEFAULT_PASS_BYTES / (attn_row * MARGIN)))
        mlp_rows = max(1, int(DEFAULT_PASS_BYTES / (mlp_row * MARGIN)))
        final_rows = max(1, int(DEFAULT_PASS_BYTES / final_row))
        return ChunkPlan(tuple(chunks), max(attn_rows, max(rows(c) for c in chunks)), mlp_rows, 0, final_rows)

    while True:
        layers, final = fixed(chunks)
        room = max_memory - layers
        biggest = max(rows(c) for c in chunks)
        need_attn = int(biggest * attn_row * MARGIN)
        need_mlp = int(K * B * mlp_row * MARGIN)  # one position, every component of a group
        final_room = max_memory - final
        if room >= max(need_attn, need_mlp) and final_room >= B * P * final_row:
            break
        if not splittable or size == 1 or final_room < B * P * final_row or room < need_mlp:
            why = (f"this replay cannot be cut into chunks of components ({why_not}); one chunk needs "
                   f"{format_bytes(need_attn)} of working memory. " if not splittable
                   and final_room >= B * P * final_row and room >= need_mlp else "")
            raise DePassError(
                f"max_memory={format_bytes(max_memory)} is too small: {why}The captured run "
                f"({format_bytes(held_bytes)}), the initial components ({format_bytes(init_bytes)}), the component "
                f"states ({format_bytes(sum(rows(c) for c in chunks) * D * itemsize)}) and {n_stored} stored hook(s) of "
                f"{format_bytes(dense)} each need {format_bytes(max(layers, final))}, and one pass needs "
                f"{format_bytes(max(need_attn, need_mlp))} more. Store fewer hooks (names_filter=[] keeps only "
                "unembed.hook_in), use fewer components, a shorter input or a smaller batch, or raise max_memory."
            )
        size = max(1, size // 2)
        chunks = cut(size)
    attn_rows = max(biggest, int(min(room, DEFAULT_PASS_BYTES) / (attn_row * MARGIN)))
    mlp_rows = max(K * B, int(min(room, DEFAULT_PASS_BYTES) / (mlp_row * MARGIN)))
    final_rows = max(B * P, int(min(final_room, DEFAULT_PASS_BYTES) / final_row))
    work = max(min(attn_rows * attn_row, room), min(mlp_rows * mlp_row, room))
    estimate = max(layers + int(work * MARGIN), final + min(final_rows * final_row, final_room))
    return ChunkPlan(tuple(chunks), attn_rows, mlp_rows, estimate, final_rows)
