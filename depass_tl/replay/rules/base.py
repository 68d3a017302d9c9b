"""The rule protocol: :class:`MLPRule`, its statistics :class:`RuleStats`, and what a rule reads (:class:`Neurons`).

See :mod:`depass_tl.replay.rules` for what the methods mean and how the engine calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["DEFAULT_TEMPERATURE", "Neurons", "RuleStats", "MLPRule"]

DEFAULT_TEMPERATURE = 0.1


@dataclass(frozen=True)
class Neurons:
    """The clean tensors of one MLP that a rule may read, restricted to a chunk's positions.

    Attributes:
        target: what the components share, ``[batch, pos, d_mlp]``: the activation's output
            (``hook_post``; ``hook_mid`` for ``solu_ln``); gated MLPs: ``hook_post − b_in`` =
            ``act(gate) ⊙ linear``; a MoE expert: its ``hook_post`` ``[routed, d_mlp]``.
        pre: the activation's input (``hook_pre``; gated: the gate pre-activation; MoE: ``hook_gate``).
        gated: the MLP is gated (``post = act(x W_gate) ⊙ (x W_in)``).
        gate_act: gated: the frozen ``act(pre)``.
        linear: gated: the clean linear path ``x W_in`` (``hook_pre_linear``); None for MoE experts.
        solu_softmax: ``solu`` / ``solu_ln``: the frozen ``softmax(pre)`` over ``d_mlp``.
    """

    target: Tensor
    pre: Tensor | None = None
    gated: bool = False
    gate_act: Tensor | None = None
    linear: Tensor | None = None
    solu_softmax: Tensor | None = None


class RuleStats:
    """Per-``(batch, pos, neuron)`` statistics of a competitive rule over one group's components.

    Shape ``(init / fold / merge / allocate)``: :meth:`MLPRule.init_stats` makes empty statistics;
    :meth:`fold` adds a chunk of components; :meth:`merge` adds statistics folded elsewhere; once every
    component of the group has been folded (here or merged in), :meth:`allocate` splits the target of
    any chunk. Chunks hold consecutive components ``row0 .. row0 + n_rows - 1`` of the group and
    positions ``lo:``; the statistics cover every position.
    """

    def fold(self, keys: Tensor, row0: int, lo: int, *, keep: bool = False) -> Any:
        """Fold a chunk's keys ``[chunk, batch, pos - lo, d_mlp]`` into the statistics.

        With ``keep`` (only asked of rules with :attr:`MLPRule.caches_keys`) return what
        :meth:`allocate` should receive instead of the keys (e.g. the chunk's exponentials); the
        keys themselves may be consumed. Otherwise return None.
        """
        raise NotImplementedError

    def merge(self, other: RuleStats) -> None:
        """Add statistics folded over other components of the same group (in place)."""
        raise NotImplementedError

    def allocate(self, keys: Any, target: Tensor, bias_rows: Tensor, row0: int, n_rows: int, lo: int) -> Tensor:
        """The chunk's shares ``[n_rows, batch, pos - lo, d_mlp]`` of ``target`` ``[batch, pos - lo, d_mlp]``.

        ``keys``: the chunk's keys, or what :meth:`fold` returned with ``keep``; None when the rule
        does not read keys here (:attr:`MLPRule.reads_keys` False). ``bias_rows``: the chunk's local
        index of its group's bias component (empty when the chunk does not hold it); where no
        component of the group is active, those rows get the whole target.
        """
        raise NotImplementedError


class MLPRule:
    """How an MLP's frozen activation is split among components (see the module docstring).

    Attributes:
        name: the registry name (``mlp_rule="name"``).
        linear: shares are ``slope ⊙ key`` with a frozen slope (implement :meth:`slope`); otherwise
            the rule is competitive (implement :meth:`init_stats` and :meth:`stats_bytes`).
        gated_keys: on gated MLPs, the keys are the gate contributions (``"gate"``, ``ln2_c W_gate``)
            or the linear ones (``"in"``, ``ln2_c W_in``). Standard MLPs always use ``ln2_c W_in``.
        caches_keys: :meth:`RuleStats.fold` can keep, per chunk, what :meth:`RuleStats.allocate`
            needs (the planner budgets ``d_mlp`` elements per component and position for it).
        reads_keys: :meth:`RuleStats.allocate` reads the chunk's keys (False: the statistics say it all).
    """

    name: str = ""
    linear: bool = False
    gated_keys: Literal["gate", "in"] = "gate"
    caches_keys: bool = False
    reads_keys: bool = True

    # ------------------------------------------------------------------------------ linear rules
    def slope(self, neurons: Neurons) -> tuple[Tensor, Tensor | None]:
        """Linear rules: the frozen slope ``[batch, pos, d_mlp]`` (``share_c = slope ⊙ key_c``) and
        where it is undefined (bool, the target goes to the bias component there; None: nowhere)."""
        raise NotImplementedError(f"rule {self.name!r} is not linear")

    # ------------------------------------------------------------------------- competitive rules
    def init_stats(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> RuleStats:
        """Empty statistics of shape ``[batch, pos, d_mlp]`` (the identity of :meth:`RuleStats.merge`)."""
        raise NotImplementedError(f"rule {self.name!r} keeps no statistics")

    def stats_bytes(self, itemsize: int) -> int:
        """Bytes of statistics per group and ``(batch, pos, neuron)`` (``itemsize``: the accumulation dtype's)."""
        return 0

    # ------------------------------------------------------------------------------- both kinds
    def with_temperature(self, temperature: float) -> MLPRule:
        """This rule with a softmax temperature; rules without one ignore it (the ``temperature=`` keyword)."""
        return self

    def share(self, keys: Tensor, target: Tensor, bias_rows: Tensor, group_size: int) -> Tensor:
        """One-shot shares of every component ``[component, batch, pos, d_mlp]`` (competitive rules).

        ``keys`` hold whole groups of ``group_size`` consecutive components; ``bias_rows`` their bias
        rows. The default folds each group into fresh statistics and allocates; rules may override
        it with a direct formula (the built-ins do).
        """
        parts = []
        for g in range(keys.shape[0] // group_size):
            k = keys[g * group_size : (g + 1) * group_size]
            stats = self.init_stats(tuple(target.shape), k.dtype, k.device)
            cached = stats.fold(k, 0, 0, keep=self.caches_keys)
            local = bias_rows[(bias_rows >= g * group_size) & (bias_rows < (g + 1) * group_size)] - g * group_size
            use = cached if self.caches_keys else (k if self.reads_keys else None)
            parts.append(stats.allocate(use, target, local, 0, group_size, 0))
        return torch.cat(parts)

    def split(self, keys: Tensor, neurons: Neurons, bias_rows: Tensor, group_size: int) -> Tensor:
        """Shares of ``neurons.target`` for ``keys`` holding whole groups (any rule)."""
        if not self.linear:
            return self.share(keys, neurons.target, bias_rows, group_size)
        slope, undefined = self.slope(neurons)
        out = slope * keys
        if undefined is not None:
            out[bias_rows] += torch.where(undefined, neurons.target, torch.zeros_like(neurons.target))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
