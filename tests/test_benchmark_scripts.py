"""The CPU benchmark scripts build their models on the installed TransformerLens (they imported
HookedTransformer, which TL 4 removed, and failed even with --help)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["bench_performance.py", "bench_guard.py", "bench_token_level.py"])
def test_the_benchmark_scripts_start_on_this_transformer_lens(script: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


def test_the_benchmark_models_replay() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_performance import build
    finally:
        sys.path.pop(0)
    import torch

    import depass_tl

    model = build("llama", 1, "cpu")
    _, dc = depass_tl.run_with_depass(model, torch.tensor([[1, 2, 3, 4]]), names_filter=[])
    assert dc.completeness.worst[1] <= dc.completeness.rtol
