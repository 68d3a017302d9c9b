"""Faithfulness tables for DePass and baselines on the shipped toy models (mean ± 95% CI over prompts).

Token level (``ioi`` and ``induction``): Disrupt/Recover-top-k (the DePass paper's protocol),
deletion/insertion AUC and AOPC, ERASER comprehensiveness/sufficiency (AOPC over 1, 5, 10, 20, 50%);
f = p(target). Masking deletes tokens (``--masking replace`` replaces them with BOS instead). Component
level (``ioi``): ablate the top-k / bottom-k heads
ranked by each method (zero and mean ablation), accuracy = logit(IO) > logit(S).
CI: mean ± 1.96·SE over prompts (``--ci bootstrap`` for a seeded percentile bootstrap).

    python benchmarks/faithfulness.py [--n 40] [--ig-steps 16] [--ci normal|bootstrap] [--threads 1]
        [--models ioi induction] [--masking delete|replace]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import defaultdict

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from depass_tl import toy  # noqa: E402
from depass_tl.evaluate import (  # noqa: E402
    TOKEN_MEASURES_HELP,
    component_faithfulness,
    component_methods,
    format_table,
    token_faithfulness,
    token_methods,
)
from depass_tl.toy.data import ioi_prompts, repeated_sequences  # noqa: E402


def ioi_groups(encoder, n: int, seed: int):
    """IOI prompts grouped by token length: (tokens, io ids, s ids) per group."""
    groups = defaultdict(list)
    for p in ioi_prompts(n, split="heldout", seed=seed):
        toks = encoder.encode(p.text)[0]
        groups[len(toks)].append((toks, encoder.token_id(p.io), encoder.token_id(p.s)))
    for items in groups.values():
        yield (torch.stack([t for t, _, _ in items]), torch.tensor([i for _, i, _ in items]),
               torch.tensor([s for _, _, s in items]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="prompts per model")
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument("--ci", choices=["normal", "bootstrap"], default="normal")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", choices=["ioi", "induction"], default=["ioi", "induction"])
    ap.add_argument("--masking", choices=["delete", "replace"], default="delete",
                    help="token-level masking: delete tokens, or replace them with BOS")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ci_text = "mean ± 1.96·SE" if args.ci == "normal" else "mean, half-width of the 95% percentile bootstrap"
    fr = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
    methods = token_methods(temperatures=(0.01, 0.1, 1.0), ig_steps=args.ig_steps, seed=args.seed)
    names = [name for name in args.models if name in toy.available()]
    mask_kw = dict(masking="replace", replace_with=0) if args.masking == "replace" else dict(masking="delete")

    if "ioi" in names:
        model, enc = toy.load("ioi")
        report = None
        for tokens, io, s in ioi_groups(enc, args.n, args.seed):
            r = token_faithfulness(model, tokens, io, methods=methods, topk_fractions=fr, **mask_kw)
            report = r if report is None else report + r
        print(f"\n## ioi: token level ({report.n_prompts} held-out prompts, target = IO, masking = {args.masking}, "
              f"{ci_text})\n")
        print(format_table(report.table(ci=args.ci, seed=args.seed)))
        print("\nDisrupt-top-k (% change of p(IO) after deleting the top k% tokens; higher is better)\n")
        print(format_table(report.curve_table("disrupt", ci=args.ci, seed=args.seed), digits=3))
        print("\nRecover-top-k (% change after keeping only the top k%; lower is better)\n")
        print(format_table(report.curve_table("recover", ci=args.ci, seed=args.seed), digits=3))

        comp = None
        for tokens, io, s in ioi_groups(enc, args.n, args.seed):
            c = component_faithfulness(model, tokens, io, incorrect=s, level="heads",
                                       methods=component_methods(temperatures=(0.1,), seed=args.seed),
                                       fractions=(1 / 12, 2 / 12, 3 / 12, 0.5), corrupt_tokens=None)
            comp = c if comp is None else comp + c
        print(f"\n## ioi: heads ({comp.n_prompts if hasattr(comp, 'n_prompts') else ''} prompts; accuracy = "
              f"logit(IO) > logit(S) after ablating k of 12 heads; clean accuracy "
              f"{float((comp.clean_metric > 0).double().mean()):.3f}; {ci_text})\n")
        print(format_table(comp.table(measure="accuracy", ci=args.ci, seed=args.seed), digits=3))
        print("\nlogit(IO) − logit(S) after ablation\n")
        print(format_table(comp.table(measure="metric", ci=args.ci, seed=args.seed), digits=3))

    if "induction" in names:
        model, enc = toy.load("induction")
        half = 24
        seqs = repeated_sequences(args.n, half_len=half, d_vocab=model.cfg.d_vocab, seed=args.seed)
        tokens, target = seqs[:, :-1], seqs[:, -1]  # predict the last repeated token
        report = token_faithfulness(model, tokens, target, methods=methods, topk_fractions=fr, **mask_kw)
        print(f"\n## induction: token level ({report.n_prompts} repeated sequences, BOS + 2×{half} tokens, "
              f"target = the last repeated token, masking = {args.masking}, {ci_text})\n")
        print(format_table(report.table(ci=args.ci, seed=args.seed)))
    print("\n" + TOKEN_MEASURES_HELP)


if __name__ == "__main__":
    main()
