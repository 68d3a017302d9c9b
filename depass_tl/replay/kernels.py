"""Fused GPU kernels for the replay's memory-bound steps (Triton), and when they are used.

The ``softmax`` rule's one-shot split of a unit (:meth:`~depass_tl.replay.rules.Softmax.share`) is,
in eager PyTorch, nine passes over the ``[component, batch, pos, d_mlp]`` keys: compare with 0, divide
by T, mask, max, subtract, exp, sum, divide, multiply — about 54 bytes moved per element, 80 % of the
replay's non-matmul memory traffic at 1024 tokens (``benchmarks/profile_ops.py``). The kernel here does
the same arithmetic in two passes over the keys, writing the shares in place: per column (one
``(batch, pos, neuron)``) an online max and sum of ``exp(γ/T − m)`` over the active components
(``γ ≠ 0``), then ``share_c = exp(γ_c/T − m) · target / sum``, the whole target to the bias
component where no component is active: 12 bytes per element.

The shares equal the eager ones up to float rounding (the sum is accumulated with rescaling, ``exp``
is the GPU's), and they still sum to the target to rounding: completeness is unchanged. The ``max``
rule's split gets the same treatment (a running best key and its first index, then the target written
to the winner): 8 bytes per element instead of 23, with the eager split's exact numbers. Tested
against the eager split in Triton's interpreter on CPU (``TRITON_INTERPRET=1``, CI) and on CUDA
(``tests/test_cuda.py``, ``scripts/gpu_check.sh``).

**When.** ``DEPASS_TL_KERNELS`` (environment variable, read at each call):

* ``auto`` (default): the fused kernels for float32 / float64 CUDA tensors when ``triton`` imports
  (it ships with PyTorch's CUDA wheels); the eager split on CPU.
* ``eager``: never (e.g. to compare, or to rule the kernel out when debugging).
* ``triton``: also for CPU tensors, which only runs under ``TRITON_INTERPRET=1`` (for tests);
  a :class:`~depass_tl.errors.DePassError` when ``triton`` is not installed.

If compiling a kernel fails on a machine (Triton needs a C compiler for its launcher), its first call
warns once with the cause and the process keeps the eager form of that step; the other kernels are
still tried (each is its own compilation).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassValueError

__all__ = ["KERNELS_ENV", "kernel_mode", "use_fused", "kernel_status", "softmax_share_", "max_share_", "split_tf32_"]

KERNELS_ENV = "DEPASS_TL_KERNELS"
MODES = ("auto", "eager", "triton")
BLOCK = 1024  # columns per program: 8 per thread at 4 warps (128-bit loads)
TF32_HALF_ULP = 1 << 12  # half a unit in TF32's last place, in float32's bits (23 - 10 = 13 bits dropped)
TF32_KEEP = -(1 << 13)  # the sign, exponent and 10 mantissa bits

_lock = threading.Lock()
_state: dict[str, Any] = {"kernel": None, "broken": {}}  # kernel: the dict of jitted kernels; broken: why, by name


def kernel_mode() -> str:
    """The ``DEPASS_TL_KERNELS`` setting (``auto`` when unset)."""
    mode = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise DePassValueError(f"{KERNELS_ENV}={mode!r}: use one of {', '.join(MODES)} (unset means auto).")
    return mode


def kernel_status() -> dict[str, Any]:
    """What this process did: the mode, the kernels that ran (``softmax``, ``max``, ``split``), and why
    kernels fell back to eager PyTorch (``"name: reason"``, one per failed kernel; None: none did)."""
    broken = _state["broken"]
    fallback = "; ".join(f"{k}: {why}" for k, why in sorted(broken.items())) or None
    return {"mode": kernel_mode(), "ran": sorted(_state.get("ran", ())), "fallback": fallback}


def _kernel() -> Any:
    """The jitted Triton kernels by rule name (built once per process), or None when triton does not import."""
    if _state["kernel"] is None:
        with _lock:
            if _state["kernel"] is None:
                try:
                    import triton  # noqa: F401
                except ImportError:
                    _state["kernel"] = False
                else:
                    _state["kernel"] = _build()
    return _state["kernel"] or None


def use_fused(keys: Tensor, kernel: str) -> bool:
    """Whether the fused ``kernel`` (``softmax``, ``max``, ``split``) runs on ``keys`` (see the module docstring)."""
    mode = kernel_mode()
    if mode == "eager" or kernel in _state["broken"]:
        return False
    if keys.dtype not in (torch.float32, torch.float64) or not keys.is_contiguous():
        return False
    if torch.is_grad_enabled() and keys.requires_grad:
        return False
    if mode == "auto" and not keys.is_cuda:
        return False
    if _kernel() is None:
        if mode == "triton":
            raise DePassValueError(f"{KERNELS_ENV}=triton needs the triton package (pip install triton), or unset it.")
        return False
    return True


def softmax_share_(keys: Tensor, target: Tensor, bias_rows: Tensor, temperature: float) -> Tensor | None:
    """The ``softmax`` shares of one group written into ``keys`` ``[n, ...]``; returns ``keys``.

    ``target``: ``[...]`` (the keys' shape without the component axis); ``bias_rows``: the group's bias
    row (one element) or empty. Returns None when the kernel could not be compiled on this machine
    (warned once; the caller then splits eagerly).
    """
    return _launch("softmax", keys, target, bias_rows, _scalar(float(temperature), keys))


def max_share_(keys: Tensor, target: Tensor, bias_rows: Tensor) -> Tensor | None:
    """The ``max`` shares of one group written into ``keys``: the whole target to the first component with
    the largest active key, to the bias row where none is active (as :func:`softmax_share_`)."""
    return _launch("max", keys, target, bias_rows, None)


def split_tf32_(x: Tensor, consume: bool) -> tuple[Tensor, Tensor] | None:
    """``x`` (contiguous float32) as ``hi + lo`` in one pass (:func:`depass_tl.replay.matmul.split`):
    12 bytes per element instead of 28; ``consume``: ``lo`` is written into ``x``. None when the kernel
    could not be compiled here (warned once; the caller then splits eagerly)."""
    hi = torch.empty_like(x)
    lo = x if consume else torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return hi, lo
    return (hi, lo) if _run("split", (-(-n // BLOCK),), (x, hi, lo, n),
                               dict(HALF_ULP=TF32_HALF_ULP, KEEP=TF32_KEEP, BLOCK=BLOCK, num_warps=4), x.device) else None


def _run(which: str, grid: tuple[int], args: tuple, meta: dict[str, Any], device: torch.device) -> bool:
    """Launch kernel ``which`` on ``device``; False when it could not be compiled here (warned once)."""
    try:
        with _on(device):  # a model split over GPUs: launch on the tensors' device, not the current one
            _kernel()[which][grid](*args, **meta)
    except Exception as err:  # compiling failed (no C compiler, unsupported GPU, ...): eager from now on
        if which in _state["broken"] or which in _state.setdefault("ran", set()) or kernel_mode() == "triton":
            raise  # it ran before (or was forced): not a compilation problem
        _state["broken"][which] = f"{type(err).__name__}: {err}"
        warnings.warn(f"depass_tl: the fused {which} kernel could not run here ({_state['broken'][which]}); this process "
                      f"uses eager PyTorch instead (same results; set {KERNELS_ENV}=eager to silence this).",
                      RuntimeWarning, stacklevel=5)
        return False
    _state.setdefault("ran", set()).add(which)
    return True


def _launch(which: str, keys: Tensor, target: Tensor, bias_rows: Tensor, temp: Tensor | None) -> Tensor | None:
    n = keys.shape[0]
    cols = keys[0].numel() if n else 0
    if n == 0 or cols == 0:
        return keys
    t = target.to(keys.dtype).contiguous()
    assert t.numel() == cols, "target must have the shape of one component's keys"
    has_bias = len(bias_rows) > 0
    bias = bias_rows.to(device=keys.device, dtype=torch.int64) if has_bias else keys.new_zeros(1, dtype=torch.int64)
    grid = (-(-cols // BLOCK),)
    args = (keys, t, bias) if temp is None else (keys, t, bias, temp)  # the temperature in the keys' dtype
    return keys if _run(which, grid, (*args, n, cols), dict(HAS_BIAS=has_bias, BLOCK=BLOCK, num_warps=4), keys.device) else None


def _on(device: torch.device) -> Any:
    """The CUDA device context of ``device`` (Triton launches on the current device); nothing for CPU tensors."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _scalar(value: float, like: Tensor) -> Tensor:
    """``value`` as a one-element tensor of ``like``'s dtype and device, made once per process."""
    key = (value, like.dtype, like.device)
    cache = _state.setdefault("scalars", {})
    if key not in cache:
        cache[key] = torch.full((1,), value, dtype=like.dtype, device=like.device)
    return cache[key]


def _build() -> Any:
    import triton
    import triton.language as tl

    # one compiled variant for every unit size (no specialisation on n_rows == 1 or n_cols % 16)
    @triton.jit(do_not_specialize=["n_rows", "n_cols"])
    def softmax_share_kernel(keys_ptr, target_ptr, bias_ptr, temperature_ptr, n_rows, n_cols,
                             HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        temperature = tl.load(temperature_ptr)
        cols = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < n_cols
        neg_inf = float("-inf")
        k0 = tl.load(keys_ptr + cols, mask=inside, other=0.0)
        m = tl.full([BLOCK], neg_inf, k0.dtype)  # running max of γ/T over the active components
        s = tl.zeros([BLOCK], k0.dtype)  # running Σ exp(γ/T − m)
        ptr = keys_ptr + cols  # 64-bit pointers, advanced one row (n_cols elements) at a time
        for i in range(0, n_rows):
            k = tl.load(ptr, mask=inside, other=0.0)
            ptr += n_cols
            active = k != 0
            score = tl.where(active, k / temperature, neg_inf)
            m_new = tl.maximum(m, score)
            safe = tl.where(m_new == neg_inf, 0.0, m_new)
            s = s * tl.exp(m - safe) + tl.where(active, tl.exp(score - safe), 0.0)
            m = m_new
        m = tl.where(m == neg_inf, 0.0, m)
        none = s == 0  # no active component: the whole target to the bias component
        t = tl.load(target_ptr + cols, mask=inside, other=0.0)
        scale = t / tl.where(none, 1.0, s)
        if HAS_BIAS:
            bias_row = tl.load(bias_ptr)
        else:
            bias_row = -1
        ptr = keys_ptr + cols
        for i in range(0, n_rows):
            k = tl.load(ptr, mask=inside, other=0.0)
            active = k != 0
            share = tl.where(active, tl.exp(k / temperature - m), 0.0) * scale
            share = tl.where(none & (i == bias_row), t, share)
            tl.store(ptr, share, mask=inside)
            ptr += n_cols

    @triton.jit(do_not_specialize=["n_rows", "n_cols"])
    def max_share_kernel(keys_ptr, target_ptr, bias_ptr, n_rows, n_cols, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        cols = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < n_cols
        k0 = tl.load(keys_ptr + cols, mask=inside, other=0.0)
        best = tl.full([BLOCK], float("-inf"), k0.dtype)
        winner = tl.full([BLOCK], -1, tl.int32)  # the first component with the largest active key
        ptr = keys_ptr + cols
        for i in range(0, n_rows):
            k = tl.load(ptr, mask=inside, other=0.0)
            better = (k != 0) & (k > best)  # strict: the first one wins ties
            best = tl.where(better, k, best)
            winner = tl.where(better, i, winner)
            ptr += n_cols
        if HAS_BIAS:
            winner = tl.where(winner < 0, tl.load(bias_ptr).to(tl.int32), winner)  # none active: the bias
        t = tl.load(target_ptr + cols, mask=inside, other=0.0)
        ptr = keys_ptr + cols
        for i in range(0, n_rows):
            tl.store(ptr, tl.where(winner == i, t, 0.0), mask=inside)
            ptr += n_cols

    @triton.jit(do_not_specialize=["n"])
    def split_tf32_kernel(x_ptr, hi_ptr, lo_ptr, n, HALF_ULP: tl.constexpr, KEEP: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = i < n
        x = tl.load(x_ptr + i, mask=inside, other=0.0)
        hi = ((x.to(tl.int32, bitcast=True) + HALF_ULP) & KEEP).to(tl.float32, bitcast=True)
        tl.store(hi_ptr + i, hi, mask=inside)
        tl.store(lo_ptr + i, x - hi, mask=inside)

    return {"softmax": softmax_share_kernel, "max": max_share_kernel, "split": split_tf32_kernel}
