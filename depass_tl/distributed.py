"""``torch.distributed`` plumbing shared by the sharded replay and the dataset runner.

depass_tl runs on ``torch.distributed`` as it is (NCCL on GPUs, gloo on CPU): the caller starts the
processes (``torchrun`` / ``python -m torch.distributed.run``) and initialises the process group;
depass_tl only reads the group it is given (``process_group=``, default: the default group) and talks
through its collectives. Nothing here starts processes or picks a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from depass_tl.errors import DePassError

__all__ = ["Ranks", "ranks"]


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
