"""``precision="tf32x3"``: float32-accurate products from three TF32 ones (depass_tl/replay/matmul.py).

A CPU has no TF32, so the tests emulate the tensor cores: every operand of a split product is rounded
to TF32 (by truncation, the worse of the two roundings a GPU may use) and the products (exact in
float32: 11-bit by 11-bit significands) accumulate in float32. Against that emulation the split must be about as accurate as IEEE
float32 and far more accurate than one TF32 product, for single products and for whole replays; a
split that drops its low parts must fail the same checks. On a real GPU tests/test_cuda.py runs the
mode itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

import depass_tl
from depass_tl.errors import CompletenessError, DePassError
from depass_tl.memory import PeakMemory
from depass_tl.precision import completeness_tolerance, matmul_precision
from depass_tl.replay import matmul
from depass_tl.replay.matmul import Split, accumulate_, product, split, split_products
from tests.budgets import tightest_budget
from tests.models import config_model, make_model, random_tokens
from tests.tf32_emulation import LOW_BITS, EmulatedTF32, tf32

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def split_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split float32 products on the CPU too (each part multiplied in IEEE float32)."""
    monkeypatch.setattr(matmul, "DEVICE_TYPES", ("cuda", "cpu"))


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch, split_on_cpu: None) -> Iterator[EmulatedTF32]:
    emu = EmulatedTF32()
    monkeypatch.setattr(matmul, "_mul", emu.mul)
    monkeypatch.setattr(matmul, "_addmul_", emu.addmul_)
    yield emu


def drop_low_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken split (the low parts lost): one TF32 product's accuracy."""
    real = matmul.split

    def hi_only(t: Tensor, *, consume: bool = False) -> Split:
        s = real(t, consume=consume)
        return Split(s.hi, torch.zeros_like(s.lo))

    monkeypatch.setattr(matmul, "split", hi_only)


def test_split_is_exact_and_its_high_part_fits_tf32() -> None:
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(4096, generator=gen) * torch.logspace(-30, 30, 4096)
    t[:3] = torch.tensor([0.0, -0.0, -(1.0 + 2.0**-11)])  # zeros; a tie rounds away from zero
    s = split(t)
    assert torch.equal(s.hi + s.lo, t)
    assert not (s.hi.view(torch.int32) & LOW_BITS).any()
    assert (s.lo.abs() <= t.abs() * 2.0**-11).all()
    assert s.hi[2].item() == -(1.0 + 2.0**-10)
    u = t.clone()
    c = split(u, consume=True)
    assert c.lo.data_ptr() == u.data_ptr() and torch.equal(c.hi, s.hi) and torch.equal(u, s.lo)


def _errors(a: Tensor, b: Tensor, got: Tensor) -> float:
    truth = a.double() @ b.double()
    return ((got.double() - truth).abs().max() / truth.abs().max()).item()


@pytest.mark.parametrize("shape", [((300, 768), (768, 200)), ((6, 50, 70), (6, 70, 40))])
def test_split_product_is_as_accurate_as_float32(emulated: EmulatedTF32, shape) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(*shape[0], generator=gen), torch.randn(*shape[1], generator=gen)
    ieee = _errors(a, b, a @ b)
    one_tf32 = _errors(a, b, torch.matmul(tf32(a).double(), tf32(b).double()).float())
    with split_products():
        got = product(a, b)
    assert emulated.calls == 3
    three = _errors(a, b, got)
    assert three <= 4 * ieee + 2.0**-23, (three, ieee)
    assert one_tf32 >= 50 * three, (one_tf32, three)


def test_split_accumulation_is_as_accurate_as_float32(emulated: EmulatedTF32, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(2)
    a, b, c = torch.randn(200, 512, generator=gen), torch.randn(512, 64, generator=gen), torch.randn(200, 64, generator=gen)
    truth = c.double() + a.double() @ b.double()
    out = c.clone()
    with split_products():
        accumulate_(out, a.clone(), b, consume_a=True)
    err = ((out.double() - truth).abs().max() / truth.abs().max()).item()
    ieee = ((c.addmm(a, b).double() - truth).abs().max() / truth.abs().max()).item()
    assert emulated.calls == 3 and err <= 4 * ieee + 2.0**-23, (err, ieee)


def test_products_are_split_only_where_they_should_be(emulated: EmulatedTF32) -> None:
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    assert torch.equal(product(a, b), a @ b) and emulated.calls == 0  # the mode is off
    with split_products():
        product(a.double(), b.double())  # float64: no TF32
        product(a.requires_grad_(), b)  # autograd: the split has no gradient
        assert emulated.calls == 0
        with torch.no_grad():
            product(a, b)
        assert emulated.calls == 3
    assert not matmul.splitting(torch.float32, "cpu")


def test_a_split_operand_beside_one_that_may_not_be_split_stays_ieee(emulated: EmulatedTF32) -> None:
    """A pattern split once per layer times values that autograd records (reverse mode inside a caller's
    ``matmul_precision("tf32x3")``): the product is the IEEE one of the whole operands,
    so the gradient reaches every term (a split other operand would hide its low part's from autograd)."""
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 6, 5, generator=gen), torch.randn(3, 5, 4, generator=gen)
    with split_products():
        sa = split(a)
        with torch.enable_grad():
            bg = b.clone().requires_grad_()
            got = product(sa, bg)
            got.square().sum().backward()
        assert emulated.calls == 0 and torch.equal(got.detach(), torch.bmm(a, b))
        bw = b.clone().requires_grad_()
        torch.bmm(a, bw).square().sum().backward()
        assert torch.equal(bg.grad, bw.grad)
        assert emulated.calls == 0


def _replay(model, toks, **kw):  # type: ignore[no-untyped-def]
    return depass_tl.run_with_depass(model, toks, names_filter=lambda n: n.endswith(("hook_attn_out", "hook_mlp_out")) or
                                     n == "unembed.hook_in", **kw)[1]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_tf32x3_replay_is_float32_accurate(arch: str, emulated: EmulatedTF32, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model = make_model(arch, n_layers=2, d_model=64, d_mlp=256, n_heads=4, n_ctx=64, dtype=torch.float32)
    toks = random_tokens(model, batch=2, pos=40)
    ref = _replay(model, toks, dtype=torch.float64)
    exact = _replay(model, toks)
    split3 = _replay(model, toks, precision="tf32x3")
    assert split3.precision == "tf32x3" and emulated.calls > 0
    assert split3.completeness.rtol == completeness_tolerance(torch.float32, "exact")

    def worst(dc) -> float:  # type: ignore[no-untyped-def]
        return max(((dc[n].double() - ref[n]).abs().max() / ref[n].abs().max()).item() for n in ref.keys())

    assert worst(split3) <= 8 * worst(exact) + 1e-6, (worst(split3), worst(exact))
    drop_low_parts(monkeypatch)  # a split that loses its low parts: one TF32 product's rounding, which
    with pytest.raises(CompletenessError, match="precision='tf32x3'"):  # float32's guard refuses
        _replay(model, toks, precision="tf32x3")



@pytest.mark.parametrize("name", ["gpt2_like", "llama_like"])
def test_a_tf32x3_replay_agrees_with_the_slow_reference(name: str, emulated: EmulatedTF32) -> None:
    """Against the loop-by-loop float64 reference (tests/reference.py) at every hook both report, the
    emulated tf32x3 replay of the float32 model is within 8x the IEEE float32 replay's error, and its
    components sum to the clean activation there within float32's tolerance."""
    from tests.reference import reference_depass
    from tests.test_reference import BASE, CONFIGS, model_and_tokens

    ref_model, toks = model_and_tokens(name)
    want, _ = reference_depass(ref_model, toks, mlp_rule="softmax")
    model = config_model(**{**BASE, "dtype": torch.float32}, **CONFIGS[name])
    model.load_state_dict({k: v.float() for k, v in ref_model.state_dict().items()})
    keep = [n for n in want if n.endswith(("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"))
            or n == "unembed.hook_in"]
    exact = depass_tl.run_with_depass(model, toks, names_filter=keep)[1]
    split3 = depass_tl.run_with_depass(model, toks, names_filter=keep, precision="tf32x3")[1]
    assert emulated.calls > 0
    tol = completeness_tolerance(torch.float32, "tf32x3")
    for n in keep:
        scale = want[n].abs().max().item()
        err3 = (split3[n].double() - want[n]).abs().max().item() / scale
        err = (exact[n].double() - want[n]).abs().max().item() / scale
        assert err3 <= 8 * err + 1e-6, (n, err3, err)
        clean = split3.clean[n].double()
        assert (split3[n].double().sum(0) - clean).abs().max().item() <= tol * clean.abs().max().item(), n


def test_on_a_cpu_tf32x3_computes_the_exact_numbers() -> None:
    model = make_model("llama", dtype=torch.float32)
    toks = random_tokens(model)
    exact = _replay(model, toks)
    same = _replay(model, toks, precision="tf32x3")
    assert same.precision == "tf32x3"
    for name in exact.keys():
        assert torch.equal(same[name], exact[name]), name


def test_matmul_precision_leaves_ieee_on_and_splits_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    from depass_tl import precision

    monkeypatch.setattr(precision, "_take_turns", lambda: True)  # as with CUDA, where the setting is read
    cuda = torch.backends.cuda.matmul
    with matmul_precision("tf32x3"):  # every product but the replay's split ones stays IEEE
        assert matmul._ON.get()
        assert (cuda.fp32_precision == "ieee") if hasattr(cuda, "fp32_precision") else not cuda.allow_tf32
        with matmul_precision("exact"):
            assert not matmul._ON.get()
    assert not matmul._ON.get()


def test_the_split_is_budgeted(split_on_cpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the split on, the whole call's peak still stays under max_memory (its parts are planned)."""
    calls = []
    real = matmul.split
    monkeypatch.setattr(matmul, "split", lambda t, consume=False: calls.append(1) or real(t, consume=consume))
    model = make_model("gpt2", n_layers=2, d_model=32, d_mlp=256, n_ctx=64, dtype=torch.float32)
    toks = random_tokens(model, batch=1, pos=48)
    with PeakMemory() as unbounded:
        _, ref = depass_tl.run_with_depass(model, toks, names_filter=[], precision="tf32x3")
    assert calls
    for frac in (0.7, 0.9):
        budget = int(unbounded.peak * frac)
        with PeakMemory() as mem:
            _, dc = depass_tl.run_with_depass(model, toks, names_filter=[], max_memory=budget, precision="tf32x3")
        assert mem.peak <= budget, (mem.peak, budget, unbounded.peak)
        torch.testing.assert_close(dc["unembed.hook_in"], ref["unembed.hook_in"], rtol=0, atol=2e-5)


def test_each_matrix_is_split_once_per_layer(split_on_cpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a budget that cuts each layer into several passes, a block's matrices are split once per
    layer, not once per pass: no tensor is split twice (every split tensor is held, so ids stay unique)."""
    model = make_model("gpt2", n_layers=2, d_model=32, d_mlp=256, n_ctx=64, dtype=torch.float32)
    toks = random_tokens(model, batch=1, pos=48)
    with PeakMemory() as unbounded:
        depass_tl.run_with_depass(model, toks, names_filter=[], precision="tf32x3")
    seen: list[Tensor] = []
    real = matmul.split
    monkeypatch.setattr(matmul, "split", lambda t, consume=False: seen.append(t) or real(t, consume=consume))
    depass_tl.run_with_depass(model, toks, names_filter=[], precision="tf32x3")
    one_pass = len(seen)
    seen.clear()
    depass_tl.run_with_depass(model, toks, names_filter=[], precision="tf32x3", max_memory=int(unbounded.peak * 0.7))
    assert len(seen) > one_pass  # more passes, so more of the activations' splits
    assert len({id(t) for t in seen}) == len(seen), "a tensor was split twice"



def test_reverse_mode_inside_tf32x3_stays_ieee(emulated: EmulatedTF32, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reverse mode records the state with autograd: nothing is split (neither the pattern nor the
    matrices, which would then be rebuilt from their parts in every product) and the attributions are
    the IEEE ones, bit for bit."""
    from depass_tl.reverse import attribute, direction_target

    real, splits = matmul.split, []
    monkeypatch.setattr(matmul, "split", lambda t, consume=False: splits.append(t.shape) or real(t, consume=consume))

    model = make_model("gpt2", n_layers=2, d_model=32, d_mlp=64, n_ctx=32, dtype=torch.float32)
    toks = random_tokens(model, batch=1, pos=12)
    target = direction_target("blocks.1.hook_resid_post", torch.randn(1, 32, generator=torch.Generator().manual_seed(4)))
    want = attribute(model, toks, target=target, mode="reverse").values
    with matmul_precision("tf32x3"):
        got = attribute(model, toks, target=target, mode="reverse").values
    assert emulated.calls == 0 and not splits and torch.equal(got, want)


def test_a_pattern_without_ln1_scale_is_not_consumed(split_on_cpu: None) -> None:
    """Without ln1's scale the captured pattern itself is the operand: its split must leave it intact
    (the scaled pattern, this layer's own tensor, is the one split in place), so a second replay of the
    same capture computes the same numbers."""
    from depass_tl.capture import capture
    from depass_tl.replay.engine import replay_components

    model = make_model("no_norm", n_layers=2, d_model=32, d_mlp=64, n_ctx=32, dtype=torch.float32)
    run = capture(model, random_tokens(model, batch=1, pos=12))
    patterns = {n: t.clone() for n, t in run.acts.items() if n.endswith("hook_pattern")}
    init = depass_tl.tokens().init(run, torch.float32)
    with matmul_precision("tf32x3"):
        first = replay_components(run, init)["unembed.hook_in"]
        second = replay_components(run, init)["unembed.hook_in"]
    assert patterns and all(torch.equal(run.acts[n], t) for n, t in patterns.items())
    assert torch.equal(first, second)


def test_the_split_matrices_are_budgeted(split_on_cpu: None) -> None:
    """A model whose weights outweigh its activations (wide MLP, few tokens): at the smallest budget the
    planner accepts, the call stays under it only if the planner counts the matrices' two parts."""
    model = make_model("gpt2", n_layers=2, d_model=64, d_mlp=2048, n_ctx=16, dtype=torch.float32)
    toks = random_tokens(model, batch=1, pos=6)

    def call(budget: int) -> object:
        return depass_tl.run_with_depass(model, toks, names_filter=[], max_memory=budget, precision="tf32x3")

    budget, peak = tightest_budget(call, 64 << 20)
    assert peak <= budget, (peak, budget)


def test_tf32x3_is_refused_on_a_gpu_without_tf32_tensor_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pre-Ampere GPU ignores the TF32 switch: three IEEE products for the numbers of one. Refused, named."""
    capability = {"cuda:0": (7, 0), "cuda:1": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: capability[str(torch.device(d))])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Tesla V100")
    with pytest.raises(DePassError, match=r'tf32x3" needs TF32 tensor cores.*cuda:0 \(Tesla V100\) has 7\.0'):
        matmul.require_tensor_cores("cuda:0")
    matmul.require_tensor_cores("cuda:1")
    matmul.require_tensor_cores("cpu")


def test_the_accuracy_script_runs() -> None:
    """benchmarks/accuracy_tf32x3.py --tiny: its table, and the same ordering the tests above assert."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy_tf32x3.py"), "--tiny"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in proc.stdout.splitlines()
            if line.startswith("| ") and "e-" in line}
    exact, split3, one = rows["exact (IEEE float32)"], rows["tf32x3 (emulated TF32)"], rows["one TF32 product (emulated; fast)"]
    assert split3 <= 8 * exact + 1e-6 and one >= 20 * split3, rows
