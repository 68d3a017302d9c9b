"""``taylor`` (the official DePass code's ``taylor``): each neuron split along its activation's input.

The activation is linearised exactly at its clean input: ``act(g) = (act(g) / g) · g``, with the
slope ``act(g) / g`` frozen, and each component gets ``(act(g) / g) · γ_c`` of it, where ``γ_c`` is
its contribution to ``g``. On a gated MLP (``post = act(x W_gate) ⊙ (x W_in)``) ``g`` is the *gate*
pre-activation, so the keys are the gate contributions ``γ_c = ln2_c W_gate`` and the up-projection
``x W_in`` is taken whole (clean): ``share_c = (act(g) / g) ⊙ (x W_in) ⊙ γ_c = (post / g) ⊙ γ_c``.
That is the official formula ``W_down[(SiLU(g) / (g + 1e-8)) ⊙ γ_c ⊙ W_up x̂]``, without the ``1e-8``
guard: where ``g == 0`` the neuron goes to the bias component (its target is ``act(0) · x W_in``, 0
for SiLU/GELU/ReLU). On a non-gated MLP ``g`` is the pre-activation and ``taylor`` is ``ratio``.

Both ``taylor`` and ``ratio`` are linear in the components (reverse mode applies) and exact; on gated
MLPs they allocate differently: ``ratio`` freezes ``act(gate)`` and splits along ``x W_in``,
``taylor`` freezes ``x W_in`` and ``act(g) / g`` and splits along the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from depass_tl.replay.rules.base import Neurons
from depass_tl.replay.rules.ratio import Ratio

__all__ = ["Taylor"]


@dataclass(frozen=True, repr=False)
class Taylor(Ratio):
    """``taylor``: ``share_c = (act(g) / g) ⊙ γ_c`` (official DePass); on gated MLPs ``γ_c = ln2_c W_gate``
    and the linear path is frozen; non-gated MLPs: the same as :class:`~depass_tl.replay.rules.Ratio`.

    Examples:
        >>> import torch
        >>> from depass_tl.replay.rules import Neurons, get_rule
        >>> g, lin = torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[3.0, 5.0]]])  # gate and up pre-activations
        >>> post = torch.relu(g) * lin
        >>> n = Neurons(post, g, gated=True, gate_act=torch.relu(g), linear=lin)
        >>> slope, undefined = get_rule("taylor").slope(n)
        >>> slope.tolist(), undefined.tolist()  # relu(2)/2 * 3 = 3; g = 0: to the bias component
        ([[[3.0, 0.0]]], [[[False, True]]])
        >>> get_rule("taylor").linear, get_rule("taylor").gated_keys
        (True, 'gate')
    """

    name = "taylor"
    gated_keys = "gate"

    def slope(self, neurons: Neurons) -> tuple[Tensor, Tensor | None]:
        if not neurons.gated:
            return super().slope(neurons)
        pre = neurons.pre
        assert pre is not None
        nonzero = pre != 0
        safe = torch.where(nonzero, pre, torch.ones_like(pre))
        if neurons.linear is not None and neurons.gate_act is not None:  # no cancellation against b_in
            slope = neurons.gate_act / safe * neurons.linear
        else:  # MoE experts: the target is act(gate) ⊙ linear itself
            slope = neurons.target / safe
        return torch.where(nonzero, slope, torch.zeros_like(slope)), ~nonzero
