"""Run the faithfulness protocols on the shipped toy models, one prompt at a time, into per-prompt rows.

:func:`run_benchmark` is what ``python benchmarks/faithfulness.py`` runs: for each task of
:mod:`~depass_tl.evaluate.toy_tasks` and each prompt, every token method (scored by
Disrupt/Recover-top-k, deletion/insertion, AOPC and ERASER) and every head ranking (scored by the
logit difference after zero / mean / resample ablation of its top-k heads). Prompts run one at a
time, so each row can be recomputed on its own (the committed results are checked that way) and
each method's cost is per prompt.

Rows (``pandas.DataFrame``):

* ``tokens``: ``toy, prompt, method, disrupt, recover, del_auc, ins_auc, aopc, comp, suff`` and the cost.
* ``heads``: ``toy, prompt, method, clean, corrupt, <ablation>_k<k>...`` (logit difference after
  ablating the method's top-k heads) and the cost.

Cost columns (:class:`~depass_tl.evaluate.budget.Compute`, per prompt): ``forward, backward,
replay, seconds, ig_steps, ig_delta`` (the last two only for integrated gradients).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from depass_tl.evaluate.ablation import ABLATIONS, mean_activations
from depass_tl.evaluate.baselines import token_methods
from depass_tl.evaluate.budget import Compute
from depass_tl.evaluate.captum_methods import DEFAULT_DELTA_TOL
from depass_tl.evaluate.suite import component_faithfulness, token_faithfulness
from depass_tl.evaluate.toy_tasks import ToyTask, load_task, task_names
from depass_tl.evaluate.unit_methods import component_methods

__all__ = [
    "COST_COLUMNS",
    "HEAD_K",
    "TOKEN_FRACTIONS",
    "TOKEN_MEASURE_COLUMNS",
    "BenchmarkResults",
    "head_columns",
    "head_diagnostics",
    "head_methods_for",
    "induction_diagnostics",
    "run_benchmark",
    "run_prompt",
    "token_methods_for",
    "weights_fingerprint",
]

TOKEN_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
TOKEN_MEASURE_COLUMNS: tuple[str, ...] = ("disrupt", "recover", "del_auc", "ins_auc", "aopc", "comp", "suff")
HEAD_K: tuple[int, ...] = (1, 2, 4)
COST_COLUMNS: tuple[str, ...] = ("forward", "backward", "replay", "seconds", "ig_steps", "ig_delta")


def head_columns(k: Sequence[int] = HEAD_K) -> list[str]:
    """``zero_k1, zero_k2, ..., resample_k4``: the head table's score columns."""
    return [f"{a}_k{kk}" for a in ABLATIONS for kk in k]


@dataclass
class BenchmarkResults:
    """Per-prompt rows and how they were made.

    Attributes:
        tokens / heads: the per-prompt ``DataFrame`` s (module docstring).
        meta: seed, prompt counts, the tasks' descriptions, versions, weight fingerprints.
    """

    tokens: Any
    heads: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: str | Path) -> None:
        """Write ``tokens.csv``, ``heads.csv`` and ``meta.json`` to ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tokens.to_csv(d / "tokens.csv", index=False, float_format="%.9g", lineterminator="\n")
        self.heads.to_csv(d / "heads.csv", index=False, float_format="%.9g", lineterminator="\n")
        (d / "meta.json").write_text(json.dumps(self.meta, indent=1, sort_keys=True) + "\n")

    @staticmethod
    def read(directory: str | Path) -> "BenchmarkResults":
        """Read what :meth:`write` wrote."""
        import pandas as pd

        d = Path(directory)
        return BenchmarkResults(pd.read_csv(d / "tokens.csv"), pd.read_csv(d / "heads.csv"),
                                json.loads((d / "meta.json").read_text()))


def weights_fingerprint(name: str) -> str:
    """SHA-256 (first 16 hex digits) of the shipped toy's parameters: changes when it is retrained.

    Computed from the tensors (names, dtypes, shapes, values), not the file's bytes, so re-saving the
    same weights in another layout keeps the fingerprint.
    """
    from safetensors.torch import load_file

    from depass_tl.toy.loading import MODEL_FILE, folder

    digest = hashlib.sha256()
    for key, t in sorted(load_file(str(folder(name) / MODEL_FILE)).items()):
        if key.endswith((".attn.mask", ".attn.IGNORE")):  # buffers, not weights
            continue
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def token_methods_for(task: ToyTask, *, captum: bool = True, seed: int = 0) -> dict[str, Any]:
    """The token methods of a task: every DePass rule, captum's baselines (occluding with the task's token), ours."""
    return token_methods(attn_only=bool(task.model.cfg.attn_only), captum=captum, replace_with=task.occlude_with,
                         ig_delta=DEFAULT_DELTA_TOL, seed=seed)


def head_methods_for(task: ToyTask, *, captum: bool = True, seed: int = 0) -> dict[str, Any]:
    """The head rankings of a task (:func:`~depass_tl.evaluate.unit_methods.component_methods`)."""
    return component_methods(level="heads", attn_only=bool(task.model.cfg.attn_only), captum=captum,
                             ig_delta=DEFAULT_DELTA_TOL, seed=seed)


def task_means(task: ToyTask) -> torch.Tensor:
    """Mean head activations over every (prompt, position) of the task (what mean ablation writes)."""
    groups: dict[int, list[torch.Tensor]] = {}
    for p in task.prompts:
        groups.setdefault(len(p.tokens), []).append(p.tokens)
    return mean_activations(task.model, [torch.stack(g) for g in groups.values()], level="heads")


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-d tensors (ranks by sorting; ties are not averaged)."""
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else math.nan


@torch.no_grad()
def head_diagnostics(task: ToyTask, means: torch.Tensor) -> dict[str, Any]:
    """Numbers behind the head tables' "why DePass loses" text, over all the task's prompts.

    Per prompt, the Spearman correlation of the default DePass head scores (``softmax``, T = 0.1) with
    the exact single-head ablation scores (zero, mean, resample), averaged over prompts.
    """
    from depass_tl.evaluate.ablation import exact_ablation_scores
    from depass_tl.evaluate.component_metrics import depass_head_attributions

    rho: dict[str, list[float]] = {a: [] for a in ABLATIONS}
    for p in task.prompts:
        toks, corrupt = p.tokens[None], p.corrupt[None]
        d = depass_head_attributions(task.model, toks, p.target, incorrect=p.incorrect).flatten()
        for a in ABLATIONS:
            e = exact_ablation_scores(task.model, toks, p.target, incorrect=p.incorrect, ablation=a,  # type: ignore[arg-type]
                                      means=means, corrupt_tokens=corrupt).flatten()
            rho[a].append(_spearman(d, e))
    return {"spearman_method": "softmax, T = 0.1", "spearman": {a: sum(v) / len(v) for a, v in rho.items()}}


@torch.no_grad()
def induction_diagnostics(task: ToyTask) -> dict[str, Any]:
    """Numbers behind the induction toy's "why DePass loses" text, over all the task's prompts.

    * DePass (``softmax``; the toy has no MLP, so every rule agrees) share of ``|attribution|`` on
      the copied token (the target's first occurrence) and on the steering token (the earlier
      occurrence of the last token, which the previous-token head moves into the copied position's key);
    * the drop of ``p(target)`` when either token is replaced by the task's occlusion token;
    * the previous-token head's DePass head score and single-head zero-ablation effect, with ranks.
    """
    from depass_tl.evaluate.ablation import exact_ablation_scores
    from depass_tl.evaluate.baselines import depass_token_attributions
    from depass_tl.evaluate.component_metrics import depass_head_attributions
    from depass_tl.evaluate.toy_tasks import INDUCTION_HALF
    from depass_tl.toy.evaluate import induction_head_scores

    model = task.model
    toks = torch.stack([p.tokens for p in task.prompts])
    tgt = torch.tensor([p.target for p in task.prompts])
    bad = torch.tensor([p.incorrect for p in task.prompts])
    copied, steering = INDUCTION_HALF, INDUCTION_HALF - 1
    a = depass_token_attributions(model, toks, tgt)
    share = a.abs() / a.abs().sum(1, keepdim=True)

    def p_target(t: torch.Tensor) -> torch.Tensor:
        return model(t, return_type="logits")[:, -1].softmax(-1)[torch.arange(len(tgt)), tgt].double().cpu()

    clean = p_target(toks)
    drops = {}
    for name, pos in (("copied", copied), ("steering", steering)):
        t = toks.clone()
        t[:, pos] = task.occlude_with
        drops[name] = float((clean - p_target(t)).mean())
    H = model.cfg.n_heads
    prev = int(induction_head_scores(model)["prev_token"].flatten().argmax())
    d = depass_head_attributions(model, toks, tgt, incorrect=bad).mean(0).flatten()
    e = exact_ablation_scores(model, toks, tgt, incorrect=bad, ablation="zero").mean(0).flatten()

    def rank(v: torch.Tensor) -> int:
        return int((v > v[prev]).sum()) + 1

    return {"depass_share_copied": float(share[:, copied].mean()), "depass_share_steering": float(share[:, steering].mean()),
            "replace_drop_copied": drops["copied"], "replace_drop_steering": drops["steering"],
            "prev_token_head": f"L{prev // H}H{prev % H}", "n_heads": int(d.numel()),
            "depass_prev_head": float(d[prev]), "depass_prev_head_rank": rank(d),
            "ablation_prev_head": float(e[prev]), "ablation_prev_head_rank": rank(e)}


def _cost(c: Compute) -> dict[str, float]:
    return {"forward": c.forward, "backward": c.backward, "replay": c.replay, "seconds": c.seconds,
            "ig_steps": c.info.get("ig_steps", math.nan), "ig_delta": c.info.get("ig_delta", math.nan)}


def run_prompt(
    task: ToyTask,
    index: int,
    *,
    token_methods: dict[str, Any],
    head_methods: dict[str, Any],
    means: torch.Tensor,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every method on prompt ``index`` of ``task``: its token rows and its head rows."""
    p = task.prompts[index]
    model, toks, corrupt = task.model, p.tokens[None], p.corrupt[None]
    token_rows, head_rows = [], []
    if token_methods:
        rep = token_faithfulness(model, toks, p.target, methods=token_methods, topk_fractions=TOKEN_FRACTIONS,
                                 masking=task.masking, replace_with=task.replace_with,  # type: ignore[arg-type]
                                 progress=False)
        for name in token_methods:
            row = {"toy": task.name, "prompt": index, "method": name}
            row.update({m: float(rep.measures[name][m][0]) for m in TOKEN_MEASURE_COLUMNS})
            row.update(_cost(rep.compute[name]))
            token_rows.append(row)
    if head_methods:
        rep_h = component_faithfulness(model, toks, p.target, incorrect=p.incorrect, level="heads",
                                       methods=head_methods, k=HEAD_K, directions=("top",), ablations=ABLATIONS,
                                       means=means, corrupt_tokens=corrupt, progress=False)
        with torch.no_grad():
            last = model(corrupt, return_type="logits")[0, -1]
        corrupt_ld = float(last[p.target] - last[p.incorrect])
        for name in head_methods:
            row = {"toy": task.name, "prompt": index, "method": name, "clean": float(rep_h.clean_metric[0]),
                   "corrupt": corrupt_ld}
            for a in ABLATIONS:
                metric, _ = rep_h.results[(name, "top", a)]
                row.update({f"{a}_k{k}": float(metric[0, j]) for j, k in enumerate(rep_h.k)})
            row.update(_cost(rep_h.compute[name]))
            head_rows.append(row)
    return token_rows, head_rows


def run_benchmark(
    names: Sequence[str] | None = None,
    *,
    n: int = 40,
    seed: int = 0,
    captum: bool = True,
    progress: bool = True,
) -> BenchmarkResults:
    """Run every task (default: every shipped toy) on ``n`` seeded prompts; see the module docstring."""
    import pandas as pd

    names = task_names() if names is None else list(names)
    token_rows: list[dict[str, Any]] = []
    head_rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"seed": seed, "n": n, "tasks": {}, "ig_delta_tol": DEFAULT_DELTA_TOL,
                            "token_fractions": list(TOKEN_FRACTIONS), "head_k": list(HEAD_K),
                            "torch": torch.__version__, "transformer_lens": _version("transformer_lens"),
                            "captum": _version("captum") if captum else None, "threads": torch.get_num_threads(),
                            "machine": f"{platform.system()} {platform.machine()}, {platform.python_version()}"}
    for name in names:
        task = load_task(name, n=n, seed=seed)
        t_methods = token_methods_for(task, captum=captum, seed=seed)
        h_methods = head_methods_for(task, captum=captum, seed=seed)
        means = task_means(task)
        for i in tqdm(range(len(task.prompts)), desc=name, disable=not progress):
            t, h = run_prompt(task, i, token_methods=t_methods, head_methods=h_methods, means=means)
            token_rows += t
            head_rows += h
        cfg = task.model.cfg
        meta["tasks"][name] = {"description": task.description, "masking": task.masking,
                               "n_prompts": len(task.prompts), "weights": weights_fingerprint(name),
                               "n_heads": cfg.n_layers * cfg.n_heads, "attn_only": bool(cfg.attn_only)}
        diagnostics = head_diagnostics(task, means)
        if name == "induction":
            diagnostics.update(induction_diagnostics(task))
        meta["tasks"][name]["diagnostics"] = diagnostics
    return BenchmarkResults(pd.DataFrame(token_rows), pd.DataFrame(head_rows), meta)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return None
