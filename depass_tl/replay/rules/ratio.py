"""``ratio`` (DecompX's "ZO"): a frozen elementwise slope, linear in the components."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from depass_tl.replay.rules.base import MLPRule, Neurons

__all__ = ["Ratio"]


@dataclass(frozen=True, repr=False)
class Ratio(MLPRule):
    """``ratio``: a frozen elementwise slope ``post / pre`` (DecompX "ZO"); linear in the components.

    Standard MLPs: ``share_c = (post / pre) γ_c``, the target to the bias component where
    ``pre == 0``. Gated: ``act(gate) ⊙ (ln2_c W_in)`` (the MLP is linear in ``x W_in`` once the gate
    activation is frozen). SoLU: ``softmax(pre) ⊙ γ_c`` (the whole softmax vector frozen).
    """

    name = "ratio"
    linear = True
    gated_keys = "in"

    def slope(self, neurons: Neurons) -> tuple[Tensor, Tensor | None]:
        if neurons.gated:
            assert neurons.gate_act is not None
            return neurons.gate_act, None
        if neurons.solu_softmax is not None:
            return neurons.solu_softmax, None
        pre, target = neurons.pre, neurons.target
        assert pre is not None
        nonzero = pre != 0
        slope = torch.where(nonzero, target / torch.where(nonzero, pre, torch.ones_like(pre)), torch.zeros_like(pre))
        return slope, ~nonzero
