"""Run every protocol for every method and summarise over prompts (mean ± 95% CI).

* :func:`token_faithfulness`: for each token attribution method (default :func:`token_methods`),
  Disrupt/Recover-top-k, deletion/insertion AUC, AOPC and ERASER comprehensiveness/sufficiency.
* :func:`component_faithfulness`: for each head/neuron ranking (default :func:`component_methods`),
  top-k / bottom-k ablation (zero, mean, resample) with accuracy and the logit (difference).

Equal budgets: every method sees the same prompts, targets, masks (token level) and ablations
(component level); only the attribution differs. Each method's own cost (forward / backward passes,
DePass replay streams, wall time; :mod:`~depass_tl.evaluate.budget`) is recorded in the report's
``compute`` next to its scores; the masking / ablation runs that score it are not part of it.

Both return a report that keeps per-prompt values (so reports from prompt groups of different
lengths can be merged with ``+``) and renders a ``pandas.DataFrame`` with :meth:`table`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from depass_tl.errors import DePassError
from depass_tl.evaluate.ablation import Ablation, ablation_curve, mean_activations
from depass_tl.evaluate.baselines import TokenMethod, as_attribution, token_methods
from depass_tl.evaluate.budget import Compute, count_compute
from depass_tl.evaluate.component_metrics import Level
from depass_tl.evaluate.masking import Masking, Metric
from depass_tl.evaluate.stats import bootstrap_ci, mean_ci
from depass_tl.evaluate.token_metrics import (
    DEFAULT_TOPK_FRACTIONS,
    ERASER_FRACTIONS,
    comprehensiveness_sufficiency,
    deletion_insertion,
    disrupt_recover,
)
from depass_tl.evaluate.unit_methods import ComponentMethod, component_methods

__all__ = [
    "ComponentReport",
    "TOKEN_MEASURES",
    "TOKEN_MEASURES_HELP",
    "TokenReport",
    "component_faithfulness",
    "format_table",
    "run_counted",
    "token_faithfulness",
]

CI = Literal["normal", "bootstrap"]

#: measure name -> (what it is, "higher" or "lower" is better)
TOKEN_MEASURES: dict[str, tuple[str, str]] = {
    "disrupt": ("mean over k of the Disrupt-top-k change, %", "higher"),
    "recover": ("mean over k of the Recover-top-k change, %", "lower"),
    "del_auc": ("deletion-curve AUC", "lower"),
    "ins_auc": ("insertion-curve AUC", "higher"),
    "aopc": ("AOPC of the deletion curve", "higher"),
    "comp": ("ERASER comprehensiveness (AOPC over fractions)", "higher"),
    "suff": ("ERASER sufficiency (AOPC over fractions)", "lower"),
}


TOKEN_MEASURES_HELP = "Columns: " + "; ".join(
    f"{k} = {what} ({better} is better)" for k, (what, better) in TOKEN_MEASURES.items()
) + "."


def _summary(v: Tensor, ci: CI, seed: int) -> tuple[float, float, float]:
    if ci == "normal":
        m, h = mean_ci(v)
        return m, m - h, m + h
    return bootstrap_ci(v, seed=seed)


def format_table(df: Any, *, digits: int = 3) -> str:
    """Render a report table with ``mean ± half-width`` cells (for the README and the benchmark)."""
    means = [c for c in df.columns if c.endswith(" mean")]
    lines = []
    header = [df.index.name or ""] + [c[: -len(" mean")] for c in means]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for name, row in df.iterrows():
        cells = [str(name)]
        for c in means:
            base = c[: -len(" mean")]
            m, lo, hi = row[c], row[base + " lo"], row[base + " hi"]
            half = (hi - lo) / 2
            cells.append(f"{m:.{digits}g} ± {half:.2g}" if not math.isnan(half) else f"{m:.{digits}g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ tokens
@dataclass
class TokenReport:
    """Per-prompt token-level results for each method.

    Attributes:
        measures: method -> measure (see :data:`TOKEN_MEASURES`) -> ``[batch]``.
        disrupt / recover: method -> ``[batch, F]`` percent change at each of ``topk_fractions``.
        topk_fractions: the Disrupt/Recover fractions.
    """

    topk_fractions: tuple[float, ...]
    measures: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    disrupt: dict[str, Tensor] = field(default_factory=dict)
    recover: dict[str, Tensor] = field(default_factory=dict)
    compute: dict[str, Compute] = field(default_factory=dict)

    def __add__(self, other: "TokenReport") -> "TokenReport":
        if other.topk_fractions != self.topk_fractions or set(other.measures) != set(self.measures):
            raise DePassError("can only merge token reports with the same methods and fractions.")
        out = TokenReport(self.topk_fractions)
        for m in self.measures:
            out.measures[m] = {k: torch.cat([v, other.measures[m][k]]) for k, v in self.measures[m].items()}
            out.disrupt[m] = torch.cat([self.disrupt[m], other.disrupt[m]])
            out.recover[m] = torch.cat([self.recover[m], other.recover[m]])
            out.compute[m] = self.compute.get(m, Compute()) + other.compute.get(m, Compute())
        return out

    @property
    def n_prompts(self) -> int:
        first = next(iter(self.measures.values()))
        return int(next(iter(first.values())).shape[0])

    def table(self, *, ci: CI = "normal", seed: int = 0) -> Any:
        """``DataFrame`` indexed by method with ``<measure> mean/lo/hi`` columns."""
        import pandas as pd

        rows = {}
        for method, ms in self.measures.items():
            row = {}
            for name, v in ms.items():
                row[f"{name} mean"], row[f"{name} lo"], row[f"{name} hi"] = _summary(v, ci, seed)
            rows[method] = row
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.index.name = "method"
        return df

    def curve_table(self, which: Literal["disrupt", "recover"] = "disrupt", *, ci: CI = "normal", seed: int = 0) -> Any:
        """``DataFrame`` indexed by method with ``<fraction> mean/lo/hi`` columns for one curve."""
        import pandas as pd

        curves = self.disrupt if which == "disrupt" else self.recover
        rows = {}
        for method, c in curves.items():
            row = {}
            for j, f in enumerate(self.topk_fractions):
                row[f"{f:.3g} mean"], row[f"{f:.3g} lo"], row[f"{f:.3g} hi"] = _summary(c[:, j], ci, seed)
            rows[method] = row
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.index.name = "method"
        return df


def token_faithfulness(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    methods: Mapping[str, TokenMethod] | None = None,
    topk_fractions: Sequence[float] = DEFAULT_TOPK_FRACTIONS,
    eraser_fractions: Sequence[float] = ERASER_FRACTIONS,
    metric: Metric = "prob",
    masking: Masking = "delete",
    replace_with: int | None = None,
    protect_bos: bool = True,
    batch_size: int = 64,
    progress: bool = True,
) -> TokenReport:
    """Every token-level protocol for every method on one batch of equal-length prompts.

    Args:
        tokens: ``[batch, pos]``; the target is predicted at the last position.
        target: target token id, or one per prompt.
        methods: display name -> ``method(model, tokens, target) -> [batch, pos]`` (or an
            :class:`~depass_tl.evaluate.baselines.Attribution`); default
            :func:`~depass_tl.evaluate.baselines.token_methods` (its captum baselines need the
            ``[eval]`` extra).
        metric: ``f`` for deletion/insertion/AOPC/ERASER (Disrupt/Recover always use probabilities).
        masking / replace_with / protect_bos: see :mod:`depass_tl.evaluate.masking`.

    Returns:
        A :class:`TokenReport` (with each method's :class:`~depass_tl.evaluate.budget.Compute`).
    """
    methods = token_methods(attn_only=bool(model.cfg.attn_only)) if methods is None else methods
    report = TokenReport(tuple(float(f) for f in topk_fractions))
    kw = dict(masking=masking, replace_with=replace_with, protect_bos=protect_bos, batch_size=batch_size)
    for name, method in tqdm(list(methods.items()), desc="token methods", disable=not progress, leave=False):
        attrs, report.compute[name] = run_counted(model, method, tokens, target)
        tk = disrupt_recover(model, tokens, attrs, target, fractions=topk_fractions, **kw)  # type: ignore[arg-type]
        di = deletion_insertion(model, tokens, attrs, target, metric=metric, **kw)  # type: ignore[arg-type]
        er = comprehensiveness_sufficiency(model, tokens, attrs, target, fractions=eraser_fractions, metric=metric, **kw)  # type: ignore[arg-type]
        report.measures[name] = {
            "disrupt": tk.disrupt.mean(1), "recover": tk.recover.mean(1),
            "del_auc": di.deletion_auc, "ins_auc": di.insertion_auc, "aopc": di.aopc,
            "comp": er.aopc_comprehensiveness, "suff": er.aopc_sufficiency,
        }
        report.disrupt[name] = tk.disrupt
        report.recover[name] = tk.recover
    return report


def run_counted(model: Any, method: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Tensor, Compute]:
    """Call an attribution method under :func:`count_compute`; return its scores and its cost.

    The cost gets the method's own report: DePass replay streams per prompt times the batch size,
    and any ``info`` numbers (e.g. integrated gradients' steps and convergence delta).
    """
    with count_compute(model) as cost:
        out = as_attribution(method(model, *args, **kwargs))
    batch = int(out.scores.shape[0])
    cost.replay += out.replay * batch
    cost.info.update({k: float(v) for k, v in out.info.items()})
    return out.scores, cost


# -------------------------------------------------------------------------------- components

@dataclass
class ComponentReport:
    """Per-prompt ablation results: ``(method, direction, ablation) -> (metric [batch, F], correct [batch, F])``.

    ``compute`` holds each method's cost (:class:`~depass_tl.evaluate.budget.Compute`).
    """

    level: str
    fractions: tuple[float, ...]
    k: tuple[int, ...]
    clean_metric: Tensor = field(default_factory=lambda: torch.zeros(0))
    results: dict[tuple[str, str, str], tuple[Tensor, Tensor]] = field(default_factory=dict)
    compute: dict[str, Compute] = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return int(self.clean_metric.shape[0])

    def __add__(self, other: "ComponentReport") -> "ComponentReport":
        if (other.level, other.k, set(other.results)) != (self.level, self.k, set(self.results)):
            raise DePassError("can only merge component reports with the same level, unit counts and methods.")
        out = ComponentReport(self.level, self.fractions, self.k, torch.cat([self.clean_metric, other.clean_metric]))
        for key, (m, c) in self.results.items():
            om, oc = other.results[key]
            out.results[key] = (torch.cat([m, om]), torch.cat([c, oc]))
        for name in self.compute:
            out.compute[name] = self.compute[name] + other.compute.get(name, Compute())
        return out

    def table(self, *, measure: Literal["accuracy", "metric"] = "accuracy", ci: CI = "normal", seed: int = 0) -> Any:
        """``DataFrame`` indexed by ``method / direction / ablation``, one ``k=<units>`` column group each."""
        import pandas as pd

        rows = {}
        for (method, direction, ablation), (m, c) in self.results.items():
            v = c.double() if measure == "accuracy" else m
            row = {}
            for j, k in enumerate(self.k):
                row[f"k={k} mean"], row[f"k={k} lo"], row[f"k={k} hi"] = _summary(v[:, j], ci, seed)
            rows[f"{method} / {direction} / {ablation}"] = row
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.index.name = f"{self.level}: method / direction / ablation"
        return df


def component_faithfulness(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    incorrect: int | Sequence[int] | Tensor | None = None,
    level: Level = "heads",
    methods: Mapping[str, ComponentMethod] | None = None,
    fractions: Sequence[float] | None = None,
    k: Sequence[int] | None = None,
    directions: Sequence[Literal["top", "bottom"]] = ("top", "bottom"),
    ablations: Sequence[Ablation] = ("zero", "mean"),
    reference_tokens: Tensor | Sequence[Tensor] | None = None,
    means: Tensor | None = None,
    corrupt_tokens: Tensor | None = None,
    progress: bool = True,
) -> ComponentReport:
    """Rank units with each method, ablate the top/bottom k and record the answer.

    Args:
        incorrect: the token the answer must beat (accuracy = logit difference > 0; without it,
            accuracy = the target is the argmax and the metric is the target logit).
        methods: display name -> ranking (default
            :func:`~depass_tl.evaluate.unit_methods.component_methods` for ``level``).
        fractions / k: fractions of all units (default 5, 10, 20, 30, 50%) or unit counts.
        ablations: how the ranked units are ablated: ``"zero"``, ``"mean"``, ``"resample"``.
        reference_tokens: the set whose mean activations ``"mean"`` writes, and which the
            ``exact ablation (mean)`` ranking uses (default: ``tokens``); or pass ``means``
            (:func:`~depass_tl.evaluate.ablation.mean_activations`) directly.
        corrupt_tokens: the corrupted prompts (same shape as ``tokens``) for ``"resample"`` and
            for the rankings that need them (attribution patching from the corrupted run,
            activation patching, layer integrated gradients).

    Returns:
        A :class:`ComponentReport`.
    """
    if methods is None:
        methods = component_methods(level=level, attn_only=bool(model.cfg.attn_only))
    if not methods:
        raise DePassError("methods is empty; give at least one ranking method.")
    if not ablations or not directions:
        raise DePassError(f"ablations and directions must each name at least one; got ablations={tuple(ablations)!r}, "
                          f"directions={tuple(directions)!r}.")
    if means is None:
        means = mean_activations(model, tokens if reference_tokens is None else reference_tokens, level=level)
    report: ComponentReport | None = None
    for name, method in tqdm(list(methods.items()), desc=f"{level} methods", disable=not progress, leave=False):
        scores, cost = run_counted(model, method, tokens, target, level=level, incorrect=incorrect,
                                   corrupt_tokens=corrupt_tokens, means=means)
        for direction in directions:
            for ablation in ablations:
                curve = ablation_curve(model, tokens, scores, target, incorrect=incorrect, level=level,
                                       fractions=fractions, k=k, direction=direction, ablation=ablation,
                                       means=means, corrupt_tokens=corrupt_tokens)
                if report is None:
                    report = ComponentReport(level, curve.fractions, curve.k, curve.clean_metric)
                report.results[(name, direction, ablation)] = (curve.metric, curve.correct)
        assert report is not None
        report.compute[name] = cost
    assert report is not None
    return report
