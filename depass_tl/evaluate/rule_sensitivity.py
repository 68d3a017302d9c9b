"""Which MLP rule to trust: how stable DePass's top components are across the rules, from one capture.

Every MLP rule of the rule registry (:mod:`depass_tl.replay.rules`; ``softmax`` at several
temperatures) gives an exact decomposition, and they differ only in how each MLP neuron's activation
is allocated among the components. :func:`rule_sensitivity` captures the run once, replays it under
every rule, and compares the attributions of every pair of variants: the Spearman rank correlation of
the signed attributions and the overlap of the top-k components by magnitude
(:func:`depass_tl.stats.spearman`, :func:`depass_tl.stats.top_k_overlap`), averaged over the prompts
of the batch. When the top components agree across rules, the rule does not matter for the question;
when they do not, the answer depends on how MLPs are credited, and no single rule should be trusted.

Examples:
    >>> import torch
    >>> from depass_tl.evaluate import rule_sensitivity
    >>> from depass_tl.toy import random_model
    >>> model = random_model(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_mlp=32,
    ...                      d_vocab=20, act_fn="silu", gated_mlp=True, seed=0)
    >>> rs = rule_sensitivity(model, torch.tensor([[1, 2, 3, 4, 5]]), 7, k=2, progress=False)
    >>> rs.variants[:4], rs.reference
    (('softmax T=0.01', 'softmax T=0.1', 'softmax T=1', 'softmax T=10'), 'softmax T=0.1')
    >>> list(rs.to_dataframe().columns)[:4]
    ['rule', 'temperature', 'spearman vs softmax T=0.1', 'top-2 overlap vs softmax T=0.1']
    >>> round(float(rs.spearman[1, 1]), 6), float(rs.overlap[1, 1])  # a variant against itself
    (1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from depass_tl.api import replay
from depass_tl.backends import backend_for
from depass_tl.capture import capture
from depass_tl.components import ComponentSpec, TokenSpec
from depass_tl.components.base import BIAS
from depass_tl.errors import DePassError
from depass_tl.evaluate.baselines import depass_variants
from depass_tl.replay.rules import DEFAULT_RULE, get_rule
from depass_tl.stats import spearman, top_k_overlap

__all__ = ["DEFAULT_SWEEP", "RuleSensitivity", "rule_sensitivity"]

DEFAULT_SWEEP: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
"""The softmax temperatures swept by default (the official code's default is 0.1; ``T → 0`` is ``max``)."""


@dataclass(frozen=True)
class RuleSensitivity:
    """Attributions of one capture under every rule variant, and how much they agree.

    Attributes:
        variants: the variant names (``softmax T=0.1``, ``ratio``, ...), registry order.
        rules / temperatures: each variant's rule name and temperature (NaN for rules without one).
        reference: the variant the table compares with (the default rule, ``softmax T=0.1``).
        labels: the compared components (the bias components are left out unless asked for).
        scores: ``[variant, component, batch]`` float64 logit attributions.
        k: the top-k size.
        spearman / overlap: ``[variant, variant]`` Spearman correlation and top-k overlap, mean over the
            prompts (NaN where a map is constant).
        completeness: per variant, max relative ``|Σ components − clean|`` of the final residual.
        target: what is attributed, in words (``logit(#7)``).
    """

    variants: tuple[str, ...]
    rules: tuple[str, ...]
    temperatures: tuple[float, ...]
    reference: str
    labels: tuple[str, ...]
    scores: Tensor = field(repr=False)
    k: int
    spearman: Tensor = field(repr=False)
    overlap: Tensor = field(repr=False)
    completeness: tuple[float, ...] = field(repr=False)
    target: str = ""

    @property
    def n_prompts(self) -> int:
        return int(self.scores.shape[2])

    def top(self, variant: str, batch: int = 0) -> list[tuple[str, float]]:
        """The ``k`` components with the largest ``|attribution|`` under ``variant`` (prompt ``batch``)."""
        v = self._index(variant)
        a = self.scores[v, :, batch]
        idx = torch.topk(a.abs(), min(self.k, a.numel())).indices.tolist()
        return [(self.labels[i], float(a[i])) for i in idx]

    def to_dataframe(self) -> Any:
        """One row per variant: rule, temperature, agreement with the reference, its top-k, completeness."""
        import pandas as pd

        r = self._index(self.reference)
        rows = {}
        for v, name in enumerate(self.variants):
            rows[name] = {
                "rule": self.rules[v],
                "temperature": self.temperatures[v],
                f"spearman vs {self.reference}": float(self.spearman[v, r]),
                f"top-{self.k} overlap vs {self.reference}": float(self.overlap[v, r]),
                "min spearman vs others": float(_nanmin_offdiag(self.spearman, v)),
                f"top-{self.k}" + ("" if self.n_prompts == 1 else " (prompt 0)"): ", ".join(
                    f"{label} {value:+.3g}" for label, value in self.top(name)),
                "completeness": self.completeness[v],
            }
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.index.name = "variant"
        return df

    def __str__(self) -> str:
        r = self._index(self.reference)
        others = [v for v in range(len(self.variants)) if v != r]
        worst = min(others, key=lambda v: _nan_to(float(self.spearman[v, r]), 2.0), default=r)
        head = (f"Rule sensitivity of {self.target or 'the attribution'}: {len(self.variants)} variants, "
                f"{len(self.labels)} components, {self.n_prompts} prompt(s); reference {self.reference}, k = {self.k}.\n"
                f"Least like the reference: {self.variants[worst]} (Spearman {float(self.spearman[worst, r]):.3f}, "
                f"top-{self.k} overlap {float(self.overlap[worst, r]):.2f}).")
        import pandas as pd

        with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 80):
            table = self.to_dataframe().to_string(float_format=lambda x: f"{x:.3g}")
        return head + "\n" + table

    def plot(self, *, backend: str | None = None) -> Any:
        """Heatmaps of the pairwise Spearman correlation and top-k overlap (:func:`depass_tl.viz.rule_sensitivity_plot`)."""
        from depass_tl.viz.rule_sensitivity import rule_sensitivity_plot  # viz never imports this module

        return rule_sensitivity_plot(self, backend=backend)

    def _index(self, variant: str) -> int:
        if variant not in self.variants:
            raise DePassError(f"unknown variant {variant!r}; the variants are {list(self.variants)}.")
        return self.variants.index(variant)


def _nan_to(x: float, value: float) -> float:
    return value if math.isnan(x) else x


def _nanmin_offdiag(m: Tensor, v: int) -> float:
    row = torch.cat([m[v, :v], m[v, v + 1:]])
    row = row[~torch.isnan(row)]
    return float(row.min()) if row.numel() else math.nan


def _pairwise(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``[V, V]`` mean (over prompts) Spearman correlation and top-k overlap of ``scores [V, C, B]``."""
    V, _, B = scores.shape
    rho = torch.full((V, V, B), math.nan, dtype=torch.float64)
    over = torch.zeros(V, V, B, dtype=torch.float64)
    for b in range(B):
        for i in range(V):
            for j in range(i, V):
                rho[i, j, b] = rho[j, i, b] = spearman(scores[i, :, b], scores[j, :, b])
                over[i, j, b] = over[j, i, b] = top_k_overlap(scores[i, :, b], scores[j, :, b], k)
    return rho.nanmean(-1), over.mean(-1)


def rule_sensitivity(
    model: Any,
    input: Any,
    target: Any,
    *,
    incorrect: Any = None,
    components: ComponentSpec | None = None,
    temperatures: Sequence[float] = DEFAULT_SWEEP,
    k: int = 5,
    reference: str | None = None,
    include_bias: bool = False,
    pos: int = -1,
    prepend_bos: bool | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
) -> RuleSensitivity:
    """Replay one capture under every MLP rule (and a softmax temperature sweep); compare the top components.

    Args:
        model: a decoder model (``HookedTransformer`` or ``TransformerBridge``).
        input: a string, a list of equal-length strings, or ``[batch, pos]`` token ids.
        target: the answer token (a string of one token, an id, or one per prompt).
        incorrect: attribute ``logit[target] − logit[incorrect]`` instead.
        components: what to attribute to (default :func:`depass_tl.tokens`).
        temperatures: the softmax temperatures to sweep (rules without a temperature run once).
        k: the top-k size of the overlap.
        reference: the variant the table compares with (default: the default rule, ``softmax T=0.1``,
            or the first variant when the sweep leaves it out).
        include_bias: also rank the bias component(s) (constants, not inputs; left out by default).
        pos: the position whose logits are attributed (``-1``: each prompt's last real token).
        prepend_bos, dtype: as in :func:`depass_tl.run_with_depass`.
        progress: a progress bar over the variants.

    Returns:
        A :class:`RuleSensitivity` (``print`` it; ``.to_dataframe()``; ``.plot()``).

    Raises:
        DePassError: an attention-only model (no MLP: every rule gives the same numbers), ``k < 1``,
            fewer than two variants, an unknown reference, or the errors of :func:`depass_tl.run_with_depass`.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DePassError(f"rule_sensitivity: k must be an int >= 1, got {k!r}.")
    if backend_for(model).method != "depass":
        raise DePassError(f"rule_sensitivity compares DePass MLP rules on decoder models; got {type(model).__name__}.")
    if bool(getattr(getattr(model, "cfg", None), "attn_only", False)):
        raise DePassError("rule_sensitivity: the model is attention-only, so every MLP rule gives the same numbers.")
    variants = depass_variants(tuple(float(t) for t in temperatures))
    if len(variants) < 2:
        raise DePassError(f"rule_sensitivity needs at least two variants; got {list(variants)}.")
    names = tuple(name.removeprefix("depass ") for name in variants)
    settings = list(variants.values())
    if reference is None:
        default = [n for n, s in zip(names, settings) if s["mlp_rule"] == DEFAULT_RULE.name
                   and math.isclose(s["temperature"], getattr(DEFAULT_RULE, "temperature", math.nan))]
        reference = default[0] if default else names[0]
    elif reference not in names:
        raise DePassError(f"rule_sensitivity: unknown reference {reference!r}; the variants are {list(names)}.")
    spec = TokenSpec() if components is None else components
    n_layers = int(getattr(getattr(model, "cfg", None), "n_layers", 0))
    run = capture(model, input, prepend_bos=prepend_bos, extra_hooks=spec.required_hooks(n_layers))
    rules, temps, scores, complete = [], [], [], []
    labels: tuple[str, ...] = ()
    keep: list[int] = []
    for name, s in tqdm(list(zip(names, settings)), desc="rules", disable=not progress, leave=False):
        dc = replay(run, spec, mlp_rule=s["mlp_rule"], temperature=s["temperature"], names_filter=[], dtype=dtype)
        if not keep:
            keep = [c for c, label in enumerate(dc.labels)
                    if include_bias or not (label == BIAS or label.endswith("." + BIAS))]
            labels = tuple(dc.labels[c] for c in keep)
        attrs = dc.logit_attrs(target, incorrect_tokens=incorrect, pos=pos).detach().double().cpu()
        scores.append(attrs[keep])
        complete.append(float(dc.completeness_error("unembed.hook_in", relative=True)))
        rules.append(s["mlp_rule"])
        temps.append(float(s["temperature"]) if hasattr(get_rule(s["mlp_rule"]), "temperature") else math.nan)
    stacked = torch.stack(scores)  # [variant, component, batch]
    rho, over = _pairwise(stacked, k)
    from depass_tl.viz._backend import describe_target

    return RuleSensitivity(
        variants=names, rules=tuple(rules), temperatures=tuple(temps), reference=reference, labels=labels,
        scores=stacked, k=k, spearman=rho, overlap=over, completeness=tuple(complete),
        target=describe_target(target, incorrect),
    )
