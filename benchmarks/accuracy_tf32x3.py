"""How accurate ``precision="tf32x3"`` is, on any machine: the GPU's TF32 tensor cores emulated on CPU.

A CPU has no TF32, so the products a CUDA replay would split are split here and each part product is
emulated as a tensor core computes it (operands truncated to TF32, products accumulated in float32:
``tests/tf32_emulation.py``). Prints, for a random GPT-2-small-shaped model, the relative
error of the components at ``unembed.hook_in`` against a float64 replay and the relative completeness
error, for ``"exact"`` (IEEE float32), ``"tf32x3"`` and one TF32 product per product (what ``"fast"``
computes on a GPU).

    python benchmarks/accuracy_tf32x3.py --tokens 128          # 12 layers, d_model 768 (about 2 minutes)
    python benchmarks/accuracy_tf32x3.py --tiny                # 2 layers, d_model 64 (seconds; CI)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--tiny", action="store_true", help="2 layers, d_model 64, 24 tokens")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import depass_tl
    from depass_tl.capture import capture
    from depass_tl.precision import matmul_precision
    from depass_tl.replay import matmul
    from depass_tl.replay.engine import replay_components
    from depass_tl.toy import random_model
    from tests.tf32_emulation import EmulatedTF32

    n = 24 if args.tiny else args.tokens
    shape = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256) if args.tiny else \
        dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072)
    model = random_model(**shape, d_vocab=1000, act_fn="gelu_new", normalization_type="LN", n_ctx=n + 8, seed=0)
    toks = torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(0))
    run = capture(model, toks)
    keep = lambda name: name == "unembed.hook_in"  # noqa: E731
    ref = replay_components(run, depass_tl.tokens().init(run, torch.float64), dtype=torch.float64, keep=keep)
    want, clean = ref["unembed.hook_in"], run.get("unembed.hook_in").double()
    init = depass_tl.tokens().init(run, torch.float32)

    def errors(precision: str) -> tuple[float, float]:
        with matmul_precision(precision):
            got = replay_components(run, init, keep=keep)["unembed.hook_in"].double()
        return (((got - want).abs().max() / want.abs().max()).item(),
                ((got.sum(0) - clean).abs().max() / clean.abs().max()).item())

    rows = {"exact (IEEE float32)": errors("exact")}
    saved = matmul.DEVICE_TYPES, matmul._mul, matmul._addmul_, matmul.split
    emu = EmulatedTF32()
    try:
        matmul.DEVICE_TYPES, matmul._mul, matmul._addmul_ = ("cuda", "cpu"), emu.mul, emu.addmul_
        rows["tf32x3 (emulated TF32)"] = errors("tf32x3")
        assert emu.calls > 0, "no product was split"
        split = matmul.split  # the low parts dropped: one TF32 product per product, as "fast" on a GPU

        def hi_only(t: torch.Tensor, *, consume: bool = False) -> matmul.Split:
            s = split(t, consume=consume)
            return matmul.Split(s.hi, torch.zeros_like(s.lo))

        matmul.split = hi_only
        rows["one TF32 product (emulated; fast)"] = errors("tf32x3")
    finally:
        matmul.DEVICE_TYPES, matmul._mul, matmul._addmul_, matmul.split = saved
    print(f"# {shape['n_layers']} layers, d_model {shape['d_model']}, {n} tokens, token components, softmax rule")
    print("| products | components vs float64 (rel.) | completeness (rel.) |")
    print("|---|---|---|")
    for name, (err, comp) in rows.items():
        print(f"| {name} | {err:.1e} | {comp:.1e} |")


if __name__ == "__main__":
    main()
