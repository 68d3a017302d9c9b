"""DePass on one GPU: token-level replay time, peak memory and completeness, in both precision modes.

One command, at most about 5 minutes on one H200, prints the table of issue 18: for random GPT-2-small-
shaped models (float32 and bfloat16) and an 8-layer d_model-2048 Llama-shaped model at 128-2048 tokens,
token-level DePass (softmax rule, ``names_filter=[]``) with ``precision="exact"``, ``"tf32x3"`` and ``"fast"``: time,
``torch.cuda.max_memory_allocated`` during the call (above what was allocated before it) against
``max_memory``, one plain forward, a batched forward of C = N + 1 copies (run on ``--fwd-copies`` copies
and scaled, marked ``*``), the ratios, and the relative completeness at the logits. Then the issue's
targets, each PASS or FAIL. Rows are run most important first and skipped (listed) when the time
budget (``--budget-s``) would be exceeded. JSON goes to ``$OUT/bench_gpu.json`` when ``$OUT`` is set.

    python3 benchmarks/bench_gpu.py                 # CUDA, whole run guarded to --budget-s (default 240 s)
    python3 benchmarks/bench_gpu.py --profile       # kernel launches and top kernels at 128 and 1024 tokens
    python3 benchmarks/bench_gpu.py --cpu-smoke     # tiny sizes on CPU (checks the script; CI runs it)

The GPU machine has Python 3.12, torch 2.11 + CUDA 13, transformers 5.17 and triton 3.6 but no
transformer_lens and no internet. What TransformerLens 3.9 (``HookedTransformer``) needs at import time
and that image lacks travels as wheels in the ignored folder ``.whl/tl3/`` at the repository root (the
device run carries ``.whl``), downloaded here with (``scripts/gpu_wheels.sh`` runs exactly this)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
      -d .whl/tl3 transformer_lens==3.9.0 better_abc==0.0.3 datasets==5.2.0 dill==0.4.1 \\
      multiprocess==0.70.19 xxhash==4.1.0 beartype==0.23.1

TL 3.9's ``HookedTransformer`` is the model class (the same engine path as a TL 4 native Bridge, and
the class the earlier H200 profile measured). ``scripts/gpu_check.sh`` installs the wheels with
``pip install --no-index --no-deps --target`` and puts that folder on ``PYTHONPATH``; run alone, this
script unpacks the wheels matching the interpreter into ``$GPU_SITE`` (default ``depass_gpu_site`` in
the temp dir) itself (nothing is installed when ``transformer_lens`` already imports). If the
``datasets`` wheel does not import there, the stub in ``benchmarks/gpu_stubs`` stands in (TL only
imports names from it). The checkout provides ``depass_tl``. Models are built with
:func:`depass_tl.toy.random_model` (a ``HookedTransformer``, or a native Bridge on TL 4: what
``--cpu-smoke`` gets in CI).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
import warnings
import zipfile

T_START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def setup_paths() -> str:
    """The checkout first; then, if transformer_lens does not import, the unpacked wheels (and the stub)."""
    sys.path.insert(0, ROOT)
    try:
        import transformer_lens  # noqa: F401

        return "installed"
    except ImportError:
        pass
    site = os.environ.get("GPU_SITE", os.path.join(tempfile.gettempdir(), "depass_gpu_site"))
    tag, ptag = f"cp{sys.version_info[0]}{sys.version_info[1]}", f"py{sys.version_info[0]}{sys.version_info[1]}"
    os.makedirs(site, exist_ok=True)
    wheels = sorted(glob.glob(os.path.join(ROOT, os.environ.get("DEPASS_WHEELS", ".whl/tl3"), "*.whl")))
    if not wheels:
        sys.exit("transformer_lens is not installed and .whl/tl3/ holds no wheels: run scripts/gpu_wheels.sh here first.")
    for whl in wheels:
        name = os.path.basename(whl)
        py = name[:-4].split("-")[-3]
        if not (py in ("py3", "py2.py3", ptag) or tag in py.split(".")):
            continue  # another Python's binary wheel
        stamp = os.path.join(site, ".unpacked-" + name)
        if not os.path.exists(stamp):
            with zipfile.ZipFile(whl) as z:
                z.extractall(site)
            open(stamp, "w").close()
    sys.path.insert(1, site)
    try:
        import datasets  # noqa: F401

        return f"wheels in {site}"
    except Exception as e:  # noqa: BLE001  (e.g. huggingface_hub too old for datasets 5.2)
        for k in [k for k in sys.modules if k == "datasets" or k.startswith("datasets.")]:
            del sys.modules[k]
        sys.path.insert(1, os.path.join(HERE, "gpu_stubs"))
        return f"wheels in {site}, datasets stub ({type(e).__name__}: {str(e)[:60]})"


KIT = setup_paths()

import torch  # noqa: E402
import transformer_lens  # noqa: E402
import transformers  # noqa: E402

import depass_tl  # noqa: E402
from depass_tl.memory import PeakMemory, parse_memory  # noqa: E402
from depass_tl.precision import completeness_tolerance  # noqa: E402
from depass_tl.toy import random_model  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU")
ap.add_argument("--profile", action="store_true", help="torch.profiler at --profile-lengths instead of the table")
ap.add_argument("--profile-lengths", type=int, nargs="+", default=[128, 1024])
ap.add_argument("--budget-s", type=float, default=240.0, help="start no new row after this many seconds")
ap.add_argument("--memory-budget", default="64GB", help="max_memory of the memory row (Llama shape, longest input)")
ap.add_argument("--fwd-copies", type=int, default=64, help="copies actually run for the batched forward")
ap.add_argument("--fwd-batch", type=int, default=16, help="copies per forward call")
ap.add_argument("--reps", type=int, default=3, help="repetitions (the fastest counts) when time allows")
ap.add_argument("--only", nargs="*", default=None, help="run only rows whose label contains one of these")
args = ap.parse_args()

DEV = "cpu" if args.cpu_smoke else "cuda"
if DEV == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device; use --cpu-smoke")
torch.set_grad_enabled(False)
if DEV == "cpu":
    torch.set_num_threads(1)
HW = torch.cuda.get_device_name() if DEV == "cuda" else "CPU (1 thread)"
print(f"# {HW}; torch {torch.__version__}, transformers {transformers.__version__}, transformer_lens "
      f"{getattr(transformer_lens, '__version__', '?')} ({KIT}); depass_tl from {os.path.dirname(depass_tl.__file__)}; "
      f"global float32 matmul precision: {torch.get_float32_matmul_precision()}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - T_START


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def measure(fn, peak_on_cpu: bool = False):  # type: ignore[no-untyped-def]
    """(seconds, peak bytes allocated during the call above what was allocated before, result).

    On CUDA ``torch.cuda.max_memory_allocated``; on CPU (``peak_on_cpu``) :class:`depass_tl.memory.PeakMemory`."""
    sync()
    before = 0
    if DEV == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    mem = PeakMemory() if DEV == "cpu" and peak_on_cpu else None
    t = time.perf_counter()
    if mem is not None:
        with mem:
            out = fn()
    else:
        out = fn()
    sync()
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() - before if DEV == "cuda" else (mem.peak if mem else float("nan"))
    return dt, peak, out


SMOKE = args.cpu_smoke
SHAPES = {  # name: (config, model dtype); smoke: tiny versions of the same families
    "gpt2": dict(n_layers=2 if SMOKE else 12, d_model=64 if SMOKE else 768, n_heads=4 if SMOKE else 12,
                 d_head=16 if SMOKE else 64, d_mlp=256 if SMOKE else 3072, d_vocab=500 if SMOKE else 50257,
                 act_fn="gelu_new", normalization_type="LN"),
    "llama8": dict(n_layers=2 if SMOKE else 8, d_model=64 if SMOKE else 2048, n_heads=4 if SMOKE else 16,
                   d_head=16 if SMOKE else 128, d_mlp=172 if SMOKE else 5632, d_vocab=500 if SMOKE else 32000,
                   act_fn="silu", normalization_type="RMS", gated_mlp=True, positional_embedding_type="rotary",
                   rotary_dim=16 if SMOKE else 128, final_rms=True),
}
L = (lambda n: {128: 8, 512: 16, 1024: 24, 2048: 32}[n]) if SMOKE else (lambda n: n)
MEM_BUDGET = "64MB" if SMOKE else args.memory_budget
# (label, shape, model dtype, tokens, precision, max_memory, global TF32, DEPASS_TL_KERNELS: "eager" compares
# the fused softmax kernel with the eager split): the most important rows first
ROWS_PLAN = [  # grouped by model (each is built once), the most important rows of each first
    ("gpt2 fp32", "gpt2", torch.float32, 1024, "exact", None, False, "auto"),
    ("gpt2 fp32", "gpt2", torch.float32, 1024, "fast", None, False, "auto"),
    ("gpt2 fp32", "gpt2", torch.float32, 1024, "tf32x3", None, False, "auto"),
    ("gpt2 fp32", "gpt2", torch.float32, 128, "exact", None, False, "auto"),
    ("gpt2 fp32", "gpt2", torch.float32, 128, "fast", None, False, "auto"),
    ("gpt2 fp32 eager split", "gpt2", torch.float32, 1024, "exact", None, False, "eager"),
    ("gpt2 fp32 eager split", "gpt2", torch.float32, 1024, "fast", None, False, "eager"),
    ("gpt2 fp32", "gpt2", torch.float32, 512, "exact", None, False, "auto"),
    ("gpt2 fp32", "gpt2", torch.float32, 512, "fast", None, False, "auto"),
    ("gpt2 fp32 +TF32 global", "gpt2", torch.float32, 1024, "exact", None, True, "auto"),
    ("llama8 fp32", "llama8", torch.float32, 2048, "exact", MEM_BUDGET, False, "auto"),
    ("llama8 fp32", "llama8", torch.float32, 2048, "tf32x3", MEM_BUDGET, False, "auto"),
    ("llama8 fp32", "llama8", torch.float32, 2048, "fast", None, False, "auto"),
    ("llama8 fp32", "llama8", torch.float32, 1024, "exact", None, False, "auto"),
    ("llama8 fp32", "llama8", torch.float32, 1024, "fast", None, False, "auto"),
    ("gpt2 bf16", "gpt2", torch.bfloat16, 1024, "exact", None, False, "auto"),
    ("gpt2 bf16", "gpt2", torch.bfloat16, 1024, "fast", None, False, "auto"),
    ("gpt2 fp32", "gpt2", torch.float32, 2048, "exact", None, False, "auto"),
    ("gpt2 fp32", "gpt2", torch.float32, 2048, "fast", None, False, "auto"),
]
# rough H200 seconds of a row's first replay + batched forward, to skip rows that cannot finish in time
FIRST_GUESS = {("gpt2", 128): 1, ("gpt2", 512): 3, ("gpt2", 1024): 6, ("gpt2", 2048): 25,
               ("llama8", 1024): 15, ("llama8", 2048): 60}
TARGETS = [  # (label, tokens, precision, what, limit) from issue 18
    ("gpt2 fp32", 1024, "exact", "depass_s", 1.6),
    ("llama8 fp32", 2048, "exact", "depass_s", 20.0),
    ("gpt2 fp32", 1024, "fast", "depass_s", 0.4),
    ("gpt2 fp32", 1024, "fast", "rel_completeness", 1e-3),
    ("gpt2 fp32", 128, "exact", "depass_s", 0.06),
    ("gpt2 fp32", 128, "fast", "depass_s", 0.06),
    ("llama8 fp32", 2048, "exact", "peak_over_budget", 1.0),
    # float32 accuracy on the tensor cores (precision="tf32x3"): the route to the exact-time targets
    ("gpt2 fp32", 1024, "tf32x3", "depass_s", 1.6),
    ("llama8 fp32", 2048, "tf32x3", "depass_s", 20.0),
    ("gpt2 fp32", 1024, "tf32x3", "rel_completeness", 1e-4),
    ("llama8 fp32", 2048, "tf32x3", "peak_over_budget", 1.0),
]

_models: dict[tuple[str, torch.dtype, int], object] = {}


def model_for(shape: str, dtype: torch.dtype, n_ctx: int):  # type: ignore[no-untyped-def]
    key = (shape, dtype, n_ctx)
    if key not in _models:
        _models.clear()
        if DEV == "cuda":
            torch.cuda.empty_cache()
        _models[key] = random_model(**SHAPES[shape], n_ctx=n_ctx, seed=0, device=DEV, dtype=dtype)
        toks = torch.randint(0, SHAPES[shape]["d_vocab"], (1, 8), device=DEV)
        depass_tl.run_with_depass(_models[key], toks, names_filter=[])  # warm-up (cuBLAS, allocator)
    return _models[key]


def batched_fwd(model, toks: torch.Tensor, C: int) -> int:
    copies = min(C, args.fwd_copies)
    done = 0
    while done < copies:
        k = min(args.fwd_batch, copies - done)
        model(toks.expand(k, -1).contiguous(), return_type=None)
        done += k
    return copies


ROWS: list[dict] = []
SKIPS: list[str] = []
_prev_cost: dict[str, tuple[int, float]] = {}


def run_row(label: str, shape: str, dtype: torch.dtype, N: int, precision: str, budget: str | None, tf32: bool,
            kernels: str = "auto") -> None:
    n_ctx = max(n for _, s, _, n, *_ in ROWS_PLAN if s == shape) if not SMOKE else 64
    model = model_for(shape, dtype, n_ctx)
    toks = torch.randint(0, model.cfg.d_vocab, (1, L(N)), generator=torch.Generator().manual_seed(0)).to(DEV)
    n_tok = toks.shape[1]
    kw = dict(names_filter=[], precision=precision)
    if budget is not None:
        kw["max_memory"] = budget
    old = torch.backends.cuda.matmul.fp32_precision if hasattr(torch.backends.cuda.matmul, "fp32_precision") else None
    if tf32 and old is not None:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    old_kernels = os.environ.get("DEPASS_TL_KERNELS")
    os.environ["DEPASS_TL_KERNELS"] = kernels
    try:
        t1, _, _ = measure(lambda: model(toks, return_type=None))
        t1 = min(measure(lambda: model(toks, return_type=None))[0] for _ in range(3))
        times, peak, out = [], 0.0, None
        for r in range(args.reps):
            if r and elapsed() + 2 * times[0] > args.budget_s:
                break
            dt, pk, out = measure(lambda: depass_tl.run_with_depass(model, toks, **kw), peak_on_cpu=r == 0)
            times.append(dt)
            peak = max(peak, pk) if pk == pk else peak
            if dt > 5:  # long rows: one repetition is enough
                break
        assert out is not None
        _, dc = out
        C = len(dc.labels)
        err, prec_used = dc.completeness.errors.get("logits", float("nan")), dc.precision
        del out, dc
        t_fw, _, copies = measure(lambda: batched_fwd(model, toks, C))
        t_fwC = t_fw * C / copies
    finally:
        if tf32 and old is not None:
            torch.backends.cuda.matmul.fp32_precision = old
        if old_kernels is None:
            os.environ.pop("DEPASS_TL_KERNELS", None)
        else:
            os.environ["DEPASS_TL_KERNELS"] = old_kernels
    t_dp = min(times)
    budget_b = parse_memory(budget) if budget else None
    row = dict(label=label, kernels=kernels, tokens=n_tok, precision=precision, requested_precision=prec_used, C=C, depass_s=t_dp,
               reps=len(times), peak_GB=peak / 1e9, budget_GB=None if budget_b is None else budget_b / 1e9,
               peak_over_budget=None if budget_b is None else peak / budget_b, fwd1_ms=t1 * 1e3, fwdC_s=t_fwC,
               fwdC_scaled=copies < C, dp_over_fwd1=t_dp / t1, dp_over_fwdC=t_dp / t_fwC, rel_completeness=err,
               tolerance=completeness_tolerance(torch.float32, precision, model_dtype=dtype))
    ROWS.append(row)
    _prev_cost[shape] = (N, t_dp + t_fwC)
    mark = "*" if copies < C else ""
    bud = "" if budget_b is None else f" / {budget_b / 1e9:.3g}GB"
    print(f"  {label:<22} {precision:<6} N={n_tok:<5} depass {t_dp:8.3f}s (x{len(times)}) peak {peak / 1e9:6.3g}GB{bud} | "
          f"fwd1 {t1 * 1e3:7.2f}ms fwd(C){mark} {t_fwC:7.3f}s | /fwd1 {t_dp / t1:8.1f} /fwd(C) {t_dp / t_fwC:6.3f} | "
          f"rel.err {err:.1e} [t={elapsed():.0f}s]", flush=True)


def _num(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def table() -> None:
    print(f"\n# DePass token-level (softmax, names_filter=[]) on {HW}; total {elapsed():.0f}s")
    hdr = ("model", "precision", "tokens", "C", "time s", "peak GB", "budget GB", "fwd1 ms", "fwd(C) s", "/fwd1",
           "/fwd(C)", "rel. completeness")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in ROWS:
        print(f"| {r['label']} | {r['precision']} | {r['tokens']} | {r['C']} | {r['depass_s']:.3f} | {r['peak_GB']:.3g} | "
              f"{_num(r['budget_GB'], '.3g')} | {r['fwd1_ms']:.2f} | "
              f"{r['fwdC_s']:.3f}{'*' if r['fwdC_scaled'] else ''} | {r['dp_over_fwd1']:.1f} | {r['dp_over_fwdC']:.3f} | "
              f"{r['rel_completeness']:.1e} |")
    print(f"(* batched forward run on {args.fwd_copies} copies and scaled to C; peak = torch.cuda.max_memory_allocated "
          "during the call minus what was allocated before it; on CPU PeakMemory)")


def targets() -> list[dict]:
    out = []
    for label, n, prec, what, limit in TARGETS:
        hit = [r for r in ROWS if r["label"] == label and r["tokens"] == L(n) and r["precision"] == prec]
        val = hit[0][what] if hit else None
        ok = None if val is None or SMOKE else val <= limit
        out.append(dict(label=label, tokens=n, precision=prec, what=what, limit=limit, value=val, ok=ok))
        status = "n/a (smoke)" if SMOKE else ("not run" if val is None else ("PASS" if ok else "FAIL"))
        shown = "-" if val is None else f"{val:.3g}"
        print(f"  target {label} N={n} {prec}: {what} {shown} <= {limit}: {status}")
    return out


def profile() -> None:
    from torch.profiler import ProfilerActivity, profile as prof_ctx

    model = model_for("gpt2", torch.float32, max(L(n) for n in args.profile_lengths) + 8)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
    for N in args.profile_lengths:
        toks = torch.randint(0, model.cfg.d_vocab, (1, L(N)), device=DEV)
        for precision in ("exact", "tf32x3", "fast"):
            wall = min(measure(lambda: depass_tl.run_with_depass(model, toks, names_filter=[], precision=precision))[0]
                       for _ in range(2))
            with prof_ctx(activities=acts) as prof:
                depass_tl.run_with_depass(model, toks, names_filter=[], precision=precision)
                sync()
            ev = prof.key_averages()
            gpu = sum(getattr(e, "self_device_time_total", 0) for e in ev) / 1e6
            cpu = sum(e.self_cpu_time_total for e in ev) / 1e6
            launches = sum(e.count for e in ev if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
            print(f"\n=== N={L(N)} {precision}: wall {wall:.3f}s, GPU busy {gpu:.3f}s ({100 * gpu / max(wall, 1e-9):.0f}%), "
                  f"CPU (profiled) {cpu:.3f}s, kernel launches {launches}")
            key = "self_device_time_total" if DEV == "cuda" else "self_cpu_time_total"
            print(ev.table(sort_by=key, row_limit=14, max_name_column_width=60))


def main() -> None:
    if args.profile:
        profile()
        return
    for label, shape, dtype, N, precision, budget, tf32, kernels in ROWS_PLAN:
        name = f"{label} N={N} {precision}"
        if args.only and not any(o in name for o in args.only):
            continue
        prev = _prev_cost.get(shape)
        est = (0.0 if SMOKE else FIRST_GUESS[(shape, N)]) if prev is None else prev[1] * (N / prev[0]) ** 2 * 1.3
        if elapsed() + est > args.budget_s:
            SKIPS.append(f"{name} (time: est {est:.0f}s)")
            continue
        try:
            run_row(label, shape, dtype, N, precision, budget, tf32, kernels)
        except Exception as e:  # noqa: BLE001  (one row failing must not lose the others)
            SKIPS.append(f"{name} ({type(e).__name__}: {str(e)[:160]})")
            print(f"  {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            if DEV == "cuda":
                torch.cuda.empty_cache()
    table()
    result = targets()
    bad = [r for r in ROWS if not r["rel_completeness"] <= r["tolerance"]]
    from depass_tl.replay import kernels as _kernels

    status = _kernels.kernel_status()
    fused = ("fell back to the eager split: " + status["fallback"]) if status["fallback"] else (
        "ran: " + ", ".join(status["ran"]) if status["ran"] else "not used")
    print(f"fused kernels (depass_tl/replay/kernels.py): {fused}")
    print("skipped: " + ("; ".join(SKIPS) if SKIPS else "none"))
    print("completeness within tolerance: " + ("OK" if not bad else "FAIL " + ", ".join(
        f"{r['label']} N={r['tokens']} {r['precision']}" for r in bad)))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_gpu.json"), "w") as f:
            json.dump(dict(device=HW, torch=torch.__version__, kit=KIT, rows=ROWS, targets=result, skipped=SKIPS,
                           fused_kernel=fused),
                      f, indent=1)
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
