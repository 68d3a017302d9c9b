"""A GPU-independent profile of the replay: kernels, matmul FLOPs and bytes moved, per layer.

What a GPU run measures in seconds, this counts on any machine: every ATen operation the replay
dispatches (each is at least one kernel launch on a GPU; pure views are not counted), the FLOPs of
its matrix products, the bytes its other operations read and write (inputs plus outputs, the
memory-bound work), and the host synchronisations. From those it prints a roofline estimate of the
H200 time with the constants below (measured on the H200 runs of this project where noted), so a
change can be judged without a GPU; the GPU figures themselves come from ``benchmarks/bench_gpu.py``.

The replay runs on CPU through :func:`depass_tl.replay.engine.replay_components` (the completeness
guard is not part of it), with the chunk size a CUDA replay would use (:data:`~depass_tl.replay.plan.
DEFAULT_CHUNK_ROWS`). With ``--skip-matmul`` the matrix products return zeros of the right shape
instead of being computed (their FLOPs are still counted), so a 1024-token GPT-2-small layer is
profiled in seconds; every other operation runs on real data.

    python benchmarks/profile_ops.py                          # GPT-2-small shape at 128 tokens, 12 layers
    python benchmarks/profile_ops.py --tokens 1024 --layers 2 --skip-matmul
    python benchmarks/profile_ops.py --json out.json          # the counts as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# H200 constants of the estimate: fp32 SIMT GEMMs ran at ~49 TFLOP/s in the H200 profile of this
# replay (aten::mm, 1024 tokens); TF32 and HBM rates are nominal derated; launch cost from 6,939
# launches in a 0.104 s call (profile-h200-2026-12-04.log).
GEMM_FLOPS = {"exact": 49e12, "fast": 300e12, "tf32x3": 300e12}  # tf32x3: its three TF32 products are counted
HBM_BYTES_S = 4.0e12
LAUNCH_S = 12e-6

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "addmm_", "addbmm", "baddbmm_"}
VIEWS = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "slice", "select", "unsqueeze",
    "squeeze", "as_strided", "alias", "detach", "split", "split_with_sizes", "unbind", "view_as", "narrow",
    "_reshape_alias", "lift_fresh", "chunk", "movedim", "unflatten", "flatten", "diagonal", "real", "imag",
    "_to_copy_noop", "contiguous_noop", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
}
SYNCS = {"_local_scalar_dense", "nonzero", "item", "is_nonzero", "equal"}


def _flops(name: str, args: tuple, out: Any) -> int:
    def shape(t: Any) -> tuple[int, ...]:
        return tuple(t.shape)

    if name in ("mm",):
        (m, k), (_, n) = shape(args[0]), shape(args[1])
        return 2 * m * k * n
    if name in ("addmm", "addmm_"):
        (m, k), (_, n) = shape(args[1]), shape(args[2])
        return 2 * m * k * n
    if name in ("bmm", "baddbmm", "baddbmm_"):
        a, b = (args[0], args[1]) if name == "bmm" else (args[1], args[2])
        (bt, m, k), (_, _, n) = shape(a), shape(b)
        return 2 * bt * m * k * n
    return 0


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen ops (views excluded), matmul FLOPs and the bytes of every other op."""

    def __init__(self, skip_matmul: bool = False) -> None:
        super().__init__()
        self.skip_matmul = skip_matmul
        self.ops: Counter[str] = Counter()
        self.flops = 0
        self.bytes: Counter[str] = Counter()
        self.syncs = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in MATMULS:
            if self.skip_matmul:
                out = torch.zeros(_mm_shape(name, args), dtype=args[-1].dtype, device=args[-1].device)
                if name in ("addmm_", "baddbmm_"):
                    out = args[0]
                elif kwargs.get("out") is not None:
                    out = kwargs["out"]
            else:
                out = func(*args, **kwargs)
            self.flops += _flops(name, args, out)
            self.ops[name] += 1
            return out
        out = func(*args, **kwargs)
        if name in SYNCS:
            self.syncs += 1
        if name not in VIEWS:
            self.ops[name] += 1
            self.bytes[name] += _moved(name, args, kwargs, out)
        return out


INDEXED_WRITES = {"index_add_", "index_copy_", "index_put_", "index_add", "index_copy", "index_put"}


def _moved(name: str, args: tuple, kwargs: dict, out: Any) -> int:
    """Bytes an op reads and writes: its tensor inputs and outputs; an indexed write into a large
    tensor touches only the written rows (read, add, write: three times the source)."""
    if name.startswith("new_") or name in ("zeros_like", "ones_like", "full_like"):
        return sum(_nbytes(o) for o in tree_flatten(out)[0])  # the input only gives the dtype and device
    if name in ("index_select", "index", "gather"):  # reads only the rows it gathers
        return 2 * sum(_nbytes(o) for o in tree_flatten(out)[0])
    if name in INDEXED_WRITES:
        src = args[3] if name.startswith("index_") and not name.startswith("index_put") else args[2]
        return 3 * _nbytes(src)
    ins = sum(_nbytes(a) for a in tree_flatten((args, kwargs))[0])
    outs = sum(_nbytes(o) for o in tree_flatten(out)[0])
    return ins + outs


def _mm_shape(name: str, args: tuple) -> tuple[int, ...]:
    if name == "mm":
        return (args[0].shape[0], args[1].shape[1])
    if name in ("addmm", "addmm_"):
        return (args[1].shape[0], args[2].shape[1])
    if name == "bmm":
        return (args[0].shape[0], args[0].shape[1], args[1].shape[2])
    return (args[1].shape[0], args[1].shape[1], args[2].shape[2])  # baddbmm


def _count_fused(counter: OpCounter) -> tuple[Any, Any, Any]:
    """Stand-ins for the fused kernels (:mod:`depass_tl.replay.kernels`) on CPU: the eager split computes
    the numbers (not counted) and each kernel is counted as one launch and the bytes it moves (softmax:
    reads the keys twice, writes them once; max: reads once, writes once; both read the target; the
    TF32 split of ``tf32x3`` reads its input once and writes two parts)."""
    from depass_tl.replay.rules import Max, Softmax

    def run(name: str, split: Any, keys: torch.Tensor, target: torch.Tensor, passes: int) -> torch.Tensor:
        counter.paused = True
        try:
            split()
        finally:
            counter.paused = False
        counter.ops[name] += 1
        counter.bytes[name] += passes * _nbytes(keys) + _nbytes(target)
        return keys

    def softmax(keys: torch.Tensor, target: torch.Tensor, bias_rows: torch.Tensor, temperature: float) -> torch.Tensor:
        return run("fused_softmax_share", lambda: Softmax(temperature).eager_share(keys, target, bias_rows), keys,
                   target, 3)

    def max_(keys: torch.Tensor, target: torch.Tensor, bias_rows: torch.Tensor) -> torch.Tensor:
        return run("fused_max_share", lambda: Max().eager_share(keys, target, bias_rows), keys, target, 2)

    def split_tf32(x: torch.Tensor, consume: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from depass_tl.replay.matmul import Split, split_eager

        out: list[Split] = []
        run("fused_split_tf32", lambda: out.append(split_eager(x, consume=consume)), x, x[:0], 3)
        return out[0].hi, out[0].lo

    return softmax, max_, split_tf32


def profile(tokens: int, layers: int, precision: str, skip_matmul: bool, rule: str,
            kernels: str = "eager") -> dict[str, Any]:
    import depass_tl
    from depass_tl.capture import capture
    from depass_tl.components import tokens as token_spec
    from depass_tl.replay.engine import replay_components
    from depass_tl.replay.plan import DEFAULT_CHUNK_ROWS, MAX_CAUSAL_CHUNKS
    from depass_tl.toy import random_model

    model = random_model(n_layers=layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=1000,
                         act_fn="gelu_new", normalization_type="LN", n_ctx=max(tokens, 8), seed=0)
    toks = torch.randint(0, 1000, (1, tokens), generator=torch.Generator().manual_seed(0))
    run = capture(model, toks)
    init = token_spec().init(run, torch.float32)
    K = tokens + 1
    chunk = max(DEFAULT_CHUNK_ROWS["cuda"], -(-(K - 1) // MAX_CAUSAL_CHUNKS))  # what a CUDA replay would use
    counter = OpCounter(skip_matmul)
    from depass_tl.replay.rules import argmax as max_mod
    from depass_tl.replay.rules import softmax as soft_mod

    from depass_tl.precision import matmul_precision
    from depass_tl.replay import matmul

    saved = (soft_mod.use_fused, soft_mod.softmax_share_, max_mod.use_fused, max_mod.max_share_, matmul.use_fused,
             matmul.split_tf32_)

    def patch(c: OpCounter) -> None:
        soft_mod.softmax_share_, max_mod.max_share_, matmul.split_tf32_ = _count_fused(c)
        soft_mod.use_fused = max_mod.use_fused = matmul.use_fused = lambda keys, kernel: True

    whole = OpCounter(False)
    devices = matmul.DEVICE_TYPES
    matmul.DEVICE_TYPES = ("cuda", "cpu")  # tf32x3: split the products here as a CUDA replay would
    try:
        if kernels == "fused":
            patch(counter)
        with counter, torch.no_grad(), matmul_precision(precision):
            replay_components(run, init, mlp_rule=rule, keep=lambda name: False, chunk_size=chunk)
        if not skip_matmul:  # the whole call: capture, checks, replay, guard, cache (real numbers: the guard checks them)
            if kernels == "fused":
                patch(whole)
            with whole:
                depass_tl.run_with_depass(model, toks, mlp_rule=rule, names_filter=[], chunk_size=chunk,
                                          precision=precision)
    finally:
        (soft_mod.use_fused, soft_mod.softmax_share_, max_mod.use_fused, max_mod.max_share_, matmul.use_fused,
         matmul.split_tf32_) = saved
        matmul.DEVICE_TYPES = devices
    forward = OpCounter(True)
    with forward, torch.no_grad():
        model(toks, return_type=None)
    n_ops = sum(counter.ops.values())
    n_bytes = sum(counter.bytes.values())
    est = counter.flops / GEMM_FLOPS[precision] + n_bytes / HBM_BYTES_S
    return dict(tokens=tokens, layers=layers, kernels=kernels, chunk=chunk, ops=n_ops, ops_per_layer=n_ops / layers,
                call_ops=sum(whole.ops.values()) if not skip_matmul else None, call_syncs=whole.syncs,
                forward_ops=sum(forward.ops.values()),
                syncs=counter.syncs, gemm_tflop=counter.flops / 1e12, gb_moved=n_bytes / 1e9,
                est_gpu_s=est, est_launch_s=n_ops * LAUNCH_S, top_ops=counter.ops.most_common(),
                top_bytes=[(k, round(v / 1e9, 3)) for k, v in counter.bytes.most_common()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[128])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--precision", choices=sorted(GEMM_FLOPS), default="exact")
    ap.add_argument("--rule", default="softmax")
    ap.add_argument("--skip-matmul", action="store_true", help="count matmuls without computing them")
    ap.add_argument("--kernels", choices=["eager", "fused", "both"], default="both",
                    help="the softmax / max split as eager ops, as the fused kernel (counted analytically), or both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kinds = ["eager", "fused"] if args.kernels == "both" else [args.kernels]
    rows = [profile(n, args.layers, args.precision, args.skip_matmul, args.rule, k) for n in args.tokens for k in kinds]
    print(f"# replay profile, GPT-2-small shape, {args.layers} layers, {args.rule}, CUDA chunking, counted on CPU")
    print("| tokens | softmax split | chunk | replay ops | ops/layer | GEMM TFLOP | GB moved (non-GEMM) | est. H200 s "
          f"({args.precision}: GEMM + bytes) | est. launch s | whole call: ops (syncs) | one forward: ops |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        call = "-" if r["call_ops"] is None else f"{r['call_ops']} ({r['call_syncs']})"
        print(f"| {r['tokens']} | {r['kernels']} | {r['chunk']} | {r['ops']} | {r['ops_per_layer']:.0f} | "
              f"{r['gemm_tflop']:.3f} | {r['gb_moved']:.2f} | {r['est_gpu_s']:.3f} | {r['est_launch_s']:.3f} | {call} | "
              f"{r['forward_ops']} |")
    for r in rows:
        print(f"\ntokens {r['tokens']} ({r['kernels']}): most frequent ops {r['top_ops'][:12]}")
        print(f"tokens {r['tokens']} ({r['kernels']}): most bytes (GB) {r['top_bytes'][:8]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
