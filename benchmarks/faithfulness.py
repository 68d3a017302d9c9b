"""Faithfulness of DePass and the baselines on every shipped toy model; writes the README / docs tables.

One seeded run (``depass_tl.evaluate.toy_benchmark.run_benchmark``): for each toy task
(``depass_tl.evaluate.toy_tasks``) and each prompt, every token attribution method (DePass with every
MLP rule of the rule registry, captum's integrated gradients / gradient x input / occlusion, attention
rollout, last-layer attention, random) is scored by Disrupt/Recover-top-k, deletion/insertion AUC,
AOPC and ERASER comprehensiveness/sufficiency; every head ranking (DePass, exact single-head ablation,
attribution patching, TransformerLens activation patching, captum's layer integrated gradients,
random) by the logit difference after zero / mean / resample ablation of its top 1, 2 and 4 heads.
Same prompts, targets, masks and ablations for every method; each method's forward / backward passes,
replay streams and wall time are reported next to its scores.

    python benchmarks/faithfulness.py --write      # run (~10 min on one core), write CSV + tables
    python benchmarks/faithfulness.py --render     # re-render the tables from the committed CSV only
    python benchmarks/faithfulness.py --smoke      # 2 prompts per toy, prints, writes nothing (CI)

``--write`` stores the per-prompt rows in ``docs/faithfulness/`` and replaces the text
between the ``faithfulness`` markers in ``docs/faithfulness.md`` and ``README.md``.
tests/evaluate/test_tables.py checks that the committed tables are the rendering of the committed rows
and recomputes a few rows with the current code (so retraining a toy or adding a rule means re-running
this script).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from depass_tl.evaluate.tables import render_docs, render_readme, replace_between_markers  # noqa: E402
from depass_tl.evaluate.toy_benchmark import BenchmarkResults, run_benchmark  # noqa: E402
from depass_tl.evaluate.toy_tasks import task_names  # noqa: E402

RESULTS = ROOT / "docs" / "faithfulness"
DOCS = ROOT / "docs" / "faithfulness.md"
README = ROOT / "README.md"
MARKER = "faithfulness"


def write_tables(res: BenchmarkResults) -> None:
    """Replace the generated blocks of docs/faithfulness.md and README.md."""
    for path, text in ((DOCS, render_docs(res)), (README, render_readme(res))):
        path.write_text(replace_between_markers(path.read_text(), MARKER, text))
        print(f"updated {path.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="prompts per toy (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--toys", nargs="+", choices=task_names(), default=task_names())
    ap.add_argument("--threads", type=int, default=1)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the per-prompt CSV and the README/docs tables")
    mode.add_argument("--render", action="store_true", help="only re-render the tables from the committed CSV")
    mode.add_argument("--smoke", action="store_true", help="2 prompts per toy, print the tables, write nothing")
    args = ap.parse_args()
    if args.render:
        write_tables(BenchmarkResults.read(RESULTS))
        return
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(args.threads)
    res = run_benchmark(args.toys, n=2 if args.smoke else args.n, seed=args.seed, progress=not args.smoke)
    if args.write:
        if set(args.toys) != set(task_names()):
            raise SystemExit("--write needs every toy (the committed tables cover all of them); drop --toys.")
        res.write(RESULTS)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
        write_tables(res)
    else:
        print(render_docs(res))


if __name__ == "__main__":
    main()
