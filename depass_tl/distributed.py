"""``torch.distributed`` plumbing shared by the sharded replay and the dataset runner.

depass_tl runs on ``torch.distributed`` as it is (NCCL on GPUs, gloo on CPU): the caller starts the
processes (``torchrun`` / ``python -m torch.distributed.run``) and initialises the process group;
depass_tl only reads the group it is given (``process_group=``, default: the default group) and talks
through its collectives. Nothing here starts processes or picks a backend.

**Component sharding** (``run_with_depass(..., distributed=True)``, ``replay(..., distributed=True)``):
every rank captures the same clean run (:func:`check_same_run` compares them), replays the chunks of
components :mod:`depass_tl.replay.shard` assigns it, and :class:`ComponentShard` reduces what spans
the ranks: a competitive MLP rule's statistics (gathered and merged with the rule's own
:meth:`~depass_tl.replay.rules.RuleStats.merge`, in rank order: softmax's max and sum of
exponentials, max's best key and its index) and the padding moves (summed). Every rank's outputs
hold its rows and zeros elsewhere, so :func:`gather_activations` (a sum) assembles the
single-process result; :class:`ShardedDePassCache` keeps only this rank's rows until ``gather()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.replay.rules import RuleStats
from depass_tl.replay.shard import Shard

__all__ = ["Ranks", "ranks", "ComponentShard", "check_same_run", "gather_activations", "ShardedDePassCache"]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a process group.

    Attributes:
        group: the ``torch.distributed`` process group (None: one process, no group).
        rank: this process's rank in ``group`` (0 without a group).
        size: the number of processes in ``group`` (1 without a group).
    """

    group: Any
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that prints and writes shared files)."""
        return self.rank == 0


def ranks(distributed: bool | None, process_group: Any = None, *, what: str) -> Ranks:
    """Resolve ``distributed=`` / ``process_group=`` to the group this call runs over.

    Args:
        distributed: True: run over the group (error if ``torch.distributed`` is not initialised);
            False: this process alone; None: over the group when ``torch.distributed`` is initialised
            (or ``process_group`` is given), else alone.
        process_group: a ``torch.distributed`` process group (default: the default group).
        what: the calling function, for error messages.

    Raises:
        DePassError: ``distributed=True`` (or a ``process_group``) without an initialised
            ``torch.distributed``, or a ``process_group`` next to ``distributed=False``.
    """
    import torch.distributed as dist

    ready = dist.is_available() and dist.is_initialized()
    if distributed is False:
        if process_group is not None:
            raise DePassError(f"{what}: process_group= was given with distributed=False; drop one of them.")
        return Ranks(None, 0, 1)
    if not ready:
        if distributed or process_group is not None:
            raise DePassError(
                f"{what}: distributed=True needs an initialised torch.distributed process group; start the processes "
                "with torchrun (or python -m torch.distributed.run) and call torch.distributed.init_process_group() "
                "first, e.g. init_process_group('gloo') on CPU or 'nccl' on GPUs."
            )
        return Ranks(None, 0, 1)
    group = process_group if process_group is not None else dist.group.WORLD
    rank = dist.get_rank(group)
    if rank < 0:
        raise DePassError(f"{what}: this process is not a member of the process_group it was given.")
    return Ranks(group, rank, dist.get_world_size(group))


def _slots(stats: Any) -> list[tuple[Any, str]]:
    """Every tensor attribute of a rule's statistics (nested statistics too), in a fixed order."""
    out: list[tuple[Any, str]] = []
    for name, value in sorted(vars(stats).items()):
        if isinstance(value, Tensor):
            out.append((stats, name))
        elif isinstance(value, RuleStats):
            out.extend(_slots(value))
    return out


def _clone(stats: Any) -> Any:
    """A shallow copy of the statistics, nested statistics copied too (their tensors are then replaced)."""
    c = copy.copy(stats)
    for name, value in vars(stats).items():
        if isinstance(value, RuleStats):
            setattr(c, name, _clone(value))
    return c


def merge_gathered(local: RuleStats, gathered: list[list[Tensor]]) -> None:
    """Set ``local`` (in place) to the merge, in rank order, of every rank's statistics.

    ``gathered[i][r]`` is rank ``r``'s value of ``local``'s ``i``-th tensor (:func:`_slots` order);
    each rank's statistics are rebuilt as a copy of ``local`` holding its tensors (so a wrapper's own
    state, e.g. which chunks' keys it cached, stays this rank's) and merged with the rule's ``merge``.
    """
    merged = None
    for r in range(len(gathered[0]) if gathered else 0):
        theirs = _clone(local)
        for (owner, name), parts in zip(_slots(theirs), gathered):
            setattr(owner, name, parts[r])
        if merged is None:
            merged = theirs
        else:
            merged.merge(theirs)
    if merged is not None:
        for (owner, name), (m_owner, m_name) in zip(_slots(local), _slots(merged)):
            setattr(owner, name, getattr(m_owner, m_name))


class ComponentShard(Shard):
    """This rank's part of a replay sharded over a ``torch.distributed`` group (see the module docstring).

    Args:
        where: the group and this rank (:func:`ranks`).
    """

    def __init__(self, where: Ranks) -> None:
        self.where = where
        self.rank, self.size = where.rank, where.size

    def reduce_stats(self, stats: dict[int, RuleStats]) -> None:
        """All-gather each group's statistics and merge them in rank order, with the rule's ``merge``."""
        for g in sorted(stats):
            self.reduce_one(stats[g])

    def reduce_one(self, stats: RuleStats) -> None:
        """One group's statistics made those of all ranks (in place; a collective: every rank calls it)."""
        import torch.distributed as dist

        gathered = []
        for owner, name in _slots(stats):
            t = getattr(owner, name).contiguous()
            parts = [torch.empty_like(t) for _ in range(self.size)]
            dist.all_gather(parts, t, group=self.where.group)
            gathered.append(parts)
        merge_gathered(stats, gathered)

    def reduce_sums(self, sums: dict[str, Tensor]) -> None:
        import torch.distributed as dist

        for name in sorted(sums):
            dist.all_reduce(sums[name], op=dist.ReduceOp.SUM, group=self.where.group)


def check_same_run(tokens: Tensor, logits: Tensor, where: Ranks, *, what: str) -> None:
    """Raise unless every rank captured the same input and (to 1e-4) the same clean logits.

    A sharded replay combines the ranks' components, so they must decompose the same run: the
    same prompts through the same weights.
    """
    import torch.distributed as dist

    if where.size == 1:
        return
    dev = logits.device
    lg = logits.detach().to(torch.float64)
    mine = torch.tensor([float(tokens.shape[0]), float(tokens.shape[1]), float(tokens.to(torch.float64).sum()),
                         float(lg.sum()), float(lg.abs().sum())], dtype=torch.float64, device=dev)
    parts = [torch.empty_like(mine) for _ in range(where.size)]
    dist.all_gather(parts, mine, group=where.group)
    ref = parts[0]
    for r, p in enumerate(parts):
        same_input = bool((p[:3] == ref[:3]).all())
        close = bool(torch.allclose(p[3:], ref[3:], rtol=1e-4, atol=1e-6))
        if not (same_input and close):
            raise DePassError(
                f"{what}(distributed=True): rank {r} captured a different run from rank 0 (input "
                f"{'the same' if same_input else 'different'}, clean logits {'close' if close else 'different'}). "
                "Every rank must run the same model (same weights: load or seed them identically) on the same input."
            )


def gather_activations(acts: dict[str, Tensor], where: Ranks) -> dict[str, Tensor]:
    """Every rank's outputs summed (each holds its own rows and zeros elsewhere): the whole decomposition."""
    import torch.distributed as dist

    if where.size == 1:
        return acts
    names: list[Any] = [None] * where.size
    dist.all_gather_object(names, sorted(acts), group=where.group)
    like = next(iter(acts.values()))
    out = {}
    for name in sorted(set().union(*names)):
        t = acts[name] if name in acts else torch.zeros_like(like)  # a rank that held no chunk of this hook
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=where.group)
        out[name] = t
    return out


class ShardedDePassCache:
    """A sharded replay's result left on its ranks: this rank's components only, until :meth:`gather`.

    Attributes:
        rows: the component indices this rank holds (into the full cache's component axis).
        labels: their labels.
        activations: hook name -> ``[len(rows), batch, pos, d_model]``.
        rank, world_size: this process in the group.
    """

    def __init__(self, activations: dict[str, Tensor], rows: list[int], labels: tuple[str, ...], where: Ranks,
                 n_components: int, assemble: Callable[[dict[str, Tensor]], Any]) -> None:
        idx = torch.tensor(rows, dtype=torch.long)
        self.rows = rows
        self.labels = tuple(labels[i] for i in rows)
        self.activations = {name: t.index_select(0, idx.to(t.device)) for name, t in activations.items()}
        self.rank, self.world_size = where.rank, where.size
        self._where, self._n, self._assemble = where, n_components, assemble

    def __repr__(self) -> str:
        return (f"ShardedDePassCache(rank {self.rank}/{self.world_size}, {len(self.rows)} of {self._n} components, "
                f"{len(self.activations)} hooks)")

    def gather(self) -> Any:
        """Assemble the whole :class:`~depass_tl.cache.DePassCache` on every rank (a collective: call it on all).

        The completeness guard runs on the assembled cache, as for ``gather=True``.
        """
        full = {}
        for name, t in self.activations.items():
            buf = t.new_zeros((self._n, *t.shape[1:]))
            buf[torch.tensor(self.rows, dtype=torch.long, device=t.device)] = t
            full[name] = buf
        return self._assemble(gather_activations(full, self._where))
