"""Precision modes of a replay: ``"exact"`` (default) and ``"fast"``, and the completeness they promise.

* ``"exact"``: every matmul in true float32 (or the accumulation dtype you ask for). On CUDA,
  TensorFloat-32 is switched **off for the duration of the call** whatever the global setting
  (``torch.backends.cuda.matmul.fp32_precision`` / ``allow_tf32`` / ``torch.set_float32_matmul_precision``)
  and restored afterwards, so a notebook that enabled TF32 for training still gets exact attributions.
* ``"fast"``: CUDA float32 matmuls run on the tensor cores in TF32 (10-bit mantissa inputs, float32
  accumulation), several times faster on Ampere and later GPUs; the elementwise work (norm scales, rule
  allocation, sums over components) stays in float32. On CPU ``"fast"`` computes the same as ``"exact"``.

Completeness (components summing to the clean activations) holds in both modes up to rounding; what
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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from depass_tl.errors import DePassValueError
from depass_tl.guard import RTOL_BY_PRECISION, completeness_rtol

__all__ = ["Precision", "PRECISIONS", "check_precision", "matmul_precision", "completeness_tolerance"]

Precision = Literal["exact", "fast"]
PRECISIONS: tuple[str, ...] = tuple(RTOL_BY_PRECISION)  # ("exact", "fast")

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


def _cuda_matmul():  # type: ignore[no-untyped-def]
    return torch.backends.cuda.matmul


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Run the block with CUDA float32 matmuls in IEEE float32 (``"exact"``) or TF32 (``"fast"``).

    The global setting is restored on exit, also after an exception. Torch >= 2.9 has two APIs for
    this (``fp32_precision`` and the legacy ``allow_tf32``) that refuse to be read once mixed; the
    newer one is used when present, which leaves whatever the caller set readable as before.
    """
    check_precision(precision)
    matmul = _cuda_matmul()
    if hasattr(matmul, "fp32_precision"):
        old = matmul.fp32_precision
        matmul.fp32_precision = "ieee" if precision == "exact" else "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision = old
    else:  # torch < 2.9
        old_flag = matmul.allow_tf32
        matmul.allow_tf32 = precision == "fast"
        try:
            yield
        finally:
            matmul.allow_tf32 = old_flag
