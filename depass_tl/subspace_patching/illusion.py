"""The interpretability-illusion report for a subspace patch (Makelov, Lange, Nanda, ICLR 2024).

A subspace ``V`` at a site can move the output when patched for a bad reason: the patch *reads* the
source-minus-base coefficient on a direction the rest of the model ignores (the nullspace of the
downstream weights) and *writes* it on a direction the model reads but never uses on the data (a
dormant pathway). :func:`illusion_report` collects the evidence (reference/illusion.md §3):

* **Geometry**: ``v = v_row + v_null`` with respect to the downstream weights ``W`` (SVD with a rank
  tolerance, not QR); ``row_norm = ‖P_row V‖_F/√k``, ``null_norm``.
* **Effects** (fraction of the per-example source-minus-base metric gap): ``E(v)``, ``E(v̂_row)``,
  ``E(v̂_null)`` (orthonormalised parts), ``E(full)`` (whole activation patched at the same positions) and, for
  ``k = 1``, Wu et al.'s unnormalised row patch ``h + ((h' − h)·v_row) v_row``. Scalars:
  ``ρ = E(v̂_row)/E(v)``, ``σ = E(v) − E(v̂_row) − E(v̂_null)``, ``ε = E(v) − E(full)`` and the
  null-drive fraction ``φ = Σ_i ⟨V_nullᵀΔh_i, VᵀΔh_i⟩ / Σ_i ‖VᵀΔh_i‖²``.
* **Dormancy** of ``v̂``, ``v̂_row``, ``v̂_null`` (:mod:`depass_tl.subspace_patching.dormancy`).
* **DePass flow check** (:mod:`depass_tl.subspace_patching.flow`): phantom fraction Φ and cancellation R.

**Verdict** (thresholds are the module constants below, overridable with :class:`Thresholds`):

* ``"inconclusive"`` if ``E(v) < MIN_EFFECT`` (nothing to explain);
* the **rowspace test** has the patch signature when ``ρ < RHO_MAX`` and (``σ ≥ SIGMA_FRAC·E(v)``
  or ``ε ≥ EPSILON_MIN``) (calibrated on the paper's Table 1: flags the MLP8 direction with
  ρ = 0.29, passes the residual direction with ρ = 0.91). Its *negative* result is uninformative,
  and not used, when the test cannot separate a faithful direction from an illusory one:
  ``rank(W) ≤ k`` (the unit row patch then transfers the whole read-out, reference §2.4),
  ``rank(W) = d`` (the readers' row space is the whole space, so no direction has a nullspace part
  and ``ρ = 1``), or ``v`` lies in the row space (no nullspace part, ``ρ = 1`` by construction);
* the **DePass flow check** (run when ``logit_tokens`` is given) has the flow signature when
  ``Φ ≥ PHI_MIN`` or ``R ≥ CANCELLATION_MIN``;
* ``"illusion_suspected"`` if either signature is met; otherwise ``"faithful"``, except when the
  rowspace test is uninformative: then the verdict rests only on the flow check (the reasons say so),
  and without it nothing can decide: ``"inconclusive"``.

``IllusionReport.checks`` and its text say which checks ran, which were uninformative and why, and
which were not run. An excess over the whole-site patch (``ε ≥ EPSILON_MIN``: the direction moves the
output more than patching the whole activation) is always reported among the reasons.

**Downstream weights**: for ``blocks.L.mlp.hook_post`` the default is ``model.W_out[L]``
(``[d_mlp, d_model]``). For any other site pass ``reader=`` yourself, in row convention
``[d_site, n_read]``: e.g. ``torch.cat([model.W_Q[l, h] for l, h in heads], dim=1)`` for the queries of
chosen heads reading a residual site, or ``model.W_U[:, [a, b]]`` for the unembedding columns.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.subspace_patching.das import metric_per_example
from depass_tl.subspace_patching.dormancy import DormancyStats, dormancy_stats
from depass_tl.subspace_patching.flow import FlowCheck, subspace_flow
from depass_tl.subspace_patching.linalg import as_basis, row_null_split
from depass_tl.subspace_patching.setters import Positions, position_mask, subspace_patch
from depass_tl.tokenization import AnswerTokens, answer_ids, single_token_fn

__all__ = [
    "CANCELLATION_MIN",
    "EPSILON_MIN",
    "MIN_EFFECT",
    "PHI_MIN",
    "RHO_MAX",
    "SIGMA_FRAC",
    "IllusionReport",
    "Thresholds",
    "illusion_report",
]

MIN_EFFECT = 0.2
"""E(v) below this: nothing to explain, verdict ``inconclusive``."""
RHO_MAX = 0.5
"""Row retention ρ = E(v̂_row)/E(v) below this is part of the patch signature."""
SIGMA_FRAC = 0.25
"""Superadditivity σ ≥ SIGMA_FRAC·E(v) is part of the patch signature."""
EPSILON_MIN = 0.2
"""Excess over the full-component patch ε ≥ this is part of the patch signature."""
PHI_MIN = 0.5
"""Phantom fraction Φ ≥ this (credit through dormant units) is the flow signature."""
CANCELLATION_MIN = 2.0
"""Cancellation ratio R ≥ this (subspace and complement cancel) is the flow signature."""

_MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")
Metric = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Thresholds:
    """The verdict's thresholds; the defaults are the module constants."""

    min_effect: float = MIN_EFFECT
    rho_max: float = RHO_MAX
    sigma_frac: float = SIGMA_FRAC
    epsilon_min: float = EPSILON_MIN
    phi_min: float = PHI_MIN
    cancellation_min: float = CANCELLATION_MIN


@dataclass(frozen=True)
class IllusionReport:
    """Every number behind the illusion verdict (see the module docstring).

    Tensors: ``basis`` ``[d, k]``, ``reader`` ``[d, n_read]``, ``v_row`` and ``v_null`` ``[d, k]``.
    ``metric_base``/``metric_source`` are means over examples. An effect is the patched change
    projected on the per-example gap, ``E = Σ_i (y_patch,i − y_base,i)(y_src,i − y_base,i) /
    Σ_i (y_src,i − y_base,i)²`` (1 = the source's value, 0 = no change; for a scalar metric or equal
    gaps this is ``(y_patch − y_base)/(y_src − y_base)``, and it stays defined for symmetric
    pairs); ``effect_row`` / ``effect_null`` are 0 when that part is empty; ``rho`` is ``None`` when ``E(v) = 0``.
    ``dormancy`` maps ``"v"``, ``"row"``, ``"null"`` to :class:`DormancyStats` (``None``: empty part).
    ``rowspace_uninformative``: the rowspace test could not separate (see the module docstring);
    ``checks``: ``(check, what happened)`` for the effect size, the rowspace test, the flow check and
    dormancy, in that order.
    """

    hook_name: str
    k: int
    reader_rank: int
    row_norm: float
    null_norm: float
    metric_base: float
    metric_source: float
    effect_v: float
    effect_row: float
    effect_null: float
    effect_full: float
    effect_row_unnormalized: float | None
    rho: float | None
    sigma: float
    epsilon: float
    phi: float | None
    dormancy: dict[str, DormancyStats | None]
    flow: FlowCheck | None
    rowspace_uninformative: bool
    verdict: str
    reasons: tuple[str, ...]
    thresholds: Thresholds
    checks: tuple[tuple[str, str], ...]
    basis: Tensor = field(repr=False)
    reader: Tensor = field(repr=False)
    v_row: Tensor = field(repr=False)
    v_null: Tensor = field(repr=False)

    def rows(self) -> list[tuple[str, str, float | None]]:
        """``(section, name, value)`` for every scalar in the report."""
        out: list[tuple[str, str, float | None]] = [
            ("geometry", "k", float(self.k)),
            ("geometry", "reader_rank", float(self.reader_rank)),
            ("geometry", "row_norm", self.row_norm),
            ("geometry", "null_norm", self.null_norm),
            ("metric", "base", self.metric_base),
            ("metric", "source", self.metric_source),
        ]
        for name in ("v", "row", "null", "full", "row_unnormalized"):
            out.append(("effect", name, getattr(self, f"effect_{name}")))
        out += [("scalar", n, getattr(self, n)) for n in ("rho", "sigma", "epsilon", "phi")]
        for part, stats in self.dormancy.items():
            for f in ("variance", "z_shift", "out_of_range"):
                out.append((f"dormancy[{part}]", f, None if stats is None else getattr(stats, f)))
        if self.flow is not None:
            for f in fields(self.flow):
                value = getattr(self.flow, f.name)
                if not isinstance(value, str):
                    out.append(("flow", f.name, None if value is None else float(value)))
        out += [("threshold", f.name, getattr(self.thresholds, f.name)) for f in fields(self.thresholds)]
        return out

    def to_dataframe(self) -> Any:
        """A ``pandas.DataFrame`` with columns ``section``, ``name``, ``value``."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=["section", "name", "value"])

    def __str__(self) -> str:
        lines = [f"IllusionReport at {self.hook_name} (k={self.k}): verdict = {self.verdict}"]
        lines += [f"  - {r}" for r in self.reasons]
        lines.append("  checks:")
        lines += [f"    {name}: {status}" for name, status in self.checks]
        for section, name, value in self.rows():
            shown = "—" if value is None else f"{value:.4g}"
            lines.append(f"  {section:<18} {name:<20} {shown}")
        return "\n".join(lines)


def _rowspace_issue(rank: int, k: int, d: int, null_dim: int) -> str | None:
    """Why the rowspace test cannot separate directions here, or None when it can."""
    if rank <= k:
        return f"rank(W) <= k ({rank} <= {k}): the unit row patch transfers the whole read-out"
    if rank >= d:
        return f"rank(W) = d = {d}: the readers' row space is the whole space, so v has no nullspace part"
    if null_dim == 0:
        return "v lies in the row space of W (no nullspace part), so rho = 1 by construction"
    return None


def _flow_text(flow: FlowCheck) -> str:
    phi = "—" if flow.phantom_fraction is None else f"{flow.phantom_fraction:.3g}"
    r = "—" if flow.cancellation_ratio is None else f"{flow.cancellation_ratio:.3g}"
    return f"phantom fraction Phi = {phi}, cancellation ratio R = {r}"


def _verdict(
    e_v: float, e_full: float, rho: float | None, sigma: float, eps: float, flow: FlowCheck | None,
    issue: str | None, t: Thresholds,
) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]:
    checks: list[tuple[str, str]] = [("effect size", f"E(v) = {e_v:.3g} (min_effect = {t.min_effect})")]
    patch_sig = (rho is not None and rho < t.rho_max and (sigma >= t.sigma_frac * e_v or eps >= t.epsilon_min))
    scalars = f"rho = {'—' if rho is None else f'{rho:.3g}'}, sigma = {sigma:.3g}, epsilon = {eps:.3g}"
    if patch_sig:
        checks.append(("rowspace test", f"ran: {scalars}; patch signature met"))
    elif issue is None:
        checks.append(("rowspace test", f"ran: {scalars}; patch signature not met"))
    else:
        checks.append(("rowspace test", f"uninformative: {issue}; its negative result ({scalars}) is not used"))
    flow_sig: list[str] = []
    if flow is None:
        checks.append(("DePass flow check", "not run (pass logit_tokens=(answer, other))"))
    else:
        phi, r = flow.phantom_fraction, flow.cancellation_ratio
        if phi is not None and phi >= t.phi_min:
            flow_sig.append(f"flow signature: phantom fraction Phi = {phi:.3g} >= {t.phi_min}")
        if r is not None and r >= t.cancellation_min:
            flow_sig.append(f"flow signature: cancellation ratio R = {r:.3g} >= {t.cancellation_min}")
        checks.append(("DePass flow check", f"ran: {_flow_text(flow)}; flow signature {'met' if flow_sig else 'not met'}"))
    checks.append(("dormancy", "reported, not used in the verdict"))
    if e_v < t.min_effect:
        return "inconclusive", (f"E(v) = {e_v:.3g} < min_effect = {t.min_effect}: nothing to explain",), tuple(checks)
    reasons: list[str] = []
    if patch_sig:
        reasons.append(
            f"patch signature: rho = {rho:.3g} < {t.rho_max} and (sigma = {sigma:.3g} >= "
            f"{t.sigma_frac}·E(v) or epsilon = {eps:.3g} >= {t.epsilon_min})"
        )
    elif issue is not None:
        reasons.append(f"the rowspace test is uninformative here ({issue}); "
                       + ("the verdict rests only on the DePass flow check" if flow is not None
                          else "the flow check was not run (pass logit_tokens=(answer, other)), so nothing can decide"))
    reasons += flow_sig
    if eps >= t.epsilon_min and not patch_sig:
        reasons.append(f"E(v) = {e_v:.3g} exceeds the whole-site patch E(full) = {e_full:.3g} (epsilon = {eps:.3g} "
                       f">= {t.epsilon_min}): the direction moves the output more than patching the whole activation")
    if patch_sig or flow_sig:
        return "illusion_suspected", tuple(reasons), tuple(checks)
    if issue is not None and flow is None:
        return "inconclusive", tuple(reasons), tuple(checks)
    if issue is not None:
        reasons.append(f"no flow signature ({_flow_text(flow)})")  # type: ignore[arg-type]
    else:
        reasons.append("no patch signature" + (" (flow check not run)" if flow is None else " and no flow signature"))
    return "faithful", tuple(reasons), tuple(checks)


def illusion_report(
    model: Any,
    base_tokens: Int[Tensor, "batch pos"],
    source_tokens: Int[Tensor, "batch_s pos_s"],
    hook_name: str,
    basis: Any,
    metric: Metric,
    *,
    pos: Positions = -1,
    reader: Float[Tensor, "d_w n_read"] | None = None,
    logit_tokens: tuple[AnswerTokens, AnswerTokens] | None = None,
    rtol: float | None = None,
    thresholds: Thresholds | None = None,
) -> IllusionReport:
    """Audit a subspace patch for the interpretability illusion.

    Args:
        model: A ``HookedTransformer``.
        base_tokens: Base (TL: corrupted) inputs ``[batch, pos]``; the patched run.
        source_tokens: Source (TL: clean) inputs, same shape; they supply the patched values.
        hook_name: Full TL hook name of the site (``[batch, pos, d]`` activation).
        basis: Orthonormal ``[d, k]`` basis or unit vector ``[d]``.
        metric: ``logits -> [batch] or scalar`` (per-example values are better: see
            :class:`IllusionReport` for how effects are normalised).
        pos: Site positions (default: last).
        reader: Downstream weights ``[d, n_read]`` (row convention); required unless the site is
            ``blocks.L.mlp.hook_post`` (default ``model.W_out[L]``).
        logit_tokens: ``(answer, other)`` for the DePass flow check; ``None`` skips it. Each is one
            token id (or a single-token string of the model's tokenizer), or one id per example (``[batch]``, e.g. each prompt's own names; the flow
            check runs on base and source, so each example's pair is used for both of its runs).
        rtol: Relative SVD rank tolerance for ``W``.
        thresholds: Verdict thresholds (default: the module constants).

    Returns:
        An :class:`IllusionReport`.

    Raises:
        DePassError: Bad shapes or basis, unknown hook, missing reader, or base and source runs with
            the same metric (effects cannot be normalised).

    Examples:
        >>> import torch
        >>> from depass_tl.subspace_patching.examples import distilled_model, distilled_tokens, logit_diff
        >>> model = distilled_model()  # h = (x, 0, x), y = (0, 2, 1)·h
        >>> v = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2**0.5
        >>> rep = illusion_report(model, distilled_tokens(1), distilled_tokens(2),
        ...                       "blocks.0.mlp.hook_post", v, logit_diff, logit_tokens=(0, 3))
        >>> round(rep.effect_v, 6), round(rep.row_norm, 4), rep.verdict
        (1.0, 0.6325, 'illusion_suspected')
    """
    t = thresholds or Thresholds()
    if base_tokens.ndim != 2 or base_tokens.shape != source_tokens.shape:
        raise DePassError(
            f"base_tokens and source_tokens must both be [batch, pos] of the same shape, got "
            f"{tuple(base_tokens.shape)} and {tuple(source_tokens.shape)}"
        )
    if hook_name not in model.hook_dict:
        raise DePassError(f"hook {hook_name!r} is not a hook of this model (see model.hook_dict)")
    with torch.no_grad():
        base_logits, base_cache = model.run_with_cache(base_tokens, names_filter=[hook_name])
        source_logits, source_cache = model.run_with_cache(source_tokens, names_filter=[hook_name])
    h_base, h_src = base_cache[hook_name].detach(), source_cache[hook_name].detach()
    if h_base.ndim != 3:
        raise DePassError(f"the report needs a [batch, pos, d] site, {hook_name!r} is {tuple(h_base.shape)}")
    v = as_basis(basis, d=h_base.shape[-1]).detach().to(h_base.dtype)
    k = v.shape[1]
    if reader is None:
        match = _MLP_POST.match(hook_name)
        if match is None:
            raise DePassError(
                f"no default downstream weights for {hook_name!r}; pass reader=[d_site, n_read], e.g. "
                "stacked W_Q of the reading heads or W_U columns (only blocks.L.mlp.hook_post defaults "
                "to W_out[L])"
            )
        reader = model.W_out[int(match.group(1))]
    w = reader.detach().to(h_base.dtype)
    split = row_null_split(v, w, rtol=rtol)

    y_base = metric_per_example(metric, base_logits).detach().to(torch.float64)
    y_src = metric_per_example(metric, source_logits).detach().to(torch.float64)
    m_base, m_src = float(y_base.mean()), float(y_src.mean())
    gap = y_src - y_base
    gap_sq = float((gap**2).sum())
    if gap_sq <= 1e-18 * max(1.0, float(y_base.abs().max()), float(y_src.abs().max())) ** 2:
        raise DePassError(
            f"the metric is the same on base and source runs (means {m_base:.6g} vs {m_src:.6g}); "
            "effects cannot be normalised: choose pairs whose outputs differ"
        )
    mask = position_mask(pos, n_batch=h_base.shape[0], n_pos=h_base.shape[1], device=h_base.device)

    def effect(patched_site: Tensor) -> float:
        with torch.no_grad():
            logits = model.run_with_hooks(
                base_tokens, fwd_hooks=[(hook_name, lambda act, hook: patched_site.to(act.dtype))]
            )
        y = metric_per_example(metric, logits).detach().to(torch.float64)
        return float(((y - y_base) * gap).sum()) / gap_sq

    def patched_by(b: Tensor) -> Tensor:
        return subspace_patch(h_base, h_src, b, pos=pos)

    e_v = effect(patched_by(v))
    e_row = effect(patched_by(split.row_basis)) if split.row_basis.shape[1] else 0.0
    e_null = effect(patched_by(split.null_basis)) if split.null_basis.shape[1] else 0.0
    e_full = effect(torch.where(mask[..., None], h_src, h_base))
    e_row_unnorm = None
    if k == 1:
        vr = split.v_row
        e_row_unnorm = effect(h_base + ((h_src - h_base) @ vr) @ vr.T * mask[..., None].to(h_base.dtype))

    delta = (h_src - h_base)[mask]  # [n, d]
    coeff = delta @ v
    denom = float((coeff**2).sum())
    phi = None if denom == 0.0 else float(((delta @ split.v_null) * coeff).sum()) / denom
    natural = torch.cat([h_base[mask], h_src[mask]])
    patched_rows = patched_by(v)[mask]
    dormancy = {
        name: dormancy_stats(b, natural, h_base[mask], patched_rows) if b.shape[1] else None
        for name, b in (("v", v), ("row", split.row_basis), ("null", split.null_basis))
    }
    flow = None
    if logit_tokens is not None:
        both = torch.cat([base_tokens, source_tokens])
        both_pos = torch.cat([pos, pos]) if isinstance(pos, Tensor) and pos.ndim == 1 else pos
        if not isinstance(logit_tokens, (tuple, list)) or len(logit_tokens) != 2:
            raise DePassError(f"logit_tokens must be (answer, other) token ids or single-token strings, got {logit_tokens!r}")
        n, d_vocab = base_tokens.shape[0], int(model.W_U.shape[-1])
        lookup = single_token_fn(model)  # single-token strings through the model's tokenizer
        pair = tuple(answer_ids(t, n, d_vocab, lookup).repeat(2) for t in logit_tokens)
        flow = subspace_flow(model, both, hook_name, v, logit_tokens=pair, pos=both_pos)

    rho = None if e_v == 0.0 else e_row / e_v
    sigma = e_v - e_row - e_null
    eps = e_v - e_full
    issue = _rowspace_issue(split.rank, k, v.shape[0], split.null_basis.shape[1])
    verdict, reasons, checks = _verdict(e_v, e_full, rho, sigma, eps, flow, issue, t)
    return IllusionReport(
        hook_name=hook_name, k=k, reader_rank=split.rank, row_norm=split.row_norm,
        null_norm=split.null_norm, metric_base=m_base, metric_source=m_src, effect_v=e_v,
        effect_row=e_row, effect_null=e_null, effect_full=e_full,
        effect_row_unnormalized=e_row_unnorm, rho=rho, sigma=sigma, epsilon=eps, phi=phi,
        dormancy=dormancy, flow=flow, rowspace_uninformative=issue is not None, verdict=verdict,
        reasons=reasons, thresholds=t, checks=checks, basis=v, reader=w, v_row=split.v_row, v_null=split.v_null,
    )
