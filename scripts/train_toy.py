"""Retrain the toy models and overwrite the shipped model folders in depass_tl/toy/weights/.

Usage:
    python scripts/train_toy.py induction|ioi|facts|all [--seed 0] [--steps N] [--threads 1]
        [--out DIR]
    python scripts/train_toy.py --from-v1 OLD/ioi.json [--out DIR]

Runs on the CPU with fixed seeds (needs TransformerLens < 4, which has HookedTransformer) and prints
each model's evaluation numbers. Each model is written with depass_tl.toy.save: DIR/<name>/ holds
model.safetensors, toy.json and the tokenizer files. ``--from-v1`` rewrites a model saved in the
old side-by-side format (``name.json`` + ``name.safetensors``) as such a folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Run from a checkout without installing: put the repository root first on the import path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from depass_tl.toy.checkpoint import convert_v1  # noqa: E402
from depass_tl.toy.loading import WEIGHTS_DIR  # noqa: E402
from depass_tl.toy.train import MODEL_CONFIGS, save_trained, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", choices=[*MODEL_CONFIGS, "all"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="output directory (one folder per model)")
    parser.add_argument("--from-v1", default=None, metavar="JSON", help="convert an old-format model instead")
    args = parser.parse_args()
    if args.from_v1 is not None:
        name = Path(args.from_v1).stem
        print("wrote", convert_v1(args.from_v1, Path(args.out) / name))
        return
    if args.model is None:
        parser.error("name a model to train (or pass --from-v1)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    names = list(MODEL_CONFIGS) if args.model == "all" else [args.model]
    for name in names:
        start = time.perf_counter()
        result = train(name, seed=args.seed, steps=args.steps)
        out = save_trained(result, name, args.out)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
        print(f"{name}: trained in {seconds:.0f} s -> {out} ({size:.2f} MB)")
        print(json.dumps(result.metrics, indent=1))


if __name__ == "__main__":
    main()
