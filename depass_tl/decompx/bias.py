"""Bias policies: where the constant terms of the network go.

Every affine layer adds a bias ``b`` to a sum of components ``V = Σ_c V_c``. A policy says which
component receives it:

* ``"bias"`` (default, DePass style): an explicit last component, labelled ``bias``, collects every
  bias (attention ``b_V``/``b_O``, LayerNorm ``β``, MLP ``b_in``/``b_out``, pooler, classifier).
* ``"absdot"``, ``"norm"``, ``"equal"`` (DecompX, Modarressi et al. 2023, §1.3 of the notes): no
  bias component; ``b`` is split over the token components with weights ``w_c`` computed on the
  vector the bias is added to, ``ŵ_c = w_c / Σ_c w_c``, and ``V_c ← V_c + ŵ_c b``:

  - ``absdot``: ``w_c = |V_c · b|`` (the paper's AbsDot, the official default);
  - ``norm``: ``w_c = ‖V_c‖₂``;
  - ``equal``: ``w_c = 1`` if ``V_c ≠ 0`` else ``0``.

  Unlike the official code (``Σ w + 1e-12``) the weights are normalised exactly, so the split is
  complete to float precision. When every weight is zero (a zero bias, or all ``V_c ⟂ b`` under
  absdot) the bias goes to the component of the row's own token (position ``i`` for a per-position
  vector, ``[CLS]`` for the pooler and classifier), so nothing is lost.

Pure tensor code: no hooks, no model.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from depass_tl.errors import DePassError

__all__ = ["BIAS_POLICIES", "BiasPolicy", "add_bias", "check_bias_policy"]

BiasPolicy = Literal["bias", "absdot", "norm", "equal"]
BIAS_POLICIES: tuple[str, ...] = get_args(BiasPolicy)


def check_bias_policy(policy: object) -> BiasPolicy:
    """Return ``policy`` if it is a known bias policy, else raise :class:`DePassError`."""
    if not isinstance(policy, str) or policy not in BIAS_POLICIES:
        raise DePassError(f"bias_policy={policy!r} is not known; choose one of {list(BIAS_POLICIES)}")
    return policy  # type: ignore[return-value]


def _weights(V: Tensor, b: Tensor, policy: BiasPolicy) -> Tensor:
    """Unnormalised weights ``[component, *rest]`` for ``V [component, *rest, D]``."""
    if policy == "absdot":
        return (V * b).sum(-1).abs()
    if policy == "norm":
        return torch.linalg.vector_norm(V, dim=-1)
    if policy == "equal":
        return (V != 0).any(-1).to(V.dtype)
    raise DePassError(f"bias policy {policy!r} does not distribute biases")  # internal misuse


def add_bias(V: Tensor, b: Tensor, policy: BiasPolicy, *, own: Tensor) -> Tensor:
    """Add ``b`` to the component stack ``V`` following ``policy``; returns a new tensor.

    Args:
        V: components ``[component, *rest, D]``. Under ``"bias"`` the last component is the bias
            component.
        b: the bias, broadcastable to ``[*rest, D]``.
        policy: one of :data:`BIAS_POLICIES`.
        own: one-hot ``[component, *rest']`` (broadcastable to ``V.shape[:-1]``): the component that
            takes the bias when every weight is zero. Ignored under ``"bias"``.

    Returns:
        ``V'`` with ``Σ_c V'_c = Σ_c V_c + b``.

    Examples:
        >>> V = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # two components, D = 2
        >>> # |V_c · b| = 2 and 6, so the shares are 1/4 and 3/4
        >>> add_bias(V, torch.tensor([2.0, 2.0]), "absdot", own=torch.tensor([1.0, 0.0]))
        tensor([[1.5000, 0.5000],
                [1.5000, 4.5000]])
    """
    if policy == "bias":
        out = V.clone()
        out[-1] = out[-1] + b
        return out
    w = _weights(V, b, policy)
    total = w.sum(0, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    share = torch.where(total > 0, w / safe, own.to(w).expand_as(w))
    return V + share.unsqueeze(-1) * b
