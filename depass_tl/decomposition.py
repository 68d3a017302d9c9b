"""The base of every decomposition result: a read-only mapping hook name -> components, with labels.

:class:`~depass_tl.cache.DePassCache` (DePass on decoders) and
:class:`~depass_tl.decompx.DecompXResult` (DecompX on BERT) are both a :class:`Decomposition`:
``result[hook]`` is ``[component, batch, pos, d_model]`` (TransformerLens hook names; TL shorthand such
as ``("resid_post", 3)`` is accepted on lookup), ``labels`` name the components (axis 0),
``clean`` holds the clean activation of every stored hook, :meth:`~Decomposition.completeness_error`
says how far the components' sum is from it, and ``to_dataframe`` exports one attribution per
(prompt, component) in the same long format.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from torch import Tensor

from depass_tl.errors import DePassError, HookNotFoundError
from depass_tl.guard import group_error

__all__ = ["Decomposition"]


class Decomposition(Mapping[str, Tensor]):
    """Read-only mapping hook name -> ``[component, batch, pos, d_model]``, plus labels and checks.

    Components come in ``n_components // group_size`` groups of ``group_size``; each group is a full
    partition of the clean activation (a single group unless a spec asks for several).

    Attributes:
        labels: one label per component (axis 0 of every value), e.g. ``tok0 … tok{P-1}, bias``.
        clean: hook name -> the clean activation ``[batch, pos, d_model]`` of every stored hook.
        group_size: components per group.
        str_tokens: token strings per prompt, or None.
    """

    def __init__(
        self,
        *,
        activations: Mapping[str, Tensor],
        labels: tuple[str, ...],
        clean: Mapping[str, Tensor],
        group_size: int | None = None,
        str_tokens: tuple[tuple[str, ...], ...] | None = None,
    ) -> None:
        group_size = len(labels) if group_size is None else group_size
        if group_size <= 0 or len(labels) % group_size:
            raise ValueError("labels must split into groups of group_size")
        self._acts = MappingProxyType(dict(activations))
        self.labels = labels
        self.clean = MappingProxyType(dict(clean))
        self.group_size = group_size
        self.str_tokens = str_tokens

    # ----------------------------------------------------------------------------------- mapping
    def _missing(self, key: str) -> str:
        """The message for a hook this result does not hold (subclasses say why hooks can be missing)."""
        return f"{key!r} is not in this {type(self).__name__}. Stored hooks: {', '.join(self._acts)}."

    def _resolve(self, key: str | tuple[Any, ...]) -> str:
        if isinstance(key, tuple):
            from depass_tl.backends import get_act_name  # TL's, on every TL version

            key = get_act_name(*key)
        if key in self._acts:
            return key
        raise HookNotFoundError(self._missing(key))

    def __getitem__(self, key: str | tuple[Any, ...]) -> Tensor:  # type: ignore[override]
        return self._acts[self._resolve(key)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    @property
    def n_components(self) -> int:
        return len(self.labels)

    def component(self, label: str) -> int:
        """Index of the component with this label."""
        try:
            return self.labels.index(label)
        except ValueError as e:
            raise DePassError(f"no component labelled {label!r}; labels are {list(self.labels)}.") from e

    # ------------------------------------------------------------------------- completeness
    def completeness_error(self, hook: str | None = None, *, relative: bool = False) -> dict[str, float] | float:
        """Max ``|Σ_c component - clean activation|`` per stored hook (captum's convergence delta).

        Args:
            hook: one hook name (returns a float) or None (returns a dict over every stored hook plus
                the outputs the result decomposes, e.g. ``"logits"``).
            relative: divide by the max absolute clean value at that hook.
        """
        if hook is not None:
            try:
                name = self._resolve(hook)
            except KeyError:  # "logits", "pooler": decomposed outputs, not stored hooks
                outputs = self._outputs() if isinstance(hook, str) else {}
                if hook not in outputs:
                    raise
                return self._error(*outputs[hook], relative)
            return self._error(self._acts[name], self.clean[name], relative)
        errors = {name: self._error(v, self.clean[name], relative) for name, v in self._acts.items()}
        for name, (comps, clean) in self._outputs().items():
            errors[name] = self._error(comps, clean, relative)
        return errors

    def _outputs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Decomposed outputs beyond the stored hooks: name -> ``(components, clean)``."""
        return {}

    def _error(self, comps: Tensor, clean: Tensor, relative: bool) -> float:
        """Max over groups of ``|Σ_(c in group) comps - clean|`` (each group is a full partition)."""
        miss, scale = group_error(comps, clean, self.group_size)
        return miss / max(scale, 1e-30) if relative else miss

    # ------------------------------------------------------------------------------- export
    def _frame(self, attrs: Tensor) -> Any:
        """A long-format ``pandas.DataFrame`` of ``attrs [component, batch]``: one row per (prompt,
        component), columns ``batch``, ``component``, ``label``, ``token`` (the token string of a
        ``tok{p}`` component when known), ``attribution``."""
        import pandas as pd

        rows = []
        for b in range(attrs.shape[1]):
            for c, label in enumerate(self.labels):
                token = None
                if self.str_tokens is not None and label.startswith("tok") and label[3:].isdigit():
                    token = self.str_tokens[b][int(label[3:])]
                rows.append({"batch": b, "component": c, "label": label, "token": token,
                             "attribution": float(attrs[c, b])})
        return pd.DataFrame(rows)
