"""How DecompX linearises an activation (the FFN's GELU, the MLM head's GELU, the pooler's tanh).

Every option is a linear :class:`~depass_tl.replay.rules.MLPRule`: each component's share of the
activation is ``slope ⊙ key_c``, ``key_c`` being the component's part of the pre-activation ``ζ``
(bias share included), with a slope frozen at the clean ``ζ``. The official DecompX options
(Modarressi et al., ACL 2023; ``FFN_approx_type`` / ``tanh_approx_type`` in its code):

* ``"zo"`` (official ``GeLU_ZO`` / tanh ``ZO``, the paper's default): the line through the origin,
  slope ``act(ζ) / ζ``. This is DePass's ``ratio`` rule from the rule registry. Exact:
  ``Σ_c slope ⊙ key_c = slope ⊙ ζ = act(ζ)``.
* ``"gelu_la"`` / tanh ``"la"`` (official ``GeLU_LA`` / ``LA``): the tangent line at ``ζ``, slope
  ``act'(ζ)`` (taken by autograd of the model's own activation; for the exact GELU this is the
  official ``Φ(ζ) + ζ φ(ζ)``), plus the offset ``act(ζ) − act'(ζ) ζ``, which is split over the
  components by the bias policy like a bias (the official code does so even without biases). Exact.
* ``"relu"`` (official ``ReLU``): slope ``1[ζ > 0]`` and no offset. Not exact on a GELU model: the
  decomposition misses ``GELU(ζ) − ReLU(ζ)``, and the result says so.

Pure tensor code: no hooks, no model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.replay.rules import MLPRule, Neurons, get_rule

__all__ = [
    "Approx", "FFNApprox", "FFN_APPROX", "ReluMask", "TanhApprox", "TANH_APPROX", "Tangent", "activation_approx",
]

FFNApprox = Literal["zo", "gelu_la", "relu"]
FFN_APPROX: tuple[str, ...] = get_args(FFNApprox)
TanhApprox = Literal["zo", "la"]
TANH_APPROX: tuple[str, ...] = get_args(TanhApprox)


@dataclass(frozen=True, repr=False)
class Tangent(MLPRule):
    """The tangent line of ``act`` at the clean pre-activation: slope ``act'(ζ)`` (autograd)."""

    act: Callable[[Tensor], Tensor] = field(default=torch.tanh)
    name = "tangent"
    linear = True

    def slope(self, neurons: Neurons) -> tuple[Tensor, Tensor | None]:
        assert neurons.pre is not None
        with torch.enable_grad():
            x = neurons.pre.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.act(x).sum(), x)
        return grad.detach(), None


@dataclass(frozen=True, repr=False)
class ReluMask(MLPRule):
    """ReLU's slope ``1[ζ > 0]`` for any activation (the official ``ReLU`` ablation)."""

    name = "relu"
    linear = True

    def slope(self, neurons: Neurons) -> tuple[Tensor, Tensor | None]:
        assert neurons.pre is not None
        return (neurons.pre > 0).to(neurons.target.dtype), None


@dataclass(frozen=True)
class Approx:
    """One activation's linearisation: the rule, whether the tangent offset is split like a bias, and
    whether the result is exact (shares summing to the clean activation)."""

    rule: MLPRule
    offset: bool
    exact: bool

    def shares(self, keys: Tensor, pre: Tensor, post: Tensor, bias_rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(shares [component, ...], offset or None)``: the components' shares of ``post`` and the tangent
        offset ``post − slope ⊙ pre`` still to be split (when :attr:`offset`)."""
        neurons = Neurons(target=post, pre=pre)
        shares = self.rule.split(keys, neurons, bias_rows, keys.shape[0])
        if not self.offset:
            return shares, None
        slope, _ = self.rule.slope(neurons)
        return shares, post - slope * pre


def activation_approx(kind: str, act: Callable[[Tensor], Tensor], act_fn: str, *, option: str) -> Approx:
    """The :class:`Approx` of an option value (``"zo"``, ``"gelu_la"`` / ``"la"``, ``"relu"``) for ``act``
    (named ``act_fn``; ``"relu"`` is exact on a ReLU model only).

    Raises:
        DePassError: an unknown value (``option`` names the keyword in the message).

    Examples:
        >>> a = activation_approx("la", torch.tanh, "tanh", option="tanh_approx")
        >>> pre = torch.tensor([[0.5, -2.0]]); keys = torch.stack([pre / 2, pre / 2])
        >>> shares, offset = a.shares(keys, pre, torch.tanh(pre), torch.tensor([], dtype=torch.long))
        >>> bool(torch.allclose(shares.sum(0) + offset, torch.tanh(pre)))
        True
    """
    allowed = TANH_APPROX if option == "tanh_approx" else FFN_APPROX
    if kind not in allowed:
        raise DePassError(f"{option}={kind!r} is not known; choose one of {list(allowed)}")
    if kind == "zo":
        return Approx(get_rule("ratio"), offset=False, exact=True)
    if kind == "relu":
        return Approx(ReluMask(), offset=False, exact=act_fn == "relu")
    return Approx(Tangent(act), offset=True, exact=True)
