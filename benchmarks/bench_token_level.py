"""Token-level DePass vs a plain forward over a batch of (number of components) copies of the prompt.

Prints a table for a GPT-2-small-shaped random model (12 layers, d_model 768, 12 heads, d_mlp 3072,
vocab 50257) at 64 and 128 tokens: wall time (median of --repeats) and peak RSS growth of
``run_with_depass`` (only ``unembed.hook_in`` stored, as when one wants logit attributions) and of
``model(tokens.repeat(C, 1))``, and their ratio. Ratios are measured in the same run; absolute times
depend on the machine.

    python benchmarks/bench_token_level.py [--threads 2] [--repeats 3] [--lengths 64 128] [--rule softmax]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import threading
import time
import warnings

import psutil
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import depass_tl  # noqa: E402
from depass_tl.toy import random_model  # noqa: E402


class PeakRSS:
    """Samples the process RSS every 5 ms; ``peak - start`` is the extra memory a call used."""

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_gb(self) -> float:
        return (self.peak - self.start) / 2**30


def measure(fn, repeats: int) -> tuple[float, float]:
    times, peaks = [], []
    for _ in range(repeats):
        with PeakRSS() as mem, torch.no_grad():
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        del out
        peaks.append(mem.extra_gb)
    return statistics.median(times), max(peaks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--rule", default="softmax")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = random_model(  # a HookedTransformer on TL <= 3, TL's native TransformerBridge on TL 4
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
        act_fn="gelu_new", normalization_type="LN", seed=0,
    )
    cfg = model.cfg
    print(f"GPT-2-small-shaped random model, float32, {args.threads} threads, mlp_rule={args.rule}")
    print(f"{'tokens':>6} {'components':>10} {'depass s':>9} {'depass GB':>9} {'fwd s':>7} {'fwd GB':>7} {'time ratio':>10}")
    for n in args.lengths:
        toks = torch.randint(0, cfg.d_vocab, (1, n), generator=torch.Generator().manual_seed(0))
        C = n + 1
        t_dp, m_dp = measure(
            lambda: depass_tl.run_with_depass(model, toks, mlp_rule=args.rule, names_filter=[]), args.repeats
        )
        batch = toks.repeat(C, 1)
        t_fw, m_fw = measure(lambda: model(batch), args.repeats)
        print(f"{n:>6} {C:>10} {t_dp:>9.2f} {m_dp:>9.2f} {t_fw:>7.2f} {m_fw:>7.2f} {t_dp / t_fw:>10.2f}")


if __name__ == "__main__":
    main()
