"""benchmarks/profile_ops.py: the GPU-independent counts (launches, matmul FLOPs, bytes, host syncs).

Checked on a small input against what the counts must satisfy: the fused softmax kernel replaces the
eager split's operations one for one per unit and moves the bytes it claims, the matrix products are
the same, and ``--skip-matmul`` changes no count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import profile_ops  # noqa: E402


def test_fused_split_is_counted_as_one_launch_per_unit() -> None:
    eager = profile_ops.profile(12, 2, "exact", False, "softmax", "eager")
    fused = profile_ops.profile(12, 2, "exact", False, "softmax", "fused")
    skipped = profile_ops.profile(12, 2, "exact", True, "softmax", "eager")
    units = dict(fused["top_ops"])["fused_softmax_share"]
    eager_split = dict(eager["top_ops"])
    assert units == eager_split["amax"] == eager_split["exp_"] > 0  # one per unit either way
    assert fused["gemm_tflop"] == eager["gemm_tflop"] == skipped["gemm_tflop"] > 0
    assert fused["ops"] < eager["ops"] and fused["gb_moved"] < eager["gb_moved"]
    assert skipped["ops"] == eager["ops"] and abs(skipped["gb_moved"] - eager["gb_moved"]) < 1e-9
    # the whole call: a forward's operations and more, and few host syncs (the checks are batched)
    assert eager["call_ops"] > eager["forward_ops"] > 0 and fused["call_ops"] < eager["call_ops"]
    assert eager["call_syncs"] <= 20


def test_tf32x3_triples_the_products_and_the_fused_split_is_one_launch() -> None:
    exact = profile_ops.profile(12, 2, "exact", True, "softmax", "eager")
    eager = profile_ops.profile(12, 2, "tf32x3", True, "softmax", "eager")
    fused = profile_ops.profile(12, 2, "tf32x3", True, "softmax", "fused")
    # three products per product; a norm's bias folded through a matrix (one row, once per replay) stays IEEE
    assert 2.99 * exact["gemm_tflop"] <= eager["gemm_tflop"] <= 3 * exact["gemm_tflop"] * (1 + 1e-12)
    assert fused["gemm_tflop"] == eager["gemm_tflop"]
    splits = dict(fused["top_ops"])["fused_split_tf32"]
    strided = dict(fused["top_ops"]).get("bitwise_and_", 0)  # weights held as views: split eagerly (small)
    assert splits > strided and splits + strided == dict(eager["top_ops"])["bitwise_and_"]  # one kernel per split
    assert fused["gb_moved"] < eager["gb_moved"] and eager["gb_moved"] > exact["gb_moved"]


def test_cli_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_ops.py"), "--tokens", "8", "--layers", "1",
                           "--json", str(out)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 8 | eager |" in proc.stdout and "| 8 | fused |" in proc.stdout and out.exists()
