"""benchmarks/bench_gpu.py --cpu-smoke: the GPU benchmark script runs end to end (tiny sizes, CPU).

It is what the lead runs on the H200 (through ``scripts/gpu_check.sh``); this keeps it from rotting
between device runs: the table, the targets section and the JSON must come out, and every row's
relative completeness must be within the guard's tolerance for its precision (the script exits 1
otherwise).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gpu_cpu_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--cpu-smoke", "--reps", "1",
         "--only", "gpt2 fp32 N=128", "gpt2 fp32 N=1024 tf32x3", "llama8 fp32 N=2048 exact"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| model | precision | tokens |" in proc.stdout and "completeness within tolerance: OK" in proc.stdout
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    rows = {(r["label"], r["precision"], r["budget_GB"] is not None) for r in result["rows"]}
    assert rows == {("gpt2 fp32", "exact", False), ("gpt2 fp32", "fast", False), ("gpt2 fp32", "tf32x3", False),
                    ("llama8 fp32", "exact", True)}
    for r in result["rows"]:
        assert 0 <= r["rel_completeness"] <= r["tolerance"] and r["depass_s"] > 0 and r["C"] == r["tokens"] + 1
        if r["budget_GB"] is not None:  # the whole call's peak (PeakMemory on CPU) under max_memory
            assert 0 < r["peak_over_budget"] <= 1.0, r


def test_cuda_tests_run_under_the_built_in_runner() -> None:
    """The GPU machine has no pytest: scripts/run_cuda_tests.py's own runner (parametrize, skips,
    tmp_path, monkeypatch) must run tests/test_cuda.py. Checked here on the CPU (DEPASS_TEST_DEVICE=cpu)."""
    env = {**os.environ, "DEPASS_TEST_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_cuda_tests.py"), "--mini", "tests/test_cuda.py", "tests/test_devices.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "own runner" in out and " 0 failed" in out, out[-4000:]
    assert "PASSED tests/test_cuda.py::test_tf32x3_is_as_accurate_as_exact[gpt2]" in out, out[-4000:]  # monkeypatch
