"""The engine's seam for a replay split over processes: which chunks this process replays, and the reductions.

A sharded replay (``run_with_depass(..., distributed=True)``, :mod:`depass_tl.distributed`) runs the
same :func:`~depass_tl.replay.engine.replay_components` on every rank with a :class:`Shard`. The engine
then:

1. plans the chunks as usual (every rank plans the same chunks) and replays only those
   :meth:`Shard.owns` gives this rank (:func:`assign`: balanced by ``rows × positions``); chunks keep
   their global row numbers, so a rule's tie-breaks are the same as in one process;
2. at every competitive MLP, once this rank's pass over its chunks has folded its keys into the
   per-group statistics (the point where a pass's statistics are complete), calls
   :meth:`Shard.reduce_stats` with the statistics of *every* group (fresh ones where this rank holds
   no chunk of it); after it returns, each group's statistics are those of all its components, as
   :meth:`~depass_tl.replay.rules.RuleStats.merge` defines them, and the second pass allocates;
3. with padding, before each sublayer's padding moves are handed to the bias components, calls
   :meth:`Shard.reduce_sums` on the per-group totals (every rank the same names and shapes).

Every stored hook holds this rank's rows and exact zeros elsewhere, so summing the ranks' outputs
assembles the single-process result (:meth:`Shard` itself does no communication; the
``torch.distributed`` implementation is :class:`depass_tl.distributed.ComponentShard`). ``Shard()``
is one process: it owns every chunk and reduces nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from depass_tl.replay.rules import RuleStats

__all__ = ["Shard", "assign"]


def assign(chunks: Sequence[tuple[int, int, int, int]], size: int, n_pos: int) -> list[int]:
    """The rank of each planned chunk ``(group, a, b, lo)``: longest first to the least loaded rank.

    Deterministic (every rank computes the same), cost ``(b - a) · (n_pos - lo)``; with at least
    ``size`` chunks every rank gets one.

    Examples:
        >>> assign([(0, 0, 4, 0), (0, 4, 8, 4), (0, 8, 9, 0)], 2, 8)
        [0, 1, 1]
    """
    load = [0] * size
    owner = [0] * len(chunks)
    order = sorted(range(len(chunks)), key=lambda i: (-(chunks[i][2] - chunks[i][1]) * (n_pos - chunks[i][3]), i))
    for i in order:
        r = min(range(size), key=lambda k: (load[k], k))
        owner[i] = r
        _, a, b, lo = chunks[i]
        load[r] += (b - a) * (n_pos - lo)
    return owner


class Shard:
    """One rank's part of a sharded replay (the base class: one process, every chunk, no reduction).

    Attributes:
        rank: this process's rank.
        size: the number of processes.
    """

    rank: int = 0
    size: int = 1
    owned: tuple[tuple[int, int, int, int], ...] = ()  # set by :meth:`owns`: the chunks this rank replays

    def chunk_rows(self, n_rows: int) -> int | None:
        """Components per chunk when the caller gave neither ``chunk_size`` nor ``max_memory`` (None: the
        engine's default plan). A sharded replay asks for about four chunks per rank to balance them."""
        if self.size == 1:
            return None
        return max(1, -(-n_rows // (4 * self.size)))

    def owns(self, chunks: Sequence[tuple[int, int, int, int]], n_pos: int) -> list[bool]:
        """Which of the planned chunks this rank replays (also kept in :attr:`owned`)."""
        mine = [r == self.rank for r in assign(chunks, self.size, n_pos)]
        self.owned = tuple(c for c, m in zip(chunks, mine) if m)
        return mine

    def rows(self, group_size: int) -> list[int]:
        """The component indices (all groups concatenated) of the chunks this rank replayed, in order."""
        return sorted(g * group_size + i for g, a, b, _ in self.owned for i in range(a, b))

    def reduce_stats(self, stats: dict[int, RuleStats]) -> None:
        """Make every group's statistics those of all ranks (in place); called on every rank, same groups."""

    def reduce_sums(self, sums: dict[str, Tensor]) -> None:
        """Sum the tensors over the ranks (in place); called on every rank with the same names and shapes."""
