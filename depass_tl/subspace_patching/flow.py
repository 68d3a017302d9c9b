"""DePass flow check: how a subspace's share of a site reaches a logit difference.

The site activation ``h`` at the patched positions is split into the subspace part ``P h``
(``P = V Vᵀ``) and the complement ``(I − P) h``; both are pushed to the logits by DePass with frozen
attention patterns, norm scales and MLP slopes (``mlp_rule="ratio"``, which is linear), and their
contributions to ``logit[answer] − logit[other]`` at the last position are read off
(:func:`depass_tl.run_with_depass`, :meth:`depass_tl.DePassCache.logit_attrs`).

Output-level credit alone cannot tell a faithful subspace from an illusory one (reference/illusion.md
§5.6: for a linear downstream the patch effect *is* the change of the subspace's credit). What
separates them is the pathway: at an MLP hidden site (``blocks.L.mlp.hook_post``) each part is further
split by *unit activity*: units whose activation is (nearly) constant on the data are *dormant*.
The scores (summed over examples of absolute per-example credits):

* phantom fraction ``Φ = |s_dormant| / (|s_dormant| + |s_active|)``: the share of the subspace's
  credit that runs through dormant units;
* cancellation ratio ``R = (|s_d| + |s_a| + |c_d| + |c_a|) / (|s_d + c_d| + |s_a + c_a|)``: how much
  subspace and complement credit cancel (1 = no cancellation).

Units are grouped (dormant vs active) rather than resolved one by one, which keeps the replay at five
components for any ``d_mlp``; Φ and R are therefore computed per group, which equals the per-unit
definition whenever the credits inside a group share a sign (as in the distilled example).
At a residual site (``blocks.L.hook_resid_pre/mid/post``) there are no units: only the output-level
credits and ``R`` (with one group) are reported, ``Φ`` is ``None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.subspace_patching.linalg import as_basis
from depass_tl.subspace_patching.setters import Positions, position_mask
from depass_tl.tokenization import AnswerTokens, answer_ids, single_token_fn

__all__ = ["DORMANT_UNIT_REL_STD", "FlowCheck", "subspace_flow"]

DORMANT_UNIT_REL_STD = 1e-2
"""A unit is dormant when its standard deviation over the data (site positions of the base and source
runs) is at most this fraction of the root-mean-square standard deviation over all units."""

_MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")
_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")


@dataclass(frozen=True)
class FlowCheck:
    """Numbers of the DePass flow check (see the module docstring).

    Attributes:
        site_kind: ``"mlp_hidden"`` or ``"residual"``.
        start_hook: Hook where the DePass replay starts.
        subspace_credit: Mean over examples of the subspace's logit-difference credit.
        complement_credit: Same for the complement at the site positions.
        actual_credit: ``subspace_credit + complement_credit``.
        subspace_dormant: Σ_examples |credit| of the subspace through dormant units (MLP sites).
        subspace_active: Same through active units (for residual sites: the whole subspace).
        complement_dormant: Σ |credit| of the complement through dormant units.
        complement_active: Same through active units.
        n_dormant_units: Number of dormant units (MLP sites; 0 otherwise).
        phantom_fraction: Φ, ``None`` at residual sites or when the subspace has no credit.
        cancellation_ratio: R; ``inf`` when the site's actual credit is zero but its parts are not
            (complete cancellation), ``None`` when everything is zero.
        completeness_error: Max |Σ components − clean logit difference| of the replay.
    """

    site_kind: str
    start_hook: str
    subspace_credit: float
    complement_credit: float
    actual_credit: float
    subspace_dormant: float
    subspace_active: float
    complement_dormant: float
    complement_active: float
    n_dormant_units: int
    phantom_fraction: float | None
    cancellation_ratio: float | None
    completeness_error: float


def _ratio(num: float, den: float, scale: float) -> float | None:
    """``num / den``; ``inf`` when only ``den`` is zero and ``None`` when both are (up to rounding
    relative to ``scale``)."""
    tiny = 1e-9 * scale
    if den <= tiny:
        return None if num <= tiny else float("inf")
    return num / den


def subspace_flow(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str,
    basis: Any,
    *,
    logit_tokens: tuple[AnswerTokens, AnswerTokens],
    pos: Positions = -1,
) -> FlowCheck:
    """Run the DePass flow check for a subspace at an MLP hidden site or a residual site.

    Args:
        model: A ``HookedTransformer``.
        tokens: ``[batch, pos]`` data (e.g. base and source inputs concatenated).
        hook_name: ``blocks.L.mlp.hook_post`` or ``blocks.L.hook_resid_pre|mid|post``.
        basis: Orthonormal ``[d, k]`` basis or unit vector.
        logit_tokens: ``(answer, other)``: the credit is to ``logit[answer] − logit[other]`` at the
            last position. Each is one token id (or a single-token string, looked up with the model's
            tokenizer) for every example, or one per example (a list or a ``[batch]`` integer tensor),
            e.g. each prompt's own pair of names.
        pos: The site positions that are split (others stay in the complement's ``rest``).

    Returns:
        A :class:`FlowCheck`.

    Raises:
        DePassError: For another kind of site, or an MLP whose output is not ``post @ W_out + b_out``.

    Examples:
        >>> import torch
        >>> from depass_tl.subspace_patching.examples import distilled_model, distilled_tokens
        >>> v = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2**0.5
        >>> flow = subspace_flow(distilled_model(), distilled_tokens(1, 2), "blocks.0.mlp.hook_post",
        ...                      v, logit_tokens=(0, 3))
        >>> round(flow.phantom_fraction, 6), round(flow.cancellation_ratio, 6)
        (1.0, 3.0)
    """
    from depass_tl.api import run_with_depass  # the core API; imported here so the subspace tools load without it
    from depass_tl.components import custom

    mlp = _MLP_POST.match(hook_name)
    resid = _RESID.match(hook_name)
    if mlp is None and resid is None:
        raise DePassError(
            f"the flow check supports blocks.L.mlp.hook_post and blocks.L.hook_resid_pre/mid/post, "
            f"got {hook_name!r}"
        )
    if not isinstance(logit_tokens, (tuple, list)) or len(logit_tokens) != 2:
        raise DePassError(f"logit_tokens must be (answer, other) token ids or single-token strings, got {logit_tokens!r}")
    d_vocab = int(model.W_U.shape[-1])
    lookup = single_token_fn(model)  # strings through the model's tokenizer, as logit_attrs takes them
    answer, other = (answer_ids(t, tokens.shape[0], d_vocab, lookup) for t in logit_tokens)
    layer = int((mlp or resid).group(1))  # type: ignore[union-attr]
    start_hook = f"blocks.{layer}.hook_resid_post" if mlp is not None else hook_name
    names = [hook_name, start_hook] + ([f"blocks.{layer}.hook_mlp_out"] if mlp is not None else [])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    h = cache[hook_name].detach()
    start = cache[start_hook].detach()
    v = as_basis(basis, d=h.shape[-1]).detach().to(dtype=h.dtype, device=h.device)
    mask = position_mask(pos, n_batch=h.shape[0], n_pos=h.shape[1], device=h.device)
    m = mask[..., None].to(h.dtype)  # [batch, pos, 1]
    sub = (h @ v) @ v.T * m  # subspace part at the site positions
    comp = (h - (h @ v) @ v.T) * m  # complement part at the site positions

    if mlp is not None:
        w_out = model.W_out[layer].detach().to(h.dtype)
        b_out = model.b_out[layer].detach().to(h.dtype)
        mlp_out = cache[f"blocks.{layer}.hook_mlp_out"].detach()
        err = float((h @ w_out + b_out - mlp_out).abs().max())
        if err > 1e-4 * max(1.0, float(mlp_out.abs().max())):
            raise DePassError(
                f"hook_mlp_out of layer {layer} is not hook_post @ W_out + b_out (max error {err:.3g}); "
                "the flow check for this MLP type is not supported"
            )
        site = h[mask]  # [n, d_mlp]
        if site.shape[0] < 2:
            raise DePassError(
                f"the flow check needs at least two (example, position) pairs at the site to tell "
                f"dormant units from active ones, got {site.shape[0]}; pass more examples"
            )
        std = site.std(dim=0, correction=0)
        rms = float(std.pow(2).mean().sqrt())
        dormant = (std <= DORMANT_UNIT_REL_STD * rms).to(h.dtype)
        parts = [sub * dormant, sub * (1 - dormant), comp * dormant, comp * (1 - dormant)]
        written = [p @ w_out for p in parts]
        labels = ["subspace_dormant", "subspace_active", "complement_dormant", "complement_active"]
        n_dormant = int(dormant.sum())
    else:
        written = [sub, comp]
        labels = ["subspace_active", "complement_active"]
        n_dormant = 0
    stacked = torch.stack(written)
    rest = start - stacked.sum(0)
    x0 = torch.cat([stacked, rest[None]])
    spec = custom(start_hook, x0, labels=[*labels, "rest"])
    _, dc = run_with_depass(
        model, tokens, components=spec, mlp_rule="ratio", names_filter=["unembed.hook_in"]
    )
    attrs = dc.logit_attrs(answer, incorrect_tokens=other, pos=-1)  # [component, batch]
    with torch.no_grad():
        logits = model(tokens)
    last = logits[:, -1]
    clean_ld = last.gather(-1, answer.to(last.device)[:, None])[:, 0] - last.gather(-1, other.to(last.device)[:, None])[:, 0]
    completeness = float((attrs.sum(0) - clean_ld.to(attrs.dtype)).abs().max())

    def credit(label: str) -> Tensor:
        if label not in labels:
            return torch.zeros(attrs.shape[1], dtype=attrs.dtype)
        return attrs[dc.labels.index(label)]

    s_d, s_a = credit("subspace_dormant"), credit("subspace_active")
    c_d, c_a = credit("complement_dormant"), credit("complement_active")
    abs_sd, abs_sa = float(s_d.abs().sum()), float(s_a.abs().sum())
    abs_cd, abs_ca = float(c_d.abs().sum()), float(c_a.abs().sum())
    actual = float((s_d + c_d).abs().sum()) + float((s_a + c_a).abs().sum())
    scale = abs_sd + abs_sa + abs_cd + abs_ca
    return FlowCheck(
        site_kind="mlp_hidden" if mlp is not None else "residual",
        start_hook=start_hook,
        subspace_credit=float((s_d + s_a).mean()),
        complement_credit=float((c_d + c_a).mean()),
        actual_credit=float((s_d + s_a + c_d + c_a).mean()),
        subspace_dormant=abs_sd,
        subspace_active=abs_sa,
        complement_dormant=abs_cd,
        complement_active=abs_ca,
        n_dormant_units=n_dormant,
        phantom_fraction=_ratio(abs_sd, abs_sd + abs_sa, scale) if mlp is not None else None,
        cancellation_ratio=_ratio(scale, actual, scale),
        completeness_error=completeness,
    )
