"""Scaling measurements for docs/scaling.md: component sharding (1 vs N ranks) and dataset throughput.

Run once per world size (gloo on CPU here; ``--backend nccl`` and one GPU per rank on a GPU machine)::

    python -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/bench_distributed.py
    python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/bench_distributed.py

It prints, on rank 0, one JSON line per measurement:

* ``replay``: ``replay(run, tokens(), distributed=True)`` of one random GPT-2-like model
  (``--layers/--d-model/--pos``), the median of ``--repeat`` calls after a warm-up, and the largest
  difference from the one-process replay of the same run (gathered cache, every stored hook);
* ``dataset``: ``run_dataset`` over ``--prompts`` IOI prompts on the ``ioi`` toy (token components,
  logit difference), prompts per second, the prompts split over the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="gloo")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--pos", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if args.backend == "nccl" else torch.device("cpu")

    import depass_tl
    from depass_tl import toy
    from depass_tl.capture import capture
    from depass_tl.toy import random_model

    model = random_model(n_layers=args.layers, d_model=args.d_model, n_heads=args.d_model // 64, d_head=64,
                         d_mlp=4 * args.d_model, d_vocab=1000, n_ctx=args.pos, act_fn="gelu_new", seed=0).to(dev)
    toks = torch.randint(0, 1000, (1, args.pos), generator=torch.Generator().manual_seed(0)).to(dev)
    run = capture(model, toks)
    ref = depass_tl.replay(run, names_filter=[])
    depass_tl.replay(run, names_filter=[], distributed=True)  # warm-up
    times = []
    for _ in range(args.repeat):
        dist.barrier()
        t0 = time.perf_counter()
        got = depass_tl.replay(run, names_filter=[], distributed=True)
        times.append(time.perf_counter() - t0)
    diff = max(float((got[h] - ref[h]).abs().max()) for h in ref)
    if rank == 0:
        print(json.dumps({"what": "replay", "world": world, "backend": args.backend, "layers": args.layers,
                          "d_model": args.d_model, "pos": args.pos, "components": len(ref.labels),
                          "seconds": round(statistics.median(times), 3), "max_abs_diff_vs_one_process": diff}))

    ioi, _ = toy.load("ioi")
    from depass_tl.toy.data import IOI_NAMES

    names = list(IOI_NAMES[:8])
    prompts, target, contrast = [], [], []
    for i in range(args.prompts):
        a, b = names[i % len(names)], names[(i * 3 + 1) % len(names)]
        if a == b:
            b = names[(i + 1) % len(names)]
        prompts.append(f"When {a} and {b} went to the store, {b} gave a drink to")
        target.append(" " + a)
        contrast.append(" " + b)
    out = [tempfile.mkdtemp() + "/attrs.parquet" if rank == 0 else None]
    dist.broadcast_object_list(out)
    dist.barrier()
    t0 = time.perf_counter()
    depass_tl.run_dataset(ioi, prompts, target=target, contrast=contrast, out=out[0], batch_size=16,
                          progress=False, distributed=True)
    dist.barrier()
    secs = time.perf_counter() - t0
    if rank == 0:
        rows = len(depass_tl.read_results(out[0]))
        print(json.dumps({"what": "dataset", "world": world, "prompts": rows, "seconds": round(secs, 2),
                          "prompts_per_second": round(rows / secs, 1)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
