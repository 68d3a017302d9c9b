"""Markdown tables and findings from the per-prompt benchmark rows (nothing here runs a model).

:func:`render_docs` writes the full page (``docs/faithfulness.md``), :func:`render_readme` the
README's summary; both only aggregate a :class:`~depass_tl.evaluate.toy_benchmark.BenchmarkResults`,
so ``render(read(csv))`` reproduces the committed text exactly (the test suite checks that).

Cells are ``mean ± 1.96·SE`` over prompts; the best mean of each score column is bold. Whether
DePass wins or loses a column is decided by a paired comparison over the same prompts: the best
DePass variant (and, separately, the default rule ``softmax`` at T = 0.1 alone) against the best
method of a group (token level: every other method but random; head level: the other estimators,
and exact single-head ablation, the reference), ``mean(d) ± 1.96·SE(d)`` of the per-prompt
differences ``d``; DePass "loses" when that interval lies on the baseline's side of 0. The "why"
texts only quote numbers measured in the same run (``meta["tasks"][toy]["diagnostics"]``) or the
comparisons themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from depass_tl.evaluate.stats import mean_ci
from depass_tl.evaluate.suite import TOKEN_MEASURES
from depass_tl.evaluate.toy_benchmark import HEAD_K, TOKEN_MEASURE_COLUMNS, BenchmarkResults, head_columns

__all__ = ["Comparison", "between_markers", "compare_depass", "render_docs", "render_readme", "replace_between_markers"]

ARROW = {"higher": "↑", "lower": "↓"}
HEAD_MEASURES: dict[str, tuple[str, str]] = {
    c: (f"logit difference after {c.split('_k')[0]} ablation of the top {c.split('_k')[1]} heads", "lower")
    for c in head_columns()
}


def _fmt(x: float, digits: int = 3) -> str:
    if math.isnan(x):
        return "—"
    if x != 0 and abs(x) < 10 ** -(digits + 1):
        return f"{x:.1e}"
    return f"{x:.{digits}g}"


def _methods(df: Any) -> list[str]:
    return list(dict.fromkeys(df["method"]))


def _toys(res: BenchmarkResults) -> list[str]:
    """The toys in the order they were run (the rows' order)."""
    return list(dict.fromkeys(list(res.tokens["toy"]) + list(res.heads["toy"])))


def _is_depass(method: str) -> bool:
    return method.startswith("depass")


def _cell(values: Any) -> tuple[float, str]:
    m, h = mean_ci(list(values))
    return m, (f"{_fmt(m)} ± {_fmt(h, 2)}" if not math.isnan(h) else _fmt(m))


def _cost_cells(rows: Any) -> list[str]:
    return [_fmt(float(rows[c].mean())) for c in ("forward", "backward", "replay")] + [
        _fmt(1000 * float(rows["seconds"].mean()))]


def _table(df: Any, columns: Sequence[str], measures: dict[str, tuple[str, str]], labels: Sequence[str]) -> str:
    methods = _methods(df)
    cells: dict[str, list[str]] = {}
    means: dict[str, list[float]] = {}
    for method in methods:
        rows = df[df["method"] == method]
        pairs = [_cell(rows[c]) for c in columns]
        means[method] = [p[0] for p in pairs]
        cells[method] = [p[1] for p in pairs] + _cost_cells(rows)
    for j, c in enumerate(columns):
        better = measures[c][1]
        best = (max if better == "higher" else min)(means[m][j] for m in methods)
        for m in methods:
            if means[m][j] == best:
                cells[m][j] = f"**{cells[m][j]}**"
    header = ["method", *labels, "fwd", "bwd", "replay", "ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join([m, *cells[m]]) + " |" for m in methods]
    return "\n".join(lines)


@dataclass(frozen=True)
class Comparison:
    """Best DePass variant vs the best other method on one measure (paired over prompts).

    ``diff`` and ``half`` are the mean and 95% half-width of ``(baseline − depass)`` oriented so that
    positive means the baseline is better; ``outcome`` is ``"loses"``, ``"wins"`` or ``"ties"``.
    """

    measure: str
    depass: str
    depass_mean: float
    baseline: str
    baseline_mean: float
    diff: float
    half: float
    outcome: str


def compare_depass(
    df: Any, measures: dict[str, tuple[str, str]], baselines: Sequence[str] | None = None,
    depass: Sequence[str] | None = None,
) -> list[Comparison]:
    """One :class:`Comparison` per measure (see the module docstring).

    Args:
        baselines: the methods DePass is compared with (default: every non-DePass method but random).
        depass: the DePass variants to pick the best from (default: all of them).
    """
    methods = _methods(df)
    depass = [m for m in methods if _is_depass(m)] if depass is None else [m for m in depass if m in methods]
    others = [m for m in methods if not _is_depass(m) and m != "random"] if baselines is None else list(baselines)
    out: list[Comparison] = []
    if not depass or not others:
        return out
    by = {m: df[df["method"] == m].sort_values("prompt") for m in methods}
    for measure, (_, better) in measures.items():
        sign = 1.0 if better == "higher" else -1.0
        best_d = max(depass, key=lambda m: sign * float(by[m][measure].mean()))
        best_b = max(others, key=lambda m: sign * float(by[m][measure].mean()))
        d = sign * (by[best_b][measure].to_numpy() - by[best_d][measure].to_numpy())
        m, h = mean_ci(list(d))
        h = 0.0 if math.isnan(h) else h
        outcome = "loses" if m - h > 0 else ("wins" if m + h < 0 else "ties")
        out.append(Comparison(measure, best_d, float(by[best_d][measure].mean()), best_b,
                              float(by[best_b][measure].mean()), m, h, outcome))
    return out


DEFAULT_VARIANT = "depass softmax T=0.1"
"""The default rule (``run_with_depass``'s ``mlp_rule="softmax"``, ``temperature=0.1``), compared on its own too."""


def _comparison_sets(df: Any, level: str, cols: Sequence[str]) -> list[tuple[str, str, list[Comparison]]]:
    """``(DePass label, baseline-group label, comparisons)``: the best rule, and the default rule alone, against
    every other method (tokens) or against the other estimators and exact ablation (heads)."""
    measures = ({c: TOKEN_MEASURES[c] for c in cols} if level == "tokens" else {c: HEAD_MEASURES[c] for c in cols})
    methods = _methods(df)
    variants: list[tuple[str, list[str] | None]] = [("best DePass rule", None)]
    if DEFAULT_VARIANT in methods and sum(_is_depass(m) for m in methods) > 1:
        variants.append(("default rule (softmax, T = 0.1)", [DEFAULT_VARIANT]))
    groups: list[tuple[str, list[str] | None]] = (
        [("every other method", None)] if level == "tokens" else list(_head_groups(df)))
    return [(d_label, g_label, compare_depass(df, measures, group, depass=d))
            for d_label, d in variants for g_label, group in groups]


def _head_groups(df: Any) -> list[tuple[str, list[str]]]:
    """Head rankings split into the exact single-head ablations (the reference) and the other estimators."""
    methods = [m for m in _methods(df) if not _is_depass(m) and m != "random"]
    exact = [m for m in methods if m.startswith("exact ablation")]
    return [("the other estimators", [m for m in methods if m not in exact]), ("exact single-head ablation", exact)]


def _findings(comps: list[Comparison], labels: dict[str, str], title: str = "") -> str:
    parts = []
    for outcome, verb in (("loses", "loses"), ("wins", "wins"), ("ties", "is not significantly different")):
        items = [c for c in comps if c.outcome == outcome]
        if not items:
            continue
        text = "; ".join(
            f"{labels[c.measure]} ({c.depass} {_fmt(c.depass_mean)} vs {c.baseline} {_fmt(c.baseline_mean)}, "
            f"paired difference {_fmt(abs(c.diff))} ± {_fmt(c.half, 2)})" for c in items)
        parts.append(f"DePass {verb} on {text}.")
    return (f"**{title}:** " if title else "") + " ".join(parts)


def _rule_why(sets: list[tuple[str, str, list[Comparison]]], short: bool) -> str:
    """When the default rule loses where the best rule does not: say which rule did better, and why."""
    best = {c.measure: c for d, _, cs in sets if d.startswith("best") for c in cs}
    fixed = [c for d, _, cs in sets if d.startswith("default") for c in cs
             if c.outcome == "loses" and best[c.measure].outcome != "loses"]
    if not fixed:
        return ""
    rules = sorted({best[c.measure].depass for c in fixed})
    measures = ", ".join(c.measure.replace("_", " ") for c in fixed)
    if short:
        return (f"the default softmax rule (T = 0.1) loses on {measures}, {' / '.join(rules)} does not: at a low "
                "temperature the softmax split of each MLP neuron's output concentrates it on the components with "
                "the largest pre-activation contributions (winner-take-most)")
    return (f"Why the default rule loses where another does not ({measures}): the softmax rule splits each MLP "
            "neuron's output by a softmax of the components' pre-activation contributions divided by T, which at "
            "T = 0.1 concentrates it on the largest contributions (winner-take-most); "
            f"{' / '.join(rules)} (best there) splits it less sharply (`ratio`: in proportion to each contribution "
            "through the frozen slope) and does not lose on these columns.")


def _why(toy: str, level: str, sets: list[tuple[str, str, list[Comparison]]], meta: dict[str, Any], *,
         short: bool = False) -> str:
    """Explanations backed by numbers measured in the same run (``meta["tasks"][toy]["diagnostics"]``)."""
    comps = [c for _, _, cs in sets for c in cs]
    if not any(c.outcome == "loses" for c in comps):
        return ""
    diag = meta["tasks"][toy].get("diagnostics", {})
    if level == "tokens" and "depass_share_steering" not in diag:
        return _rule_why(sets, short)
    if level == "tokens" and "depass_share_steering" in diag:
        if short:
            return (f"frozen attention patterns: DePass gives the token that steers the induction head "
                    f"{_fmt(100 * diag['depass_share_steering'])}% of its attribution, although replacing it lowers "
                    f"p(target) by {_fmt(diag['replace_drop_steering'])}")
        return (
            "Why: DePass freezes the attention patterns, so it credits the token whose value the induction head "
            f"copies (the target's first occurrence: {_fmt(100 * diag['depass_share_copied'])}% of the DePass "
            "attribution, mean over prompts) and hardly the token that decides *where* the head looks (the earlier "
            "occurrence of the last token, read through the previous-token head: "
            f"{_fmt(100 * diag['depass_share_steering'])}%), although replacing that token lowers p(target) by "
            f"{_fmt(diag['replace_drop_steering'])} (replacing the copied token: {_fmt(diag['replace_drop_copied'])}). "
            "Keeping only DePass's top tokens therefore drops the steering token, which occlusion and attention "
            "rollout keep."
        )
    if level != "heads" or "spearman" not in diag:
        return ""
    rho = diag["spearman"]
    worst = min(rho, key=lambda a: rho[a])
    rhos = f"ρ = {_fmt(rho['zero'], 2)} (zero), {_fmt(rho['mean'], 2)} (mean), {_fmt(rho['resample'], 2)} (resample)"
    if worst == "resample":
        reason = ("resample ablation scores how much a head's output *changes* between the clean and the corrupted "
                  "prompt, which attribution patching, activation patching and layer IG measure from that pair and "
                  "DePass, which never sees the corrupted prompt, does not")
        short_reason = "DePass never sees the corrupted prompt that resample ablation swaps in"
    else:
        reason = (f"{worst} ablation also removes a head's effect on *where later heads attend*, which DePass holds "
                  "fixed, so a head that works by steering attention gets little DePass credit")
        short_reason = "frozen attention patterns: a head that steers later heads' attention gets little credit"
    if "prev_token_head" in diag:
        prev = (f"the previous-token head {diag['prev_token_head']} has DePass rank {diag['depass_prev_head_rank']} of "
                f"{diag['n_heads']} (score {_fmt(diag['depass_prev_head'])}) and zero-ablation rank "
                f"{diag['ablation_prev_head_rank']} (it lowers the logit difference by {_fmt(diag['ablation_prev_head'])})")
        reason += f": {prev}"
        short_reason += f" ({prev})"
    if short:
        return f"{short_reason}; DePass vs exact ablation rankings {rhos}"
    return (f"Why: DePass scores a head by what it writes on the clean prompt, carried to the logits with the "
            f"downstream attention patterns, norm scales and MLP coefficients frozen. Its ranking "
            f"({diag['spearman_method']}) agrees with exact single-head ablation with Spearman {rhos}, mean over "
            f"prompts; least with {worst} ablation: {reason}.")


def _cost_note(df: Any, level: str) -> str:
    notes = []
    ig = df[df["ig_steps"].notna()] if "ig_steps" in df else df.iloc[0:0]
    for method in _methods(ig):
        rows = ig[ig["method"] == method]
        unit = "per layer, " if level == "heads" else ""
        notes.append(f"{method}: Gauss-Legendre steps {unit}{int(rows['ig_steps'].min())}–{int(rows['ig_steps'].max())} "
                     f"(mean {_fmt(float(rows['ig_steps'].mean()))}), largest |convergence delta| "
                     f"{_fmt(float(rows['ig_delta'].max()), 2)}")
    return "; ".join(notes)


def _toy_section(res: BenchmarkResults, toy: str, *, headings: bool) -> list[str]:
    meta = res.meta["tasks"][toy]
    tok = res.tokens[res.tokens["toy"] == toy]
    heads = res.heads[res.heads["toy"] == toy]
    tol = res.meta["ig_delta_tol"]
    out = []
    if headings:
        out += [f"### `{toy}`", ""]
    out.append(f"{meta['n_prompts']} prompts: {meta['description']}.")
    out.append("")
    if len(tok):
        token_labels = [f"{c}{ARROW[TOKEN_MEASURES[c][1]]}" for c in TOKEN_MEASURE_COLUMNS]
        out += [f"**Tokens** (masking = {meta['masking']}; f = p(target)):", "",
                _table(tok, TOKEN_MEASURE_COLUMNS, {c: TOKEN_MEASURES[c] for c in TOKEN_MEASURE_COLUMNS},
                       token_labels), ""]
        note = _cost_note(tok, "tokens")
        if note:
            out += [f"Integrated gradients reach |delta| ≤ {tol:g} (nats of log p): {note}.", ""]
        sets = _comparison_sets(tok, "tokens", TOKEN_MEASURE_COLUMNS)
        for d_label, g_label, cs in sets:
            out += [_findings(cs, {c: c for c in TOKEN_MEASURE_COLUMNS}, f"{d_label[0].upper() + d_label[1:]} vs {g_label}"), ""]
        why = _why(toy, "tokens", sets, res.meta)
        if why:
            out += [why, ""]
    if len(heads):
        cols = head_columns(res.meta.get("head_k", HEAD_K))
        clean, _ = _cell(heads.drop_duplicates("prompt")["clean"])
        corrupt, _ = _cell(heads.drop_duplicates("prompt")["corrupt"])
        out += [f"**Heads** ({meta['n_heads']} heads; logit difference target − contrast after ablating each method's "
                f"top-k heads at every position, lower is better; clean {_fmt(clean)}, corrupted prompt "
                f"{_fmt(corrupt)}):", "",
                _table(heads, cols, {c: HEAD_MEASURES[c] for c in cols}, [c.replace("_", " ") for c in cols]), ""]
        note = _cost_note(heads, "heads")
        if note:
            out += [f"Layer integrated gradients reach |delta| ≤ {tol:g} (logit units): {note}.", ""]
        sets = _comparison_sets(heads, "heads", cols)
        for d_label, g_label, cs in sets:
            out += [_findings(cs, {c: c.replace("_", " ") for c in cols}, f"{d_label[0].upper() + d_label[1:]} vs {g_label}"), ""]
        out += ["Exact single-head ablation is the reference rather than a competitor: at k = 1 it optimises the "
                "scored quantity itself under its own ablation, at one forward pass per head.", ""]
        why = _why(toy, "heads", sets, res.meta)
        if why:
            out += [why, ""]
    return out


def _summary_rows(res: BenchmarkResults, toy: str) -> tuple[list[str], list[str]]:
    rows, whys = [], []
    levels = [("tokens", res.tokens[res.tokens["toy"] == toy], list(TOKEN_MEASURE_COLUMNS)),
              ("heads", res.heads[res.heads["toy"] == toy], head_columns(res.meta.get("head_k", HEAD_K)))]
    for level, df, cols in levels:
        if not len(df):
            continue
        sets = _comparison_sets(df, level, cols)
        for d_label, g_label, comps in sets:
            count = {o: [c for c in comps if c.outcome == o] for o in ("wins", "ties", "loses")}
            lost = ", ".join(c.measure.replace("_", " ") for c in count["loses"])
            lost_to = ", ".join(sorted({c.baseline for c in count["loses"]}))
            rows.append(f"| `{toy}` | {level} | {d_label} | {g_label} | {len(count['wins'])} | {len(count['ties'])} | "
                        f"{len(count['loses'])}{f' ({lost}; to {lost_to})' if lost else ''} |")
        why = _why(toy, level, sets, res.meta, short=True)
        if why:
            whys.append(f"- `{toy}` {level}: {why}.")
    return rows, whys


def _setup(res: BenchmarkResults) -> list[str]:
    m = res.meta
    return [
        f"Generated by `python benchmarks/faithfulness.py --write` (seed {m['seed']}, {m['n']} prompts per toy, one "
        f"prompt at a time, {m['threads']} thread; torch {m['torch']}, TransformerLens {m['transformer_lens']}, "
        f"captum {m['captum']}; {m['machine']}). Per-prompt rows: `docs/faithfulness/`.",
    ]


def render_docs(res: BenchmarkResults) -> str:
    """The generated part of ``docs/faithfulness.md``: setup, then per toy the tables and findings."""
    lines = _setup(res) + [""]
    for toy in _toys(res):
        lines += _toy_section(res, toy, headings=True)
    return "\n".join(lines).rstrip() + "\n"


def render_readme(res: BenchmarkResults) -> str:
    """The README's generated summary: per toy and level, how often DePass wins, ties and loses, and why."""
    lines = _setup(res) + ["", "Paired comparisons (95% CI over prompts) of DePass (its best rule per column, and the "
                               "default rule alone) with the best method of each group, one per score column (7 token "
                               "measures; 9 head columns: zero / mean / resample ablation of the top 1, 2, 4 heads; "
                               "exact single-head ablation is the reference, not a competitor):", "",
                           "| toy | level | DePass | vs | wins | ties | loses |", "|---|---|---|---|---|---|---|"]
    whys: list[str] = []
    for toy in _toys(res):
        rows, w = _summary_rows(res, toy)
        lines += rows
        whys += w
    if whys:
        lines += ["", "Where DePass loses, and why (numbers from the same run; details in docs/faithfulness.md):", ""]
        lines += whys
    return "\n".join(lines).rstrip() + "\n"


def replace_between_markers(text: str, name: str, content: str) -> str:
    """Replace what lies between ``<!-- {name}:begin -->`` and ``<!-- {name}:end -->`` (markers kept).

    Raises:
        ValueError: the markers are missing or out of order.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {begin} ... {end} not found (in this order)")
    return text[: i + len(begin)] + "\n" + content + text[j:]


def between_markers(text: str, name: str) -> str:
    """The text between the markers (what :func:`replace_between_markers` wrote)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {begin} ... {end} not found (in this order)")
    return text[i + len(begin) + 1 : j]
