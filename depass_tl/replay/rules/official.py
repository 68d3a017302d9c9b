"""The official DePass code's edits to the MLP keys of its "component 0" (``ignore_special_token``).

Before normalising the keys ``γ`` (``gate_ratio``, ``[component, neuron, pos]``), the official
``mlp_decomposed_compute`` edits those of its first component, for the competitive rules (``softmax``,
``max``; its ``taylor`` makes no edit):

1. with ``ignore_special_token`` (token level only): ``γ_0 ← 0`` at every position, so component 0
   (the BOS token) is inactive and gets no MLP share at positions ``> 0``;
2. always: ``γ_0 ← 1`` at position 0 (``gate_ratio[0, :, 0] = 1``). In token mode component 0 is the
   only component present at position 0, so it keeps the whole MLP output there; in module / head
   mode component 0 is "the rest of the residual", which then competes at position 0 with key 1
   instead of its own key against the heads or modules.

:class:`OfficialKeyEdits` wraps a competitive rule and applies the same edits to one component of
each group (``row``: ``tok0`` for token components, ``rest`` for heads / modules / neurons, as the
official layout puts it first); the API builds it from ``ignore_special_token=`` and
``official_position0=`` (:func:`official_key_edits`). The edits change only which component is
credited: every neuron is still split exactly, so completeness holds. The official code's other two
edits, on its *last* component (keys below ``1e-5`` in magnitude dropped; a neuron no component
reaches given to it), are not reproduced: where nothing is active our bias component gets the neuron.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassError, DePassValueError
from depass_tl.replay.rules.base import MLPRule, RuleStats

__all__ = ["OfficialKeyEdits", "official_key_edits"]

POSITION0_KEY = 1.0
"""The key the official code gives its component 0 at position 0 (``gate_ratio[0, :, 0] = 1.0``)."""


@dataclass(frozen=True)
class _Edit:
    row: int
    silence_later: bool

    def __call__(self, keys: Tensor, row0: int, lo: int) -> Tensor:
        """Edit (in place) the keys ``[n, batch, pos - lo, d_mlp]`` of components ``row0 .. row0 + n - 1``."""
        r = self.row - row0
        if not 0 <= r < keys.shape[0]:
            return keys
        if self.silence_later:
            keys[r, :, (1 if lo == 0 else 0):] = 0.0  # global positions > 0
        if lo == 0:
            keys[r, :, 0] = POSITION0_KEY
        return keys


class _EditedStats(RuleStats):
    """The wrapped rule's statistics, folded and allocated over the edited keys."""

    def __init__(self, inner: RuleStats, edit: _Edit) -> None:
        self.inner, self.edit = inner, edit
        self._cached: set[tuple[int, int]] = set()  # chunks whose fold kept what allocate receives

    def fold(self, keys: Tensor, row0: int, lo: int, *, keep: bool = False) -> Any:
        out = self.inner.fold(self.edit(keys, row0, lo), row0, lo, keep=keep)
        if keep and out is not None:
            self._cached.add((row0, lo))
        return out

    def merge(self, other: RuleStats) -> None:
        assert isinstance(other, _EditedStats)
        self.inner.merge(other.inner)

    def allocate(self, keys: Any, target: Tensor, bias_rows: Tensor, row0: int, n_rows: int, lo: int) -> Tensor:
        if isinstance(keys, Tensor) and (row0, lo) not in self._cached:
            keys = self.edit(keys, row0, lo)
        return self.inner.allocate(keys, target, bias_rows, row0, n_rows, lo)


@dataclass(frozen=True, repr=False)
class OfficialKeyEdits(MLPRule):
    """A competitive rule with the official code's edits to component ``row`` of every group.

    Attributes:
        inner: the competitive rule (``softmax``, ``max`` or a custom one).
        row: the edited component's index within its group.
        ignore_special_token: also make it inactive at every position ``> 0``.
    """

    inner: MLPRule
    row: int
    ignore_special_token: bool = False

    def __post_init__(self) -> None:
        if self.inner.linear:
            raise DePassValueError(
                f"ignore_special_token= / official_position0= edit the keys of a competitive MLP rule; "
                f"{self.inner.name!r} is linear (the official code's taylor makes no such edit, and editing a "
                "linear rule's keys would break completeness). Use mlp_rule='softmax' or 'max', or drop the option."
            )

    # the wrapped rule's identity and planner facts
    @property  # type: ignore[override]
    def name(self) -> str:  # noqa: D401
        return self.inner.name

    @property  # type: ignore[override]
    def gated_keys(self) -> Any:
        return self.inner.gated_keys

    @property  # type: ignore[override]
    def caches_keys(self) -> bool:
        return self.inner.caches_keys

    @property  # type: ignore[override]
    def reads_keys(self) -> bool:
        return self.inner.reads_keys

    @property
    def _edit(self) -> _Edit:
        return _Edit(self.row, self.ignore_special_token)

    def init_stats(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> RuleStats:
        return _EditedStats(self.inner.init_stats(shape, dtype, device), self._edit)

    def stats_bytes(self, itemsize: int) -> int:
        return self.inner.stats_bytes(itemsize)

    def share(self, keys: Tensor, target: Tensor, bias_rows: Tensor, group_size: int) -> Tensor:
        if keys.ndim != 4:
            raise DePassError(
                "ignore_special_token= / official_position0= need a position axis; a mixture-of-experts layer "
                "splits routed rows without one (and the official DePass code has no MoE). Drop the option."
            )
        for g in range(keys.shape[0] // group_size):
            self._edit(keys[g * group_size : (g + 1) * group_size], 0, 0)
        return self.inner.share(keys, target, bias_rows, group_size)

    def edit_unit_keys(self, keys: Tensor, comps: tuple[int, ...], p0: int) -> None:
        """Edit (in place) one MLP unit's keys ``[n_comp, batch, width, d_mlp]``: components ``comps``
        (indices within the group) at positions ``p0 ..`` (the flat-state engine's units).

        The engine calls this, then splits the unit with :attr:`inner` (whose statistics, when a reducer
        merges them, are of the edited keys)."""
        if self.row in comps:
            self._edit(keys, row0=-comps.index(self.row) + self.row, lo=p0)

    def __repr__(self) -> str:
        what = "ignore_special_token" if self.ignore_special_token else "official_position0"
        return f"OfficialKeyEdits({self.inner!r}, row={self.row}, {what})"


def official_key_edits(rule: MLPRule, row: int, *, ignore_special_token: bool, official_position0: bool) -> MLPRule:
    """``rule`` with the official code's key edits on component ``row`` (``rule`` itself when none is asked).

    ``ignore_special_token`` implies the position-0 edit, as in the official code.

    Examples:
        >>> from depass_tl.replay.rules import get_rule
        >>> official_key_edits(get_rule("softmax"), 0, ignore_special_token=True, official_position0=False)
        OfficialKeyEdits(Softmax(temperature=0.1), row=0, ignore_special_token)
        >>> official_key_edits(get_rule("max"), 0, ignore_special_token=False, official_position0=False)
        Max()
    """
    if not (ignore_special_token or official_position0):
        return rule
    return OfficialKeyEdits(rule, row, ignore_special_token)
