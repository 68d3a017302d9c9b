"""The replay's state in one flat tensor: every chunk's rows back to back, and the passes over it.

A *chunk* is a run of consecutive components ``[a, b)`` of one group, held from position ``lo`` on
(causal skipping: a token component is exactly zero before its own position). Its state is
``[b - a, batch, pos - lo, d_model]``; the :class:`State` keeps all chunks in one ``[rows, d_model]``
tensor ``X`` (chunk after chunk, each in ``(component, batch, position)`` order), so every linear map of
a sublayer (``W_V``, ``W_O``, the MLP's key matrix and ``W_out``, with the norms folded in) is one
matrix product over many chunks at once, and only what mixes positions (attention) or components
(an MLP rule's competition) works chunk by chunk or unit by unit:

* **attention passes**: runs of consecutive chunks, i.e. contiguous row ranges of ``X``; values are
  mixed per chunk with the frozen pattern restricted to positions ``lo:``.
* **MLP units**: for a group and a block of positions ``[p0, p1)`` between chunk starts, every chunk of
  the group that is held there (``lo <= p0``), in component order: ``[components, batch, p1 - p0]`` rows,
  gathered from ``X`` by one index. A unit holds *every* component of its group that can be nonzero at
  those positions, so a competitive rule's statistics are complete within it (no second pass, no
  cached keys); units are grouped into **MLP passes** that share their matrix products.

**A sharded replay** (:mod:`~depass_tl.replay.shard`): a rank's state holds only the chunks it owns,
but its units are cut from the *global* plan (``every``), so every rank walks the same units in the
same order, each with the same positions; a unit then holds this rank's components of it (maybe
none, maybe not the bias), and :attr:`Unit.rows` says where they sit among all of the unit's
components (a rule's tie-breaks and :class:`~depass_tl.replay.rules.RuleStats` rows are global).

Rows per pass are capped by the memory plan (:mod:`~depass_tl.replay.plan`); the index tensors are
built once per replay on the CPU and moved with the state (:meth:`State.to`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Chunk", "Unit", "MLPPass", "State", "attn_passes", "mlp_passes"]


class Chunk:
    """Consecutive components ``[a, b)`` of group ``g`` (groups of ``K``), held from position ``lo`` on.

    ``off`` is its first row in the flat state and ``x`` its view ``[b - a, batch, pos - lo, d_model]``.
    """

    def __init__(self, g: int, a: int, b: int, lo: int, K: int, x: Tensor, off: int = 0) -> None:
        self.g, self.a, self.b, self.lo = g, a, b, lo
        self.rows = slice(g * K + a, g * K + b)  # in the concatenated component axis
        self.has_bias = b == K
        self.x: Tensor = x  # [chunk, batch, pos - lo, d_model]
        self.off = off

    @property
    def n_rows(self) -> int:
        return self.b - self.a

    @property
    def numel_rows(self) -> int:
        """Flat rows: components x batch x positions held."""
        n, B, P, _ = self.x.shape
        return n * B * P

    @property
    def bias_local(self) -> Tensor:
        """The local index of the group's bias component (empty when this chunk does not hold it)."""
        return torch.tensor([self.b - self.a - 1] if self.has_bias else [], dtype=torch.long, device=self.x.device)

    def bias_flat(self) -> slice | None:
        """The flat rows of the group's bias component (its last component), or None."""
        if not self.has_bias:
            return None
        _, B, P, _ = self.x.shape
        stop = self.off + self.numel_rows
        return slice(stop - B * P, stop)


@dataclass(frozen=True)
class Unit:
    """All components of group ``g`` held at positions ``[p0, p1)``: rows ``[n_comp, batch, p1 - p0]``
    at ``off`` in its pass (the group's bias component last).

    In a sharded replay only this rank's components of the unit (``n_comp`` may be 0); ``rows`` are
    their places among all of the unit's components (one process: ``0 .. n_comp - 1``), ``has_bias``
    whether this rank holds the group's bias component."""

    g: int
    p0: int
    p1: int
    n_comp: int
    off: int
    n_rows: int
    comps: tuple[int, ...] = ()  # the held components' indices within the group, in row order
    rows: tuple[int, ...] = ()  # their rows among every rank's components of the unit
    has_bias: bool = True

    @property
    def width(self) -> int:
        return self.p1 - self.p0

    def bias_rows(self, batch: int) -> slice:
        """The bias component's rows within the pass."""
        stop = self.off + self.n_rows
        return slice(stop - batch * self.width, stop)


@dataclass
class MLPPass:
    """Units sharing one gather and two matrix products: ``index`` (rows of ``X``) and ``pos`` (their
    ``batch * n_pos + position``), unit after unit; ``bias`` holds each unit's local bias index
    (``n_comp - 1``), so :meth:`bias_of` is a view on the pass's device, never a new tensor."""

    units: tuple[Unit, ...]
    index: Tensor
    pos: Tensor
    bias: Tensor
    bias_rows: Tensor  # the rows (within the pass) of every unit's bias component

    def to(self, device: torch.device) -> None:
        self.index = self.index.to(device)
        self.pos = self.pos.to(device)
        self.bias = self.bias.to(device)
        self.bias_rows = self.bias_rows.to(device)

    def bias_of(self, i: int) -> Tensor:
        return self.bias[i : i + 1] if self.units[i].has_bias else self.bias[:0]


def _chunk_rows(n: int, B: int, P: int, lo: int, off: int) -> tuple[Tensor, Tensor]:
    """Flat row numbers and ``batch * P + position`` of a chunk's rows, in ``(component, batch, pos)`` order."""
    w = P - lo
    pos = (torch.arange(B)[:, None] * P + torch.arange(lo, P)[None]).reshape(1, -1).expand(n, -1).reshape(-1)
    return torch.arange(off, off + n * B * w), pos


def attn_passes(chunks: Sequence[Chunk], max_rows: int) -> list[tuple[int, int]]:
    """Consecutive chunks ``[i, j)`` whose rows together stay within ``max_rows`` (at least one chunk each)."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(chunks):
        j, rows = i + 1, chunks[i].numel_rows
        while j < len(chunks) and rows + chunks[j].numel_rows <= max_rows:
            rows += chunks[j].numel_rows
            j += 1
        out.append((i, j))
        i = j
    return out


def mlp_passes(chunks: Sequence[Chunk], n_pos: int, batch: int, max_rows: int,
               every: Sequence[tuple[int, int, int, int]] | None = None) -> list[MLPPass]:
    """The MLP units of the chunks' groups, grouped into passes of at most ``max_rows`` rows.

    A unit spans a block of positions between consecutive chunk starts of its group, narrowed (never
    below one position) until it fits ``max_rows``. ``every``: a sharded replay's global plan
    ``(group, a, b, lo)`` of the active groups; the units are then cut from it (the same on every
    rank) and hold the components of ``chunks`` (this rank's) among them.
    """
    B, P = batch, n_pos
    if every is None:
        every = [(ch.g, ch.a, ch.b, ch.lo) for ch in chunks]
    # per group: every component's (index in group, lo), in chunk order
    glob: dict[int, list[tuple[int, int]]] = {}
    for g, a, b, lo in every:
        glob.setdefault(g, []).extend((k, lo) for k in range(a, b))
    # per component (chunk order): its chunk's first row, lo, and its index in the chunk
    comp_off = torch.tensor([ch.off for ch in chunks for _ in range(ch.n_rows)], dtype=torch.long)
    comp_lo = torch.tensor([ch.lo for ch in chunks for _ in range(ch.n_rows)], dtype=torch.long)
    comp_c = torch.tensor([c for ch in chunks for c in range(ch.n_rows)], dtype=torch.long)
    comp_g = torch.tensor([ch.g for ch in chunks for _ in range(ch.n_rows)], dtype=torch.long)
    comp_k = [ch.a + c for ch in chunks for c in range(ch.n_rows)]  # index within the group
    comp_bias = [ch.has_bias and c == ch.n_rows - 1 for ch in chunks for c in range(ch.n_rows)]
    b = torch.arange(B)[None, :, None]
    blocks: list[tuple[int, int, int, Tensor, dict[int, int]]] = []
    for g in sorted(glob):
        los = sorted({lo for _, lo in glob[g]})
        for p0, p1 in zip(los, los[1:] + [P]):
            row_of = {k: r for r, k in enumerate(k for k, lo in glob[g] if lo <= p0)}  # every rank's, in order
            held = torch.nonzero((comp_g == g) & (comp_lo <= p0)).flatten()
            step = max(1, min(p1 - p0, max_rows // max(1, len(row_of) * B)))
            for q0 in range(p0, p1, step):
                blocks.append((g, q0, min(q0 + step, p1), held, row_of))
    passes: list[MLPPass] = []
    units: list[Unit] = []
    idx: list[Tensor] = []
    pos: list[Tensor] = []
    rows = 0
    for g, p0, p1, held, row_of in blocks:
        n = len(held) * B * (p1 - p0)
        if units and rows + n > max_rows:
            passes.append(_pass(units, idx, pos, B))
            units, idx, pos, rows = [], [], [], 0
        lo, off, c = comp_lo[held][:, None, None], comp_off[held][:, None, None], comp_c[held][:, None, None]
        p = torch.arange(p0, p1)[None, None, :]
        idx.append((off + (c * B + b) * (P - lo) + (p - lo)).reshape(-1))
        pos.append((b * P + p).expand(len(held), B, p1 - p0).reshape(-1))
        h = held.tolist()
        comps = tuple(comp_k[i] for i in h)
        has_bias = bool(h) and comp_bias[h[-1]]  # the group's bias component is its last
        units.append(Unit(g, p0, p1, len(h), rows, n, comps, tuple(row_of[k] for k in comps), has_bias))
        rows += n
    if units:
        passes.append(_pass(units, idx, pos, B))
    return passes


def _pass(units: list[Unit], idx: list[Tensor], pos: list[Tensor], batch: int) -> MLPPass:
    bias_rows = torch.cat([torch.arange(u.bias_rows(batch).start, u.bias_rows(batch).stop) for u in units if u.has_bias]
                          + [torch.zeros(0, dtype=torch.long)])
    return MLPPass(tuple(units), torch.cat(idx), torch.cat(pos), torch.tensor([max(u.n_comp - 1, 0) for u in units]),
                   bias_rows)


class State:
    """The flat state ``X [rows, d_model]`` of every chunk (of every group) and its views.

    Groups enter in order, so the rows of the groups already in the replay are a prefix of ``X``
    (:attr:`active`); passes are built for the active chunks whenever that set changes.

    Args:
        plan: ``(group, a, b, lo)`` per chunk, groups in order.
        group_size: components per group.
        shape: ``(batch, n_pos, d_model)``.
        dtype, device: of ``X`` (zeros until the groups enter).
        attn_rows, mlp_rows: the largest pass, in rows.
        every: a sharded replay's whole plan, of which ``plan`` is this rank's part (the MLP units are
            cut from it: :func:`mlp_passes`); None: ``plan`` is the whole plan.
    """

    def __init__(
        self, plan: Sequence[tuple[int, int, int, int]], group_size: int, shape: tuple[int, int, int],
        dtype: torch.dtype, device: torch.device, attn_rows: int, mlp_rows: int,
        every: Sequence[tuple[int, int, int, int]] | None = None,
    ) -> None:
        self.K = group_size
        self.B, self.P, self.D = shape
        self.plan = list(plan)
        self.every = None if every is None else list(every)
        self.attn_rows, self.mlp_rows = attn_rows, mlp_rows
        self.n_active = 0  # chunks of the groups that have entered
        self.n_groups = 0  # groups that have entered (a rank may hold no chunk of some)
        self._layout(dtype, device)

    def _layout(self, dtype: torch.dtype, device: torch.device) -> None:
        B, P = self.B, self.P
        sizes = [(b - a) * B * (P - lo) for _, a, b, lo in self.plan]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.X = torch.zeros(sum(sizes), self.D, dtype=dtype, device=device)
        self.chunks = [
            Chunk(g, a, b, lo, self.K, self.X.new_zeros(0), off) for (g, a, b, lo), off in zip(self.plan, self.offsets)
        ]
        pos = [_chunk_rows(b - a, B, P, lo, 0)[1] for _, a, b, lo in self.plan]
        self.pos = torch.cat(pos).to(device) if pos else torch.zeros(0, dtype=torch.long, device=device)
        self._passes_for: tuple[int, int] = (-1, -1)
        self.refresh()

    # ------------------------------------------------------------------------------ views and rows
    @property
    def active(self) -> list[Chunk]:
        return self.chunks[: self.n_active]

    @property
    def active_rows(self) -> int:
        return sum(ch.numel_rows for ch in self.active)

    def view(self, ch: Chunk) -> Tensor:
        """A new view of chunk ``ch``'s rows ``[b - a, batch, pos - lo, d_model]``."""
        n, w = ch.b - ch.a, self.P - ch.lo
        return self.X[ch.off : ch.off + n * self.B * w].view(n, self.B, w, self.D)

    def refresh(self) -> None:
        """Re-derive every chunk's view after ``X`` was replaced (or started to require grad)."""
        for ch in self.chunks:
            ch.x = self.view(ch)

    def enter(self, g: int) -> list[Chunk]:
        """Make group ``g`` active (its chunks must follow the active ones); returns its chunks."""
        new = [ch for ch in self.chunks if ch.g == g]
        assert all(ch is self.chunks[self.n_active + i] for i, ch in enumerate(new)), "groups enter in order"
        self.n_active += len(new)
        self.n_groups = max(self.n_groups, g + 1)
        return new

    def to(self, device: torch.device) -> None:
        """Move the state (and the index tensors) to ``device`` (no-op when already there)."""
        if self.X.device == device:
            return
        self.X = self.X.to(device)
        self.pos = self.pos.to(device)
        for p in getattr(self, "_mlp", []):
            p.to(device)
        self.refresh()

    def add_(self, rows: slice, t: Tensor) -> None:
        """``X[rows] += t``, in place unless autograd records through the state (reverse mode)."""
        if _grad(self.X, t):
            self.X = torch.cat([self.X[: rows.start], self.X[rows] + t, self.X[rows.stop :]])
            self.refresh()
        else:
            self.X[rows].add_(t)

    def index_add_(self, index: Tensor, t: Tensor) -> None:
        """``X[index] += t`` (rows ``index`` are distinct), in place unless autograd records through it."""
        if _grad(self.X, t):
            self.X = self.X.index_add(0, index, t)
            self.refresh()
        else:
            self.X.index_add_(0, index, t)

    # ------------------------------------------------------------------------------------ passes
    def attn_passes(self) -> list[tuple[int, int]]:
        return attn_passes(self.active, self.attn_rows)

    def mlp_passes(self) -> list[MLPPass]:
        if self._passes_for != (self.n_active, self.n_groups):
            every = None if self.every is None else [c for c in self.every if c[0] < self.n_groups]
            self._mlp = mlp_passes(self.active, self.P, self.B, self.mlp_rows, every)
            for p in self._mlp:
                p.to(self.X.device)
            self._passes_for = (self.n_active, self.n_groups)
        return self._mlp


def _grad(*ts: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)
