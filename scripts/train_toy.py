"""Retrain the toy models and overwrite the shipped weights in depass_tl/toy/weights/.

Usage:
    python scripts/train_toy.py induction|ioi|facts|all [--seed 0] [--steps N] [--threads 1]
        [--out DIR]

Runs on the CPU with fixed seeds and prints each model's evaluation numbers.
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

from depass_tl.toy.loading import WEIGHTS_DIR  # noqa: E402
from depass_tl.toy.train import MODEL_CONFIGS, save, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=[*MODEL_CONFIGS, "all"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="output directory")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    names = list(MODEL_CONFIGS) if args.model == "all" else [args.model]
    for name in names:
        start = time.perf_counter()
        result = train(name, seed=args.seed, steps=args.steps)
        weights, meta = save(result, name, args.out)
        seconds = time.perf_counter() - start
        print(f"{name}: trained in {seconds:.0f} s -> {weights} ({weights.stat().st_size / 1e6:.2f} MB), {meta}")
        print(json.dumps(result.metrics, indent=1))


if __name__ == "__main__":
    main()
