"""The TF32 tensor cores emulated on a CPU, for the tests and benchmarks of ``precision="tf32x3"``.

A tensor core reads each float32 operand at TF32's 10 mantissa bits and accumulates the products in
float32. :func:`tf32` truncates (the worse of the two roundings a GPU may use); :class:`EmulatedTF32`
stands in for :mod:`depass_tl.replay.matmul`'s part products (``_mul``, ``_addmul_``). Used by
tests/test_matmul.py and benchmarks/accuracy_tf32x3.py (torch only: it runs where pytest is absent).
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW_BITS = (1 << 13) - 1  # the float32 mantissa bits TF32 does not hold


def tf32(t: Tensor) -> Tensor:
    """``t`` as a tensor core reads it: truncated to 10 mantissa bits."""
    return (t.contiguous().view(torch.int32) & ~LOW_BITS).view(torch.float32)


class EmulatedTF32:
    """Stands in for the TF32 products of :mod:`depass_tl.replay.matmul` on a CPU, counting them: the
    operands truncated to TF32, the products (exact in float32: 11-bit by 11-bit significands)
    accumulated in float32."""

    def __init__(self) -> None:
        self.calls = 0

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        self.calls += 1
        return torch.matmul(tf32(a), tf32(b))

    def addmul_(self, out: Tensor, a: Tensor, b: Tensor) -> None:
        self.calls += 1
        if a.dim() == 3:
            out.baddbmm_(tf32(a), tf32(b))
        else:
            out.addmm_(tf32(a), tf32(b))
