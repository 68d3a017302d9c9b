"""DePass performance: token-level replay vs a batched forward, reverse mode, memory budgets.

For a GPT-2-small-shaped and a Llama-shaped random model (no downloads) and each prompt length it
prints, all measured in the same process (compare ratios; absolute times depend on the machine):

* ``replay``: token-level ``replay`` (``mlp_rule``, default softmax; only ``unembed.hook_in`` stored)
  after one ``capture``, and its peak tensor memory (:class:`depass_tl.memory.PeakMemory`: every byte
  the replay allocates, allocator-independent);
* ``fwd``: a plain forward over a batch of C copies of the prompt (C = number of components), in
  sub-batches of ``--fwd-batch``; with ``--fwd-copies k`` only k copies are run and the time is
  scaled by C/k (marked ``*``);
* ``rev`` / ``fwd1``: a scalar target (one logit) under the ratio rule, by reverse mode and by the
  forward replay projected on the target;
* ``chunked``: the replay under ``--budget`` (``max_memory``), its peak and its time relative to the
  unchunked replay.

    python benchmarks/bench_performance.py --threads 2 --model gpt2 --lengths 32 64 128
    python benchmarks/bench_performance.py --model gpt2 --layers 2 --lengths 512 --budget 4GB --skip-fwd
    python benchmarks/bench_performance.py --device cuda ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import depass_tl  # noqa: E402
from depass_tl.memory import PeakMemory  # noqa: E402
from depass_tl.reverse import attribute_run  # noqa: E402
from depass_tl.toy import random_model  # noqa: E402


def build(name: str, layers: int | None, device: str) -> object:
    """A random model of the shape (a HookedTransformer on TL <= 3, TL's native TransformerBridge on TL 4)."""
    if name == "gpt2":
        cfg = dict(
            n_layers=layers or 12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
            act_fn="gelu_new", normalization_type="LN", seed=0, device=device,
        )
    else:  # the 4-layer random LLaMA of reference/depass.md §5 (official code: 15.4 s at 128 tokens, 2 threads)
        cfg = dict(
            n_layers=layers or 4, d_model=512, n_heads=8, d_head=64, d_mlp=1376, d_vocab=32000, n_ctx=1024,
            act_fn="silu", normalization_type="RMS", gated_mlp=True, positional_embedding_type="rotary",
            rotary_dim=64, final_rms=True, seed=0, device=device,
        )
    return random_model(**cfg)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, peak: bool = False) -> tuple[float, float, object]:
    sync(device)
    t0 = time.perf_counter()
    if peak:
        with PeakMemory() as mem:
            out = fn()
    else:
        out, mem = fn(), None
    sync(device)
    return time.perf_counter() - t0, (mem.peak / 1e9 if mem else float("nan")), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", choices=["gpt2", "llama"], default="gpt2")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--rule", default="softmax")
    ap.add_argument("--budget", default="4GB")
    ap.add_argument("--fwd-batch", type=int, default=16)
    ap.add_argument("--fwd-copies", type=int, default=None)
    ap.add_argument("--skip-fwd", action="store_true")
    ap.add_argument("--skip-unchunked", action="store_true")
    ap.add_argument("--skip-scalar", action="store_true", help="skip the reverse/forward scalar-target timings")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.model, args.layers, args.device)
    hw = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"# {args.model}-shaped random model, {model.cfg.n_layers} layers, float32, {hw}, mlp_rule={args.rule}, "
          f"budget={args.budget}, torch {torch.__version__}")
    cols = ("tokens", "C", "capture", "replay", "peakGB", "fwd(C)", "replay/fwd", "rev", "fwd1", "fwd1/rev",
            "chunked", "chkPeakGB", "chk/unchk")
    print(" ".join(f"{c:>10}" for c in cols), flush=True)
    for n in args.lengths:
        toks = torch.randint(0, model.cfg.d_vocab, (1, n), generator=torch.Generator().manual_seed(0)).to(args.device)
        C = n + 1
        with torch.no_grad():
            t_cap, _, run = timed(lambda: depass_tl.capture(model, toks), args.device)
            t_dp = p_dp = float("nan")
            if not args.skip_unchunked:
                t_dp, p_dp, _ = timed(lambda: depass_tl.replay(run, mlp_rule=args.rule, names_filter=[]), args.device, True)
            t_fw, mark = float("nan"), " "
            if not args.skip_fwd:
                copies = C if args.fwd_copies is None else min(C, args.fwd_copies)
                t0 = time.perf_counter()
                done = 0
                while done < copies:
                    k = min(args.fwd_batch, copies - done)
                    model(toks.repeat(k, 1))
                    done += k
                sync(args.device)
                t_fw = (time.perf_counter() - t0) * C / copies
                mark = "*" if copies < C else " "
            t_rev = t_f1 = err = float("nan")
            if not args.skip_scalar:
                t_rev, _, rev = timed(lambda: attribute_run(run, 5, mode="reverse"), args.device)
                t_f1, _, f1 = timed(lambda: attribute_run(run, 5, mode="forward"), args.device)
                err = float((rev.values - f1.values).abs().max())
            t_ch, p_ch, _ = timed(
                lambda: depass_tl.replay(run, mlp_rule=args.rule, names_filter=[], max_memory=args.budget), args.device, True
            )
        row = (n, C, f"{t_cap:.2f}", f"{t_dp:.2f}", f"{p_dp:.2f}", f"{t_fw:.2f}{mark}", f"{t_dp / t_fw:.2f}",
               f"{t_rev:.2f}", f"{t_f1:.2f}", f"{t_f1 / t_rev:.1f}", f"{t_ch:.2f}", f"{p_ch:.2f}", f"{t_ch / t_dp:.2f}")
        print(" ".join(f"{c:>10}" for c in row) + f"   |rev-fwd|={err:.1e}", flush=True)


if __name__ == "__main__":
    main()
