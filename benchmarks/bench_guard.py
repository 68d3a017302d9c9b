"""The completeness guard's cost next to the replay it checks, and the errors it measures.

For a GPT-2-small-shaped random model (no download; 12 layers, d_model 768, d_vocab 50257) and each
prompt length, after one ``capture``: the token-level forward replay (``replay_components``), then the
guard on its output (:func:`depass_tl.api._guard`: a sum over components at every stored hook and the
logits over the whole vocabulary), both with every hook stored and with only ``unembed.hook_in``
stored (``names_filter=[]``). Prints the times, the guard's share of the replay, and the largest
relative completeness error the guard measured (what the tolerance in :mod:`depass_tl.guard` must
stay well above).

    python benchmarks/bench_guard.py --threads 1 --lengths 128
    python benchmarks/bench_guard.py --model llama --lengths 64 128 --rules softmax ratio max
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
from depass_tl.api import _guard  # noqa: E402
from depass_tl.replay.engine import replay_components  # noqa: E402
from depass_tl.replay.state import FINAL_HOOK  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_performance import build, sync  # noqa: E402


def _time(fn, device: str) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", choices=["gpt2", "llama"], default="gpt2")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128])
    ap.add_argument("--rules", nargs="+", default=["softmax"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.model, args.layers, args.device).to(getattr(torch, args.dtype))
    print(f"{args.model} shape, {model.cfg.n_layers} layers, {args.dtype}, {args.threads} thread(s), {args.device}")
    print(f"{'tokens':>6} {'rule':>8} {'stored':>7} {'replay s':>9} {'guard s':>8} {'guard %':>8} {'worst rel':>10}  at")
    gen = torch.Generator().manual_seed(0)
    for n in args.lengths:
        tokens = torch.randint(0, model.cfg.d_vocab, (1, n), generator=gen).to(args.device)
        with torch.no_grad():
            run = depass_tl.capture(model, tokens)
        init = depass_tl.tokens().init(run, torch.float32 if args.dtype != "float64" else torch.float64)
        dtype = init.groups[0].components.dtype
        for rule in args.rules:
            for label, keep in (("all", lambda name: True), ("final", lambda name: name == FINAL_HOOK)):
                with torch.no_grad():
                    t_replay, acts = _time(lambda: replay_components(run, init, mlp_rule=rule, dtype=dtype, keep=keep),
                                           args.device)
                    clean = {name: run.get(name) for name in acts}
                    t_guard, done = _time(lambda: _guard(run, acts, clean, init.group_size, dtype), args.device)
                hook, worst = done.worst
                print(f"{n:>6} {rule:>8} {label:>7} {t_replay:>9.2f} {t_guard:>8.3f} {100 * t_guard / t_replay:>7.2f}% "
                      f"{worst:>10.2e}  {hook}")
                del acts, clean


if __name__ == "__main__":
    main()
