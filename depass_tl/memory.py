"""Memory budgets: parse ``max_memory="4GB"``, count what a call holds, measure its peak.

A budget bounds the memory the whole call allocates: the captured
:class:`~depass_tl.coefficients.FrozenRun` (clean activations and frozen coefficients), the initial
components, the component states, the stored ``[component, batch, pos, d_model]`` outputs, and the
working tensors of one pass of a sublayer (the ``[rows, d_mlp]`` MLP intermediates dominate). The
model's weights exist before the call and are not counted. See :mod:`depass_tl.replay.plan` for the
estimate and how chunks and passes are sized; :class:`PeakMemory` measures what a block of code
allocates (on CUDA, ``torch.cuda.max_memory_allocated`` minus what was allocated before says the same).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from depass_tl.errors import DePassError, DePassTypeError, DePassValueError

__all__ = ["parse_memory", "format_bytes", "storage_bytes", "PeakMemory"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_memory(budget: int | float | str) -> int:
    """A memory budget in bytes: an int/float (bytes) or a string such as ``"4GB"``, ``"512 MiB"``.

    ``KB/MB/GB/TB`` are powers of 10, ``KiB/MiB/GiB/TiB`` (and bare ``K/M/G/T``) powers of 2.

    Raises:
        DePassError: not a positive size.

    Examples:
        >>> parse_memory("4GB"), parse_memory("1.5 GiB"), parse_memory(1000)
        (4000000000, 1610612736, 1000)
    """
    if isinstance(budget, bool):
        raise DePassTypeError(f"max_memory must be a size such as '4GB' or a number of bytes; got {budget!r}.")
    if isinstance(budget, (int, float)):
        value = float(budget)
    elif isinstance(budget, str):
        m = _PATTERN.match(budget)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise DePassValueError(
                f"max_memory={budget!r} is not a size; write e.g. '4GB', '512MB', '2GiB' or a number of bytes."
            )
        value = float(m.group(1)) * _UNITS[unit]
    else:
        raise DePassTypeError(f"max_memory must be a size such as '4GB' or a number of bytes; got {type(budget).__name__}.")
    if not value > 0:
        raise DePassValueError(f"max_memory must be positive; got {budget!r}.")
    if value == float("inf"):
        raise DePassValueError(f"max_memory must be a finite size; got {budget!r}. Leave it out (None) for no budget.")
    return int(value)


def format_bytes(n: float) -> str:
    """``1536 * 2**20`` -> ``'1.50 GiB'``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one tensor count once).

    Examples:
        >>> import torch
        >>> a = torch.zeros(10)
        >>> storage_bytes([a, a[2:], torch.ones(3, dtype=torch.float64)])
        64
    """
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            seen[(str(t.device), s.data_ptr())] = s.nbytes()
    return sum(seen.values())


class PeakMemory(TorchDispatchMode):
    """Measure the peak bytes of tensor storage allocated by torch ops inside the ``with`` block.

    Every storage an op creates is counted once, from its creation until the last tensor using it is
    freed; memory that existed before the block (the model's weights, a captured run) is not counted,
    also when an op inside returns a view or alias of it (``detach``, ``reshape``, in-place ops).
    Independent of the allocator (no RSS noise, CPU or GPU alike). Slows small ops down a little; use it
    for checks, not for timing.

    Examples:
        >>> import torch
        >>> w = torch.ones(1000)
        >>> with PeakMemory() as mem:
        ...     a = torch.zeros(1000, dtype=torch.float64)
        ...     b = a + 1
        ...     v = w.detach()  # an alias of memory that existed before: not counted
        ...     del a, b
        >>> mem.peak, mem.current
        (16000, 0)
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[tuple[int, int], list[int]] = {}  # (device, storage data_ptr) -> [nbytes, tensors]

    def _release(self, key: tuple[int, int]) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]

    @staticmethod
    def _key(t: torch.Tensor) -> tuple[int, int]:
        return (hash(t.device), t.untyped_storage().data_ptr())

    def _track(self, t: Any, inputs: set[tuple[int, int]]) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        key = self._key(t)
        entry = self._live.get(key)
        if entry is None:
            if key in inputs:  # a view or alias of memory allocated before the block
                return
            entry = self._live[key] = [t.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        inputs = set()
        for a in _flat(args) + _flat(list((kwargs or {}).values())):
            if isinstance(a, torch.Tensor) and a.device.type != "meta":
                inputs.add(self._key(a))
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            self._track(t, inputs)
        return out


def _flat(xs: Any) -> list[Any]:
    out = []
    for x in xs:
        if isinstance(x, (list, tuple)):
            out.extend(_flat(x))
        else:
            out.append(x)
    return out
