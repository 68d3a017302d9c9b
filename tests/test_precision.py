"""Precision modes on the CPU: the TF32 flag is forced off during an exact call (and on during a fast
one) whatever the global setting, restored afterwards (also after an error); the cache records the
mode and the guard's tolerance for it; the whole call's peak memory stays under ``max_memory``.

The CUDA numbers (TF32 really used or not) are checked by tests/test_cuda.py on a GPU.
"""

from __future__ import annotations

import threading

import pytest
import torch

import depass_tl
from depass_tl.errors import DePassError
from depass_tl.guard import completeness_rtol
from depass_tl.memory import PeakMemory
from depass_tl import precision
from depass_tl.precision import check_precision, completeness_tolerance, matmul_precision
from depass_tl.replay.rules import Ratio, register_rule, unregister_rule
from tests.models import make_model, random_tokens

MATMUL = torch.backends.cuda.matmul
NEW_API = hasattr(MATMUL, "fp32_precision")  # torch >= 2.9


def _flag() -> str:
    if NEW_API:
        return MATMUL.fp32_precision
    return "tf32" if MATMUL.allow_tf32 else "ieee"


def _set(flag: str) -> None:
    if NEW_API:
        MATMUL.fp32_precision = flag
    else:
        MATMUL.allow_tf32 = flag == "tf32"


@pytest.fixture
def restore_flag():  # type: ignore[no-untyped-def]
    old = _flag()
    yield
    _set(old)


@pytest.fixture
def cuda_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine with CUDA, where matmuls read the TF32 setting (so calls set it, taking turns)."""
    monkeypatch.setattr(precision, "_take_turns", lambda: True)


@pytest.mark.parametrize("globally", ["ieee", "tf32"])
def test_matmul_precision_sets_and_restores(globally: str, restore_flag, cuda_machine) -> None:  # type: ignore[no-untyped-def]
    _set(globally)
    with matmul_precision("exact"):
        assert _flag() == "ieee"
    assert _flag() == globally
    with matmul_precision("fast"):
        assert _flag() == "tf32"
    assert _flag() == globally
    with pytest.raises(RuntimeError, match="boom"):
        with matmul_precision("exact"):
            raise RuntimeError("boom")
    assert _flag() == globally


def test_without_cuda_the_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch, restore_flag) -> None:  # type: ignore[no-untyped-def]
    """Nothing reads the TF32 setting without CUDA: calls leave it as it is (threads flipping and restoring it
    without turns left it changed, and torch.get_float32_matmul_precision() then raised)."""
    monkeypatch.setattr(precision, "_take_turns", lambda: False)
    before = _flag()
    for mode in ("exact", "fast", "tf32x3"):
        with matmul_precision(mode):
            assert _flag() == before
    assert _flag() == before


def test_the_replay_runs_with_the_mode_flag(restore_flag, cuda_machine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A rule sees TF32 off inside an exact call even when it is on globally, and on inside a fast call (as
    with a CUDA model: the setting is what its matmuls read)."""
    from depass_tl import api

    monkeypatch.setattr(api, "all_on_cpu", lambda tensors: False)
    seen: list[str] = []

    class Spy(Ratio):
        name = "tf32_spy_cpu"

        def split(self, keys, neurons, bias_rows, group_size):  # type: ignore[no-untyped-def]
            seen.append(_flag())
            return super().split(keys, neurons, bias_rows, group_size)

    register_rule(Spy())
    try:
        model = make_model("llama", dtype=torch.float32)
        toks = random_tokens(model)
        _set("tf32")
        _, exact = depass_tl.run_with_depass(model, toks, mlp_rule="tf32_spy_cpu", names_filter=[])
        assert set(seen) == {"ieee"} and _flag() == "tf32"
        seen.clear()
        _set("ieee")
        _, fast = depass_tl.run_with_depass(model, toks, mlp_rule="tf32_spy_cpu", names_filter=[], precision="fast")
        assert set(seen) == {"tf32"} and _flag() == "ieee"
    finally:
        unregister_rule("tf32_spy_cpu")
    assert (exact.precision, fast.precision) == ("exact", "fast")
    assert exact.completeness.rtol == completeness_rtol(torch.float32, torch.float32) == 1e-4
    assert fast.completeness.rtol == completeness_tolerance(torch.float32, "fast") == 1e-2
    # on the CPU TF32 does not exist: both modes compute the same numbers
    torch.testing.assert_close(fast["unembed.hook_in"], exact["unembed.hook_in"], rtol=0, atol=0)


def test_derived_caches_keep_the_precision_and_its_completeness() -> None:
    """``to()`` and ``group()`` build new caches: they keep the mode the replay ran in and what it measured."""
    model = make_model("gpt2", dtype=torch.float32)
    _, dc = depass_tl.run_with_depass(model, random_tokens(model), precision="fast")
    for derived in (dc.to("cpu"), dc.group({"first": ["tok0", "tok1"]})):
        assert derived.precision == "fast"
        assert derived.completeness == dc.completeness and derived.completeness.rtol == 1e-2
        assert derived.mlp_rule == dc.mlp_rule and derived.start_hook == dc.start_hook


@pytest.mark.parametrize("turns, second_cuda", [(True, None), (False, None), (True, False)])
def test_blocks_take_turns_across_threads(turns: bool, second_cuda: bool | None, monkeypatch: pytest.MonkeyPatch,
                                          restore_flag) -> None:  # type: ignore[no-untyped-def]
    """The TF32 setting is one per process: where CUDA reads it, a block in another thread waits for the
    running one to end (here a fast call would otherwise run inside an exact call's window); the same
    thread re-enters. Without turns (no CUDA: nothing reads the setting) the blocks overlap, and so does
    a block that says it computes on no CUDA device (``cuda=False``); neither touches the setting then."""
    monkeypatch.setattr(precision, "_take_turns", lambda: turns)
    before = _flag()
    events: list[str] = []
    inside, second_in = threading.Event(), threading.Event()
    overlap = not turns or second_cuda is False

    def first() -> None:
        with matmul_precision("exact"):
            with matmul_precision("exact"):  # re-entered by the same thread
                events.append("first in")
            inside.set()
            # overlapping, wait until the second block is in; else give it time to (wrongly) get in
            second_in.wait(20 if overlap else 0.5)
            events.append("first out")

    def second() -> None:
        assert inside.wait(10)
        with matmul_precision("fast", cuda=second_cuda):
            events.append(f"second in ({_flag()})")
            second_in.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if not overlap:
        assert events == ["first in", "first out", "second in (tf32)"]
    elif turns:  # the CPU-only block does not switch TF32 on under the exact one
        assert events == ["first in", "second in (ieee)", "first out"]
    else:  # no CUDA: neither block touches the setting
        assert events == ["first in", f"second in ({before})", "first out"]


def test_a_cpu_model_does_not_wait_for_cuda_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU machine a call on a CPU model neither waits for a CUDA call's turn nor flips its TF32
    setting: run_with_depass completes while another thread holds the turn."""
    monkeypatch.setattr(precision, "_take_turns", lambda: True)
    model = make_model("gpt2")
    toks = random_tokens(model)
    holding, release = threading.Event(), threading.Event()
    result: list[object] = []

    def cuda_call() -> None:
        with matmul_precision("exact"):
            holding.set()
            release.wait(300)  # released below

    holder = threading.Thread(target=cuda_call)
    holder.start()
    try:
        assert holding.wait(10)
        def cpu_call() -> None:
            try:
                result.append(depass_tl.run_with_depass(model, toks, precision="fast"))
            except Exception as err:  # reported below, not lost in the thread
                result.append(err)

        worker = threading.Thread(target=cpu_call)
        worker.start()
        worker.join(60)
        assert result, "the CPU call waited for the CUDA call's turn"
        assert not isinstance(result[0], Exception), result[0]
    finally:
        release.set()
        holder.join(10)


def test_only_a_model_wholly_on_the_cpu_counts_as_cpu_only() -> None:
    """Offloaded (``meta``) weights reach a GPU at run time: such a model takes its turn like a CUDA one."""
    assert precision.all_on_cpu([torch.ones(2), torch.ones(3, dtype=torch.float64)])
    assert not precision.all_on_cpu([torch.ones(2), torch.empty(2, device="meta")])


def test_unknown_precision_is_refused() -> None:
    model = make_model("gpt2")
    with pytest.raises(DePassError, match="precision must be one of 'exact', 'tf32x3', 'fast'"):
        depass_tl.run_with_depass(model, random_tokens(model), precision="tf32")
    with pytest.raises(DePassError, match="precision must be one of"):
        check_precision(None)


@pytest.mark.parametrize("rule", ["softmax", "max", "ratio"])
def test_whole_call_peak_stays_under_max_memory(rule: str) -> None:
    """run_with_depass (capture + replay + temporaries, PeakMemory) stays under max_memory; same numbers."""
    model = make_model("llama", n_layers=2, d_model=32, d_mlp=256, n_ctx=64, dtype=torch.float32)
    toks = random_tokens(model, batch=1, pos=48)
    with PeakMemory() as unbounded:
        _, ref = depass_tl.run_with_depass(model, toks, mlp_rule=rule, names_filter=[])
    for frac in (0.7, 0.9):
        budget = int(unbounded.peak * frac)
        with PeakMemory() as mem:
            _, dc = depass_tl.run_with_depass(model, toks, mlp_rule=rule, names_filter=[], max_memory=budget)
        assert mem.peak <= budget, (mem.peak, budget, unbounded.peak)
        torch.testing.assert_close(dc["unembed.hook_in"], ref["unembed.hook_in"], rtol=0, atol=2e-6)
