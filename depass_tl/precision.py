"""Precision modes of a replay: ``"exact"`` (default), ``"tf32x3"`` and ``"fast"``, and the completeness
they promise.

* ``"exact"``: every matmul in true float32 (or the accumulation dtype you ask for). On CUDA,
  TensorFloat-32 is switched **off for the duration of the call** whatever the global setting
  (``torch.backends.cuda.matmul.fp32_precision`` / ``allow_tf32`` / ``torch.set_float32_matmul_precision``)
  and restored afterwards, so a notebook that enabled TF32 for training still gets exact attributions.
* ``"tf32x3"``: float32 accuracy on the tensor cores. The replay's float32 products on CUDA (the
  attention's values, mixing and output, the MLP's two matrices) are each computed as three TF32
  products of operands split into high and low parts (:mod:`depass_tl.replay.matmul`), as accurate
  as ``"exact"`` (each elementwise product within ``5 * 2**-22`` of itself); everything else (the clean run, mixture-of-experts layers, the
  guard) runs as ``"exact"``. Meant for GPUs whose TF32 rate is several times their float32 rate
  (Ampere and later). On CPU it computes the same as ``"exact"``.
* ``"fast"``: CUDA float32 matmuls run on the tensor cores in TF32 (10-bit mantissa inputs, float32
  accumulation), several times faster on Ampere and later GPUs; the elementwise work (norm scales, rule
  allocation, sums over components) stays in float32. On CPU ``"fast"`` computes the same as ``"exact"``.

**Which one.** ``"exact"`` for reference numbers and small inputs; ``"tf32x3"`` for long inputs on a
GPU when the numbers must stay float32-accurate; ``"fast"`` when a relative completeness error of
about 1e-3 is acceptable (rankings of components, plots), not for comparing against another
implementation to float precision.

Completeness (components summing to the clean activations) holds in every mode up to rounding; what
changes is the rounding. :func:`completeness_tolerance` is the one place that says how much is expected
for an accumulation dtype and a precision: the relative error (max ``|Σ_c x_c − clean|`` over max
``|clean|``) that a correct replay stays below. Measured on random GPT-2-small-shaped models:
about 1e-6 (exact float32), 3e-4 at 1024 tokens (fast, TF32 on an H200).

Examples:
    >>> import torch
    >>> check_precision("fast")
    'fast'
    >>> completeness_tolerance(torch.float32, "exact") < completeness_tolerance(torch.float32, "fast")
    True
    >>> with matmul_precision("exact"):
    ...     pass  # CUDA float32 matmuls here run without TF32
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassValueError
from depass_tl.guard import RTOL_BY_PRECISION, completeness_rtol
from depass_tl.replay.matmul import cuda_tf32, split_products

__all__ = ["Precision", "PRECISIONS", "check_precision", "matmul_precision", "all_on_cpu", "completeness_tolerance"]

Precision = Literal["exact", "tf32x3", "fast"]
PRECISIONS: tuple[str, ...] = tuple(RTOL_BY_PRECISION)  # ("exact", "tf32x3", "fast")

def check_precision(precision: object) -> str:
    """``precision`` if it is a known mode, else a :class:`~depass_tl.errors.DePassError` naming the modes."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise DePassValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}.")
    return precision


def completeness_tolerance(dtype: torch.dtype, precision: str = "exact", model_dtype: torch.dtype | None = None) -> float:
    """The relative completeness error a correct replay stays below, for its accumulation ``dtype``,
    ``precision`` and the model's dtype: the completeness guard's
    :func:`~depass_tl.guard.completeness_rtol` (one place says it; the tests read it here too).

    Examples:
        >>> completeness_tolerance(torch.float64)
        1e-09
        >>> completeness_tolerance(torch.float32, "exact", model_dtype=torch.bfloat16) > 1e-3
        True
    """
    check_precision(precision)
    return completeness_rtol(dtype, dtype if model_dtype is None else model_dtype, precision)


_TURNS = threading.RLock()


def _take_turns() -> bool:
    """Whether blocks must take turns on the process-wide TF32 setting: where CUDA matmuls read it."""
    return torch.cuda.is_available()


def all_on_cpu(tensors: Iterable[Tensor]) -> bool:
    """Whether every one of ``tensors`` (a model's parameters, a captured run's tensors) is on the CPU. A
    model offloaded with an HF ``device_map`` is not (its ``meta`` weights reach a GPU at run time)."""
    return all(t.device.type == "cpu" for t in tensors)


@contextmanager
def matmul_precision(precision: str, *, cuda: bool | None = None) -> Iterator[None]:
    """Run the block with CUDA float32 matmuls in IEEE float32 (``"exact"``), TF32 (``"fast"``), or IEEE
    float32 with the replay's own products split into three TF32 ones (``"tf32x3"``,
    :mod:`depass_tl.replay.matmul`).

    The global setting is restored on exit, also after an exception. It is one setting for the whole
    process, so on a machine with CUDA these blocks take turns across threads (a re-entrant lock): a
    call in one thread never computes with another call's setting. ``cuda=False`` says the block
    computes on no CUDA device (a CPU model on a GPU machine): there it neither touches the setting nor
    waits for its turn, so CPU calls run beside CUDA ones. On a machine without CUDA nothing reads the
    setting, and it is left alone (threads flipping it without turns could leave it changed). Code outside
    depass_tl that changes the setting from another thread during a call is not covered."""
    check_precision(precision)
    touch = _take_turns() and cuda is not False  # only CUDA matmuls read the setting: take turns to change it
    with _TURNS if touch else nullcontext(), cuda_tf32(precision == "fast") if touch else nullcontext(), \
            split_products(precision == "tf32x3"):
        yield
