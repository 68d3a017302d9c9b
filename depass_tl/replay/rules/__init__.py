"""MLP allocation rules as objects: how a frozen MLP's activation is split among components.

With the nonlinear coefficients frozen, an MLP's clean activation output (the *target*, ``[batch,
pos, d_mlp]``) must be split into one share per component, the shares summing to the target exactly.
A rule decides the split from the *keys*: each component's contribution to a pre-activation,
``[component, batch, pos, d_mlp]`` (``γ_c = ln2_c W_in``, the bias component also holding ``b_in``;
on a gated MLP the gate contributions ``ln2_c W_gate`` or the linear ones ``ln2_c W_in``, as the rule
says in :attr:`MLPRule.gated_keys`). A component whose key is exactly 0 at a place (a token that
cannot reach that position) is *inactive* there.

Two kinds of rule:

* **linear** (:attr:`MLPRule.linear`): ``share_c = slope ⊙ key_c`` with a slope frozen from the clean
  run (:meth:`MLPRule.slope`); where the slope is undefined the whole target goes to the bias
  component. The replay is then a linear map of the components: reverse mode
  (:func:`depass_tl.attribute`) applies, and every replay can be cut into chunks of components
  (mixture-of-experts layers included), each replayed on its own.
* **competitive** (not linear): a component's share depends on the other components of its group,
  through per-``(batch, pos, neuron)`` *statistics*. The replay cuts each MLP layer into units (one
  group at a block of positions, holding every component of the group that can be nonzero there):
  :meth:`RuleStats.fold` folds the unit's keys into the statistics, then :meth:`RuleStats.allocate`
  splits the target. :meth:`RuleStats.merge` combines
  statistics folded over disjoint sets of components (e.g. on several devices or processes: fold
  locally, gather, merge in rank order); it is associative and commutative up to float rounding, and
  the freshly initialised statistics are its identity. :meth:`MLPRule.stats_bytes` tells the memory
  planner (:mod:`~depass_tl.replay.plan`) what the statistics cost.

Built-in rules, in the registry under their names:

* ``softmax`` (:class:`Softmax`, DePass default, temperature T): ``α_c = softmax(γ/T)`` over the
  active components; statistics: the running max ``m`` and ``s = Σ exp(γ/T − m)``.
* ``ratio`` (:class:`Ratio`, DecompX "ZO"): ``share_c = (post / pre) γ_c``; gated MLPs:
  ``act(gate) ⊙ (ln2_c W_in)``; SoLU: ``softmax(pre) ⊙ γ_c``. Linear.
* ``max`` (:class:`Max`): the whole target to ``argmax_c γ_c`` among active components (lowest
  index on ties); statistics: the best key and its component index.
* ``taylor`` (:class:`Taylor`, the official DePass ``taylor``): ``share_c = (act(g) / g) γ_c``, the
  activation linearised at its clean input; gated MLPs: ``γ_c = ln2_c W_gate`` with ``x W_in`` taken
  whole (``ratio`` instead splits along ``x W_in``); non-gated MLPs: the same as ``ratio``. Linear.

Where no component of a group is active, the group's bias component gets the whole target.

**The official code's key edits.** :func:`official_key_edits` wraps a competitive rule with the
official DePass code's edits to its first component's keys (``ignore_special_token=`` and
``official_position0=`` of :func:`depass_tl.run_with_depass`; :mod:`~depass_tl.replay.rules.official`).

**Custom rules.** Subclass :class:`MLPRule` (and :class:`RuleStats` for a competitive rule), then
:func:`register_rule` it, or pass the object as ``mlp_rule=``. A rule that gives each active
component an equal share:

>>> import torch
>>> from depass_tl.replay.rules import MLPRule, RuleStats, register_rule, unregister_rule
>>> class EqualStats(RuleStats):
...     def __init__(self, shape, dtype, device):
...         self.count = torch.zeros(shape, dtype=dtype, device=device)  # active components so far
...     def fold(self, keys, row0, lo, *, keep=False):
...         self.count[:, lo:] += (keys != 0).sum(0)
...     def merge(self, other):
...         self.count += other.count
...     def allocate(self, keys, target, bias_rows, row0, n_rows, lo):
...         count = self.count[:, lo:]
...         none = count == 0
...         share = (keys != 0).to(target.dtype) * (target / torch.where(none, 1, count))[None]
...         share[bias_rows] += torch.where(none, target, 0)  # nothing active: all to the bias
...         return share
>>> class Equal(MLPRule):
...     name = "equal"
...     def init_stats(self, shape, dtype, device):
...         return EqualStats(shape, dtype, device)
...     def stats_bytes(self, itemsize):
...         return itemsize
>>> register_rule(Equal())
>>> keys = torch.tensor([[[[1.0]]], [[[0.0]]], [[[2.0]]]])  # [component, batch, pos, d_mlp]
>>> get_rule("equal").share(keys, torch.tensor([[[6.0]]]), torch.tensor([2]), 3).flatten().tolist()
[3.0, 0.0, 3.0]
>>> import depass_tl
>>> from depass_tl.toy import random_model
>>> cfg = dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_mlp=16,
...            d_vocab=20, act_fn="gelu", seed=0)
>>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]), mlp_rule="equal")
>>> dc.mlp_rule, max(dc.completeness_error().values()) < 1e-4
('equal', True)
>>> unregister_rule("equal")
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeAlias

from depass_tl._registry import Registry
from depass_tl.errors import DePassError, DePassTypeError, DePassValueError
from depass_tl.replay.rules.base import DEFAULT_TEMPERATURE, MLPRule, Neurons, RuleStats
from depass_tl.replay.rules.argmax import Max, MaxStats
from depass_tl.replay.rules.official import OfficialKeyEdits, official_key_edits
from depass_tl.replay.rules.ratio import Ratio
from depass_tl.replay.rules.softmax import Softmax, SoftmaxStats
from depass_tl.replay.rules.taylor import Taylor

__all__ = [
    "DEFAULT_TEMPERATURE", "DEFAULT_RULE", "Neurons", "RuleStats", "MLPRule", "Softmax", "SoftmaxStats", "Ratio",
    "Max", "MaxStats", "Taylor", "OfficialKeyEdits", "official_key_edits", "RuleLike", "register_rule", "unregister_rule", "get_rule", "rule_names", "iter_rules",
]

RuleLike: TypeAlias = MLPRule | str
"""A rule object, or the name of a registered rule."""

_REGISTRY: Registry[MLPRule] = Registry("MLP rule", MLPRule)
DEFAULT_RULE: MLPRule = Softmax()
"""The rule ``run_with_depass`` uses by default (``softmax``, ``T = 0.1``)."""


def register_rule(rule: MLPRule, *, replace: bool = False) -> None:
    """Make ``rule`` available as ``mlp_rule=rule.name``.

    Raises:
        DePassError: not an :class:`MLPRule`, no name, or the name is taken (pass ``replace=True``).
    """
    _REGISTRY.add(getattr(rule, "name", ""), rule, replace=replace)


def unregister_rule(name: str) -> None:
    """Remove a registered rule (the built-ins included).

    Raises:
        DePassError: no rule of that name.
    """
    _REGISTRY.remove(name)


def rule_names() -> tuple[str, ...]:
    """The registered rule names, in registration order (the built-ins first)."""
    return _REGISTRY.names()


def iter_rules() -> Iterator[MLPRule]:
    """The registered rule objects, in registration order."""
    return iter(_REGISTRY.values())


def get_rule(rule: RuleLike, *, temperature: float = DEFAULT_TEMPERATURE) -> MLPRule:
    """Resolve ``mlp_rule=`` (a name or a rule object) to a rule object, once, at the API.

    A name is looked up in the registry and given ``temperature`` (the ``temperature=`` keyword;
    only ``softmax`` uses it). A rule object is returned as it is; its temperature is its own, so
    ``temperature`` must then be left at its default.

    Raises:
        DePassError: an unknown name, a bad temperature, or a temperature next to a rule object.

    Examples:
        >>> get_rule("softmax", temperature=0.5)
        Softmax(temperature=0.5)
        >>> get_rule(Softmax(0.2)).temperature, get_rule("ratio").linear
        (0.2, True)
    """
    if isinstance(rule, MLPRule):
        if temperature != DEFAULT_TEMPERATURE:
            raise DePassValueError(
                f"temperature={temperature} was given next to the rule object {rule!r}; set the temperature on "
                "the rule instead, e.g. mlp_rule=depass_tl.replay.rules.Softmax(temperature=...)."
            )
        return rule
    if not isinstance(rule, str):
        raise DePassTypeError(
            f"mlp_rule must be a rule name ({', '.join(rule_names())}) or an MLPRule object; got {type(rule).__name__}."
        )
    found = _REGISTRY.get(rule)
    if found is None:
        raise DePassValueError(f"unknown mlp_rule {rule!r}; choose one of {', '.join(rule_names())}.")
    if not temperature > 0:
        raise DePassValueError(f"temperature must be > 0, got {temperature}.")
    return found.with_temperature(temperature)


for _rule in (DEFAULT_RULE, Ratio(), Max(), Taylor()):
    register_rule(_rule)
del _rule
