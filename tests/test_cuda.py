"""The replay on a CUDA device: completeness in both precisions, chunked == unchunked, TF32 off in exact
mode, a model split over ``cpu`` + ``cuda:0``, the memory budget of the whole call.

Skipped without CUDA (``scripts/gpu_check.sh`` runs it on the GPU machine). ``DEPASS_TEST_DEVICE=cpu``
runs the same tests on the CPU (``scripts/gpu_check.sh --cpu-smoke``; the split then stays on the CPU).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import depass_tl
from depass_tl.capture import capture
from depass_tl.coefficients import FrozenRun
from depass_tl.memory import PeakMemory
from depass_tl.precision import completeness_tolerance
from depass_tl.replay.engine import replay_components
from depass_tl.replay.rules import Ratio, register_rule, rule_names, unregister_rule
from tests.models import make_model, random_tokens
from tests.test_rules import Equal

DEVICE = os.environ.get("DEPASS_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs a CUDA device (or DEPASS_TEST_DEVICE=cpu)")
RULES = rule_names()  # every registered rule


def _model(arch: str, dtype: torch.dtype = torch.float32, **kw):  # type: ignore[no-untyped-def]
    kw = {"n_layers": 3, "d_model": 64, "n_heads": 4, "d_mlp": 256, "d_vocab": 300, "n_ctx": 128, **kw}
    return make_model(arch, dtype=dtype, **kw).to(DEVICE)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("precision", ["exact", "tf32x3", "fast"])
def test_completeness_and_reference(arch: str, precision: str) -> None:
    """Both precisions sum to the clean logits within their tolerance and match a float64 CPU replay."""
    model = _model(arch)
    toks = random_tokens(model, batch=2, pos=96).to(DEVICE)
    logits, dc = depass_tl.run_with_depass(model, toks, names_filter=[], precision=precision)
    tol = completeness_tolerance(torch.float32, precision)
    assert dc.precision == precision and dc.completeness.worst[1] <= tol
    torch.testing.assert_close(dc.logit_attrs(5).sum(0), logits[:, -1, 5], rtol=0, atol=tol * logits.abs().max().item())
    ref_model = make_model(arch, dtype=torch.float64, n_layers=3, d_model=64, n_heads=4, d_mlp=256, d_vocab=300, n_ctx=128)
    ref_model.load_state_dict({k: (v.double() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()})
    _, ref = depass_tl.run_with_depass(ref_model, toks.cpu(), names_filter=[])
    got, want = dc["unembed.hook_in"].double().cpu(), ref["unembed.hook_in"]
    assert (got - want).abs().max() <= 10 * tol * want.abs().max()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tf32x3_is_as_accurate_as_exact(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """precision="tf32x3" splits the replay's products into TF32 ones (on CUDA), each run with TF32 on, and
    its error against a float64 replay stays within 8× that of "exact", while "fast" is far off; on the CPU
    it is "exact"."""
    from depass_tl.replay import matmul

    splits: list[int] = []
    real, real_mul, real_addmul = matmul.split, matmul._mul, matmul._addmul_
    monkeypatch.setattr(matmul, "split", lambda t, consume=False: splits.append(t.numel()) or real(t, consume=consume))
    flags: set[str] = set()  # what cuBLAS is told when each of the three split products runs: TF32

    def mul(a, b):  # type: ignore[no-untyped-def]
        flags.add(torch.backends.cuda.matmul.fp32_precision)
        return real_mul(a, b)

    def addmul_(out, a, b):  # type: ignore[no-untyped-def]
        flags.add(torch.backends.cuda.matmul.fp32_precision)
        real_addmul(out, a, b)

    monkeypatch.setattr(matmul, "_mul", mul)
    monkeypatch.setattr(matmul, "_addmul_", addmul_)
    model = _model(arch)
    toks = random_tokens(model, batch=2, pos=120).to(DEVICE)
    got = {p: depass_tl.run_with_depass(model, toks, names_filter=[], precision=p)[1]["unembed.hook_in"].double().cpu()
           for p in ("exact", "tf32x3", "fast")}
    if DEVICE == "cpu":
        assert not splits and torch.equal(got["tf32x3"], got["exact"])
        return
    assert splits and flags == {"tf32"}, (len(splits), flags)
    ref = _model(arch, torch.float64)
    ref.load_state_dict(model.state_dict())
    want = depass_tl.run_with_depass(ref, toks, names_filter=[], dtype=torch.float64)[1]["unembed.hook_in"].cpu()
    err = {p: ((g - want).abs().max() / want.abs().max()).item() for p, g in got.items()}
    print(f"relative error vs float64 ({arch}): {err}")
    assert err["tf32x3"] <= 8 * err["exact"] + 1e-6, err
    assert err["fast"] >= 10 * err["tf32x3"], err


@pytest.mark.parametrize("rule", RULES)
def test_chunked_equals_unchunked(rule: str) -> None:
    model = _model("gpt2")
    run = capture(model, random_tokens(model, batch=2, pos=40).to(DEVICE))
    init = depass_tl.tokens().init(run, torch.float32)
    ref = replay_components(run, init, mlp_rule=rule, causal_skip=False, chunk_size=10**9)
    scale = ref["unembed.hook_in"].abs().max()
    for kw in ({}, {"chunk_size": 3}, {"max_memory": 2 * 10**6, "keep": lambda name: False}):
        got = replay_components(run, init, mlp_rule=rule, **kw)  # type: ignore[arg-type]
        for name in got:
            assert (got[name] - ref[name]).abs().max() <= 1e-5 * scale, (kw, name)


def test_exact_mode_turns_tf32_off_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """With TF32 enabled globally, precision="exact" computes with IEEE float32 matmuls (the rule sees the
    flag off during the call) and gives the numbers of a run with TF32 off; the global setting survives."""
    if DEVICE == "cpu":  # the CPU smoke run: where nothing reads the setting it is left alone, so act as on CUDA
        from depass_tl import api, precision

        monkeypatch.setattr(precision, "_take_turns", lambda: True)
        monkeypatch.setattr(api, "all_on_cpu", lambda tensors: False)
    seen: list[str] = []

    class Spy(Ratio):
        name = "tf32_spy"

        def split(self, keys, neurons, bias_rows, group_size):  # type: ignore[no-untyped-def]
            seen.append(torch.backends.cuda.matmul.fp32_precision)
            return super().split(keys, neurons, bias_rows, group_size)

    register_rule(Spy())
    model = _model("llama")
    toks = random_tokens(model, pos=64).to(DEVICE)
    old = torch.backends.cuda.matmul.fp32_precision
    flags = {}
    try:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        _, off = depass_tl.run_with_depass(model, toks, mlp_rule="tf32_spy", names_filter=[])
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        flags["off"], seen[:] = set(seen), []
        _, on = depass_tl.run_with_depass(model, toks, mlp_rule="tf32_spy", names_filter=[])
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        flags["on"], seen[:] = set(seen), []
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        _, fast = depass_tl.run_with_depass(model, toks, mlp_rule="tf32_spy", names_filter=[], precision="fast")
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        flags["fast"] = set(seen)
    finally:
        torch.backends.cuda.matmul.fp32_precision = old
        unregister_rule("tf32_spy")
    assert flags == {"off": {"ieee"}, "on": {"ieee"}, "fast": {"tf32"}}
    torch.testing.assert_close(on["unembed.hook_in"], off["unembed.hook_in"], rtol=0, atol=1e-6)
    assert on.completeness.worst[1] <= completeness_tolerance(torch.float32) and fast.precision == "fast"


def _to(obj, device):  # type: ignore[no-untyped-def]
    """A view (block, norm) with every tensor on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _to(getattr(obj, f.name), device) for f in dataclasses.fields(obj)
                                           if f.name not in ("dtype", "device")})
    return obj


@pytest.mark.parametrize("rule", RULES)
def test_model_split_over_cpu_and_cuda(rule: str) -> None:
    """Block 0 on the CPU, blocks 1-2, the final norm and the unembedding on the device: each block replays
    on its weights' device and the result equals the replay on one device."""
    model = make_model("llama", dtype=torch.float32, n_layers=3, d_model=64, n_heads=4, d_mlp=256, d_vocab=300, n_ctx=64)
    run = capture(model, random_tokens(model, pos=24))
    view = run.view
    split_view = dataclasses.replace(
        view, blocks=(view.blocks[0],) + tuple(_to(b, DEVICE) for b in view.blocks[1:]),
        ln_final=_to(view.ln_final, DEVICE), W_U=view.W_U.to(DEVICE),
    )
    acts = {k: (v if k.startswith("blocks.0.") else v.to(DEVICE)) for k, v in run.acts.items()}
    split = FrozenRun.build(tokens=run.tokens, logits=run.logits, acts=acts, view=split_view, str_tokens=None)
    init = depass_tl.tokens().init(run, torch.float32)
    ref = replay_components(run, init, mlp_rule=rule, chunk_size=5)
    got = replay_components(split, init, mlp_rule=rule, chunk_size=5)
    for name in ref:
        assert got[name].device.type == (DEVICE if name.startswith(("blocks.1", "blocks.2", "unembed")) else "cpu")
        torch.testing.assert_close(got[name].cpu(), ref[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize("rule", ["softmax", "max"])
def test_whole_call_stays_within_max_memory(rule: str) -> None:
    """The peak of run_with_depass (capture, replay, temporaries) stays under max_memory on the device."""
    model = _model("llama", n_layers=2, d_mlp=512)
    toks = random_tokens(model, batch=1, pos=120).to(DEVICE)

    def peak(**kw):  # type: ignore[no-untyped-def]
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = depass_tl.run_with_depass(model, toks, mlp_rule=rule, names_filter=[], **kw)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before, out
        with PeakMemory() as mem:
            out = depass_tl.run_with_depass(model, toks, mlp_rule=rule, names_filter=[], **kw)
        return mem.peak, out

    unbounded, (_, ref) = peak()
    for frac in (0.6, 0.85):
        budget = int(unbounded * frac)
        used, (_, dc) = peak(max_memory=budget)
        assert used <= budget, (used, budget)
        torch.testing.assert_close(dc["unembed.hook_in"], ref["unembed.hook_in"], rtol=0, atol=1e-5)


def test_custom_rule_on_device() -> None:
    """A custom competitive rule without a direct formula (tests/test_rules.py's Equal): the default
    fold/allocate path on the device."""
    register_rule(Equal())
    try:
        model = _model("gpt2")
        _, dc = depass_tl.run_with_depass(model, random_tokens(model, pos=50).to(DEVICE), mlp_rule="equal",
                                          names_filter=[])
        assert dc.completeness.worst[1] <= completeness_tolerance(torch.float32)
    finally:
        unregister_rule("equal")


@pytest.mark.skipif(DEVICE != "cuda", reason="the fused kernel runs on CUDA tensors (its interpreter test: tests/test_kernels.py)")
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fused_softmax_kernel_equals_the_eager_split(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default split on CUDA is the fused Triton kernel (replay/kernels.py); it gives the eager split's
    numbers (float32 rounding) in both precisions, and every hook still sums to the clean run."""
    from depass_tl.replay import kernels

    model = _model(arch)
    run = capture(model, random_tokens(model, batch=2, pos=100).to(DEVICE))
    init = depass_tl.tokens().init(run, torch.float32)
    monkeypatch.setenv(kernels.KERNELS_ENV, "eager")
    want = replay_components(run, init)
    monkeypatch.setenv(kernels.KERNELS_ENV, "auto")
    assert kernels.use_fused(want["unembed.hook_in"], "softmax")
    got = replay_components(run, init)
    status = kernels.kernel_status()
    assert "softmax" in status["ran"] and status["fallback"] is None  # it ran, no fallback
    for name in want:
        scale = want[name].abs().max()
        assert (got[name] - want[name]).abs().max() <= 1e-5 * scale, name
    for precision in ("exact", "fast"):
        _, dc = depass_tl.run_with_depass(model, run.tokens, names_filter=[], precision=precision)
        assert dc.completeness.worst[1] <= completeness_tolerance(torch.float32, precision)
