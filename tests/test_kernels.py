"""The fused kernels (depass_tl/replay/kernels.py): when they run, and that they equal the eager code
(the softmax and max splits, the TF32 split of ``precision="tf32x3"``).

The kernel itself runs here in Triton's interpreter on CPU (``TRITON_INTERPRET=1``, in a subprocess
because the variable must be set before Triton is imported), when the ``triton`` package is installed
(CI's ``tl3`` environment installs it); on CUDA, ``tests/test_cuda.py`` checks it on the GPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from depass_tl.errors import DePassError
from depass_tl.replay import kernels

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def test_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.KERNELS_ENV, "fastest")
    with pytest.raises(DePassError, match="DEPASS_TL_KERNELS='fastest'"):
        kernels.use_fused(torch.ones(2, 3), "softmax")


@pytest.mark.parametrize("mode", ["", "auto", "eager"])
def test_cpu_tensors_split_eagerly_unless_forced(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv(kernels.KERNELS_ENV, mode)
    assert kernels.use_fused(torch.ones(2, 3), "softmax") is False


def test_forced_mode_needs_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.KERNELS_ENV, "triton")
    keys = torch.ones(2, 3)
    if HAS_TRITON:
        assert kernels.use_fused(keys, "softmax") is True
        assert kernels.use_fused(keys.half(), "softmax") is False  # float32 / float64 only
        assert kernels.use_fused(keys.t(), "softmax") is False  # contiguous keys only
        with torch.enable_grad():
            assert kernels.use_fused(keys.requires_grad_(), "softmax") is False  # autograd through the split: eager
    else:
        with pytest.raises(DePassError, match="needs the triton package"):
            kernels.use_fused(keys, "softmax")


def test_a_kernel_that_cannot_compile_falls_back_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel whose compilation fails warns once and runs eagerly from then on; the other kernels
    (separate compilations) are still used."""
    launched: list[str] = []

    def kernel(name: str, fails: bool):  # type: ignore[no-untyped-def]
        def launch(*args, **meta):  # type: ignore[no-untyped-def]
            if fails:
                raise RuntimeError("no C compiler")
            launched.append(name)
        return {(1,): launch}

    monkeypatch.setattr(kernels, "_state", {"kernel": None, "broken": {}})
    monkeypatch.setattr(kernels, "_kernel", lambda: {"split": kernel("split", True), "softmax": kernel("softmax", False)})
    monkeypatch.setenv(kernels.KERNELS_ENV, "auto")
    cpu = torch.device("cpu")
    with pytest.warns(RuntimeWarning, match="fused split kernel could not run here .RuntimeError: no C compiler"):
        assert kernels._run("split", (1,), (), {}, cpu) is False
    assert kernels._run("softmax", (1,), (), {}, cpu) is True and launched == ["softmax"]
    assert kernels.kernel_status()["fallback"] == "split: RuntimeError: no C compiler"
    assert kernels.kernel_status()["ran"] == ["softmax"]
    monkeypatch.setenv(kernels.KERNELS_ENV, "triton")  # CPU tensors are then eligible
    keys = torch.ones(2, 3)
    assert kernels.use_fused(keys, "softmax") is True
    assert kernels.use_fused(keys, "split") is False  # the broken one only


_INTERPRETED = r'''
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import numpy as np
import triton.runtime.interpreter as interp

# Triton 3.6's interpreter converts scalar kernel arguments with int() on one-element arrays, which
# NumPy >= 2.4 refuses; take the element instead (interpreter only, the compiled kernel is unaffected).
_patch = interp._patch_lang_tensor
def _index_fix(tensor, scope):
    _patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
interp._patch_lang_tensor = _index_fix

import torch
import depass_tl
from depass_tl.capture import capture
from depass_tl.replay.engine import replay_components
from depass_tl.replay.rules import Max, Softmax
from depass_tl.replay import kernels
from tests.models import make_model, random_tokens

def with_mode(mode, fn):
    os.environ["DEPASS_TL_KERNELS"] = mode
    try:
        return fn()
    finally:
        os.environ["DEPASS_TL_KERNELS"] = "triton"

torch.manual_seed(0)
worst = {torch.float32: 0.0, torch.float64: 0.0}
for dtype in (torch.float32, torch.float64):
    for T in (0.1, 1.0):
        for n, shape in [(1, (2, 3)), (2, (1, 1, 5)), (7, (1, 4, 9)), (33, (2, 3, 40)), (130, (1, 5, 70))]:
            keys = torch.randn(n, *shape, dtype=dtype) * 4
            keys[: n // 2, ..., :3] = 0  # inactive components
            keys[:, ..., -1] = 0  # a neuron where nothing is active
            keys[-1, ..., -2] = 0  # the bias inactive where others are not
            target = torch.randn(*shape, dtype=dtype)
            for bias in (torch.tensor([n - 1]), torch.tensor([], dtype=torch.long)):
                want = with_mode("eager", lambda: Softmax(T).share(keys.clone(), target, bias, n))
                got = Softmax(T).share(keys.clone(), target, bias, n)
                assert "softmax" in kernels.kernel_status()["ran"] and kernels.kernel_status()["fallback"] is None
                assert not torch.isnan(got).any()
                err = ((got - want).abs().max() / target.abs().max()).item()
                worst[dtype] = max(worst[dtype], err)
                # completeness of the split itself: the shares sum to the target (with a bias row)
                if len(bias):
                    assert torch.allclose(got.sum(0), target, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
print("share", worst[torch.float32], worst[torch.float64])
assert worst[torch.float32] <= 2e-6 and worst[torch.float64] <= 1e-14, worst

# max: the same numbers exactly (no arithmetic), ties to the first component, none active to the bias
for dtype in (torch.float32, torch.float64):
    for n, shape in [(1, (2, 3)), (3, (1, 2, 4)), (33, (2, 3, 40))]:
        keys = torch.randint(-3, 4, (n, *shape)).to(dtype)  # many ties and zeros (inactive)
        keys[:, ..., -1] = 0
        target = torch.randn(*shape, dtype=dtype)
        for bias in (torch.tensor([n - 1]), torch.tensor([], dtype=torch.long)):
            want = with_mode("eager", lambda: Max().share(keys.clone(), target, bias, n))
            got = Max().share(keys.clone(), target, bias, n)
            assert torch.equal(got, want), (dtype, n, shape, len(bias))
assert "max" in kernels.kernel_status()["ran"]
print("max share equal")

# the TF32 split of precision="tf32x3" (replay/matmul.py): the kernel's parts equal the eager ones bit for bit
from depass_tl.replay import matmul
x = torch.randn(3, 1000) * torch.logspace(-20, 20, 1000)
x[0, :4] = torch.tensor([0.0, -0.0, 1.0 + 2.0**-11, -(1.0 + 2.0**-11)])  # zeros and ties
want = with_mode("eager", lambda: matmul.split(x.clone()))
got = matmul.split(x.clone())
assert "split" in kernels.kernel_status()["ran"]
assert torch.equal(got.hi, want.hi) and torch.equal(got.lo, want.lo) and torch.equal(got.hi + got.lo, x)
y = x.clone()
c = matmul.split(y, consume=True)
assert c.lo.data_ptr() == y.data_ptr() and torch.equal(c.hi, want.hi) and torch.equal(y, want.lo)
# and a whole float32 tf32x3 replay with its products split here (the max rule: no rounding of its own)
matmul.DEVICE_TYPES = ("cuda", "cpu")
model = make_model("gpt2", dtype=torch.float32, n_layers=2, d_model=16, n_heads=2, d_mlp=24, d_vocab=50, n_ctx=16)
toks = random_tokens(model, batch=2, pos=9)
want = with_mode("eager", lambda: depass_tl.run_with_depass(model, toks, mlp_rule="max", precision="tf32x3")[1])
got = depass_tl.run_with_depass(model, toks, mlp_rule="max", precision="tf32x3")[1]
assert all(torch.equal(got[k], want[k]) for k in want.keys())
matmul.DEVICE_TYPES = ("cuda",)
print("split equal")

# a whole replay (every stored hook), on a standard and a gated MLP, with padding, under both rules
for arch, rule in (("gpt2", "softmax"), ("llama", "softmax"), ("gpt2", "max")):
    model = make_model(arch, dtype=torch.float64, n_layers=2, d_model=16, n_heads=2, d_mlp=24, d_vocab=50, n_ctx=16)
    toks = random_tokens(model, batch=2, pos=9)
    mask = torch.ones_like(toks); mask[1, 6:] = 0
    run = capture(model, toks, attention_mask=mask)
    init = depass_tl.tokens().init(run, torch.float64)
    want = with_mode("eager", lambda: replay_components(run, init, chunk_size=3, dtype=torch.float64, mlp_rule=rule))
    got = replay_components(run, init, chunk_size=3, dtype=torch.float64, mlp_rule=rule)
    scale = max(v.abs().max() for v in want.values())
    err = max(((got[k] - want[k]).abs().max() / scale).item() for k in want)
    print(arch, rule, "replay", err)
    assert err <= 1e-13, (arch, rule, err)
    logits, dc = depass_tl.run_with_depass(model, toks, attention_mask=mask, mlp_rule=rule)
    assert dc.completeness.worst[1] <= 1e-9
print("OK")
'''


@pytest.mark.skipif(not HAS_TRITON, reason="the triton package is not installed (CI's tl3 environment has it)")
def test_interpreted_kernel_equals_the_eager_split() -> None:
    env = {**os.environ, "DEPASS_TL_KERNELS": "triton", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_INTERPRETED)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-3000:] + proc.stderr[-3000:]
