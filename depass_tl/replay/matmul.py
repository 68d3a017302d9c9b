"""Float32-accurate matrix products on TF32 tensor cores ("3xTF32"), for ``precision="tf32x3"``.

A CUDA GPU multiplies float32 matrices at its CUDA-core rate (about 50 TFLOP/s on an H200) or, in
TF32, on its tensor cores at several times that, with each input rounded to 10 mantissa bits
(``2**-11`` relative). The replay's products are most of its time on a GPU, so ``"tf32x3"`` keeps
float32's accuracy on the tensor cores by splitting each operand into two TF32 numbers:

* ``a = a_hi + a_lo``: ``a_hi`` is ``a`` rounded to 10 mantissa bits, so TF32 holds it exactly, and
  ``a_lo = a - a_hi`` is exact in float32, with ``|a_lo| <= 2**-11 |a|``;
* ``a @ b = a_lo @ b_hi + a_hi @ b_lo + a_hi @ b_hi (+ a_lo @ b_lo)``: the last term is at most
  ``2**-22`` of the whole and is dropped; the first two lose at most ``2**-10`` of themselves to the
  tensor core's rounding of their ``lo`` operand (``2**-21`` of the whole); the third is exact. Every
  term accumulates in float32.

So each elementwise product is off by at most ``5 * 2**-22`` of itself (20 float32 units, ``2**-24``;
far less on average): a whole replay is as accurate as with IEEE products (tests/test_matmul.py, with
the tensor cores emulated, and tests/test_cuda.py measure it against float64). The three TF32
products should cost less than one float32 product on a GPU with fast tensor cores (an H200's dense
peaks: 495 TFLOP/s TF32, 67 float32; measured by ``benchmarks/bench_gpu.py``). Where the split pays and
is used: float32 operands on CUDA, autograd not recording (the bit manipulation of the split has
no gradient: such products stay IEEE), inside :func:`split_products` (entered by
:func:`~depass_tl.precision.matmul_precision` for ``"tf32x3"``, which leaves every other product in
IEEE float32). On a CPU there are no tensor cores and the products are the IEEE ones.

Examples:
    >>> import torch
    >>> a = torch.tensor([1.0 + 2.0 ** -20, -3.0])
    >>> s = split(a)
    >>> bool(torch.equal(s.hi + s.lo, a)), s.hi.tolist()
    (True, [1.0, -3.0])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from depass_tl.errors import DePassValueError
from depass_tl.replay.kernels import TF32_HALF_ULP, TF32_KEEP, split_tf32_, use_fused

__all__ = ["Split", "Operand", "split", "split_eager", "splitting", "splits", "operand", "apply", "product", "accumulate_",
           "cuda_tf32", "require_tensor_cores"]

DEVICE_TYPES: tuple[str, ...] = ("cuda",)
"""Device types whose float32 products are split (those with TF32 tensor cores)."""

_ON: ContextVar[bool] = ContextVar("depass_tl_tf32x3", default=False)


@dataclass(frozen=True)
class Split:
    """``hi + lo`` equal to a float32 tensor exactly, ``hi`` representable in TF32."""

    hi: Tensor
    lo: Tensor

    def map(self, fn: Callable[[Tensor], Tensor]) -> Split:
        """The same view (slice, reshape) of both parts."""
        return Split(fn(self.hi), fn(self.lo))


Operand = Union[Tensor, Split]


def split(t: Tensor, *, consume: bool = False) -> Split:
    """``t`` (float32) as ``hi + lo``: ``hi`` rounded to nearest at 10 mantissa bits, ``lo`` the exact rest.

    ``consume``: write ``lo`` into ``t`` (one new tensor instead of two; ``t`` is then ``lo``). On CUDA one
    fused pass (:func:`~depass_tl.replay.kernels.split_tf32_`), else three PyTorch ops."""
    if t.dtype == torch.float32 and t.is_contiguous() and use_fused(t, "split"):
        parts = split_tf32_(t, consume)
        if parts is not None:
            return Split(*parts)
    return split_eager(t, consume=consume)


def split_eager(t: Tensor, *, consume: bool = False) -> Split:
    """:func:`split` in three PyTorch ops (add half a TF32 unit to the bits, clear the low 13, subtract)."""
    hi = (t.view(torch.int32) + TF32_HALF_ULP).bitwise_and_(TF32_KEEP).view(torch.float32)
    return Split(hi, t.sub_(hi) if consume else t - hi)


@contextmanager
def split_products(on: bool = True) -> Iterator[None]:
    """Split the replay's float32 products on CUDA inside the block (this thread / context only).

    Internal: enter it through :func:`~depass_tl.precision.matmul_precision` (``"tf32x3"``), which also
    makes threads take turns on the process-wide TF32 switch that each split product turns on."""
    token = _ON.set(on)
    try:
        yield
    finally:
        _ON.reset(token)


def splitting(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether products of ``dtype`` tensors on ``device`` are split here (for the memory planner)."""
    return _ON.get() and dtype == torch.float32 and torch.device(device).type in DEVICE_TYPES


def require_tensor_cores(device: torch.device | str) -> None:
    """Refuse ``"tf32x3"`` on a CUDA device without TF32 tensor cores (compute capability < 8.0): cuBLAS
    would run its three products in IEEE float32, three times ``"exact"``'s work for the same numbers."""
    d = torch.device(device)
    if d.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(d)
    if major < 8:
        raise DePassValueError(
            f'precision="tf32x3" needs TF32 tensor cores (compute capability 8.0 or later: Ampere, Hopper, ...); '
            f"{d} ({torch.cuda.get_device_name(d)}) has {major}.{minor}, where its three products per product would "
            'all run in IEEE float32. Use precision="exact" (the same numbers, a third of the work).'
        )


def splits(*ts: Tensor) -> bool:
    """Whether a product of these operands is split (:func:`splitting`, and autograd not recording it)."""
    if not all(splitting(t.dtype, t.device) for t in ts):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


def operand(t: Tensor, *, consume: bool = False, beside: Tensor | None = None) -> Operand:
    """``t`` split once when its products will be split (an operand of many products), else ``t``.

    ``beside``: the other operands' tensor (the replay's state): when its products may not be split
    (autograd recording it), ``t`` is not split either, so no product rebuilds ``t`` from its parts."""
    return split(t, consume=consume) if splits(t, *(() if beside is None else (beside,))) else t


def apply(x: Operand, fn: Callable[[Tensor], Tensor]) -> Operand:
    """``fn`` (a view: slice, reshape) applied to a tensor or to both parts of a :class:`Split`."""
    return x.map(fn) if isinstance(x, Split) else fn(x)


@contextmanager
def cuda_tf32(on: bool) -> Iterator[None]:
    """CUDA float32 matmuls in TF32 (``on``) or IEEE float32 inside the block; the setting is restored.

    Torch >= 2.9 has two APIs for this (``fp32_precision`` and the legacy ``allow_tf32``) that refuse
    to be read once mixed; the newer one is used when present."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        old = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if on else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = old
    else:  # torch < 2.9
        old_flag = matmul.allow_tf32
        matmul.allow_tf32 = on
        try:
            yield
        finally:
            matmul.allow_tf32 = old_flag


def _pair(a: Operand, b: Operand, consume_a: bool) -> tuple[Split, Split] | None:
    """Both operands split, or None when the product stays IEEE: a plain operand that may not be split
    (another dtype or device, or autograd recording it) is never split, even beside a split one."""
    plain = [t for t in (a, b) if not isinstance(t, Split)]
    if plain and not splits(*plain):
        return None
    return (a if isinstance(a, Split) else split(a, consume=consume_a)), (b if isinstance(b, Split) else split(b))


def _whole(x: Operand) -> Tensor:
    """``x`` as one tensor (a :class:`Split`'s ``hi + lo`` is its tensor exactly)."""
    return x.hi + x.lo if isinstance(x, Split) else x


def _mul(a: Tensor, b: Tensor) -> Tensor:
    return torch.bmm(a, b) if a.dim() == 3 else torch.mm(a, b)


def _addmul_(out: Tensor, a: Tensor, b: Tensor) -> None:
    if a.dim() == 3:
        out.baddbmm_(a, b)
    else:
        out.addmm_(a, b)


def product(a: Operand, b: Operand, *, consume_a: bool = False) -> Tensor:
    """``a @ b`` (2-D, or 3-D batched), split into three TF32 products when :func:`splits` says so.

    ``consume_a``: ``a`` is not needed afterwards (its split then reuses its memory)."""
    pair = _pair(a, b, consume_a)
    if pair is None:
        a, b = _whole(a), _whole(b)
        return torch.bmm(a, b) if a.dim() == 3 else a @ b
    A, B = pair
    with cuda_tf32(True):  # the small terms first, then the large one
        out = _mul(A.lo, B.hi)
        _addmul_(out, A.hi, B.lo)
        _addmul_(out, A.hi, B.hi)
    return out


def accumulate_(out: Tensor, a: Operand, b: Operand, *, consume_a: bool = False) -> None:
    """``out += a @ b`` (2-D) in place, split like :func:`product`: each of the three terms is added into
    ``out`` (three float32 roundings at ``out``'s magnitude instead of one; no product-sized temporary)."""
    pair = _pair(a, b, consume_a)
    if pair is None:
        out.addmm_(_whole(a), _whole(b))
        return
    A, B = pair
    with cuda_tf32(True):
        _addmul_(out, A.lo, B.hi)
        _addmul_(out, A.hi, B.lo)
        _addmul_(out, A.hi, B.hi)
