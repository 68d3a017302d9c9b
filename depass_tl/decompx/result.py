"""The result of :func:`~depass_tl.decompx.run_decompx`: a read-only mapping from hook name to components."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from jaxtyping import Float
from torch import Tensor

from depass_tl.errors import DePassError

__all__ = ["DecompXResult"]


class DecompXResult(Mapping[str, Tensor]):
    """Per-token decomposition of a BERT run, keyed by TransformerLens hook name.

    ``result[hook]`` is ``[component, batch, pos, d_model]``; summing over the component axis gives
    the clean activation at that hook. Hook names (``l`` = layer): ``hook_full_embed``,
    ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.hook_attn_out`` (attention output *including* its
    share of the attention bias), ``blocks.{l}.hook_resid_mid`` (pre-LN#1), ``blocks.{l}.hook_mlp_out``,
    ``blocks.{l}.hook_resid_post`` (pre-LN#2: in BERT this is ``LN1(resid_mid) + mlp_out``) and
    ``blocks.{l}.hook_normalized_resid_post`` (the block output).

    Attributes:
        labels: one per component: ``tok{p}`` for input position ``p``, then ``bias`` when
            ``bias_policy == "bias"``.
        bias_policy: the policy used.
        head_kind: ``"classification"`` or ``"mlm"``.
        token_ids: the decomposed vocabulary ids (MLM head), else ``()``.
    """

    def __init__(
        self,
        *,
        components: dict[str, Tensor],
        clean: dict[str, Tensor],
        labels: tuple[str, ...],
        bias_policy: str,
        head_kind: str,
        pooler: Tensor | None,
        pooler_clean: Tensor | None,
        head_logits: Tensor,
        head_logits_clean: Tensor,
        token_ids: tuple[int, ...] = (),
    ) -> None:
        self._components = MappingProxyType(dict(components))
        self._clean = MappingProxyType(dict(clean))
        self.labels = labels
        self.bias_policy = bias_policy
        self.head_kind = head_kind
        self.token_ids = token_ids
        self._pooler = pooler
        self._pooler_clean = pooler_clean
        self._head_logits = head_logits
        self._head_logits_clean = head_logits_clean

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._components:
            raise KeyError(f"{name!r} was not decomposed; available: {list(self._components)}")
        return self._components[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._components)

    def __len__(self) -> int:
        return len(self._components)

    def __repr__(self) -> str:
        return (
            f"DecompXResult(head={self.head_kind!r}, bias_policy={self.bias_policy!r}, "
            f"components={len(self.labels)}, hooks={len(self)})"
        )

    @property
    def clean(self) -> Mapping[str, Tensor]:
        """Clean activations ``[batch, pos, d_model]`` of the decomposed hooks."""
        return self._clean

    @property
    def pooler(self) -> Float[Tensor, "component batch d_model"]:
        """Decomposed pooler output (after tanh); classification head only."""
        if self._pooler is None:
            raise DePassError("this result comes from the MLM head, which has no pooler; use token_logits")
        return self._pooler

    @property
    def class_logits(self) -> Float[Tensor, "component batch n_classes"]:
        """Decomposed class logits; summing over components gives the logits. Classification only."""
        if self.head_kind != "classification":
            raise DePassError("this result comes from the MLM head; use result.token_logits")
        return self._head_logits

    @property
    def token_logits(self) -> Float[Tensor, "component batch pos n_tokens"]:
        """Decomposed MLM logits of the requested ``token_ids``. MLM head only."""
        if self.head_kind != "mlm":
            raise DePassError("this result comes from a classification head; use result.class_logits")
        return self._head_logits

    def completeness_error(self) -> dict[str, float]:
        """Max ``|Σ_components − clean|`` per decomposed hook, plus ``pooler`` and ``logits``."""
        errors = {
            name: float((comps.sum(0) - self._clean[name]).abs().max()) for name, comps in self._components.items()
        }
        if self._pooler is not None and self._pooler_clean is not None:
            errors["pooler"] = float((self._pooler.sum(0) - self._pooler_clean).abs().max())
        errors["logits"] = float((self._head_logits.sum(0) - self._head_logits_clean).abs().max())
        return errors

    def explanation(self, class_idx: int, *, position: int | None = None) -> Float[Tensor, "batch pos"]:
        """Signed contribution of each input token to one logit (DecompX's explanation score).

        Args:
            class_idx: class index (classification) or index into ``token_ids`` (MLM).
            position: MLM only: the (masked) position whose logit is explained.

        Returns:
            ``[batch, pos]``: entry ``[b, k]`` is token ``k``'s share of that logit. Under the
            ``"bias"`` policy the bias component's share is not included (it is ``class_logits[-1]``),
            so the row sums to the logit minus that share; under the DecompX policies it sums to
            the logit.

        Raises:
            DePassError: the index is out of range, or ``position`` is missing (MLM) / given
                (classification).
        """
        n_out = self._head_logits.shape[-1]
        try:
            class_idx = operator.index(class_idx)
        except TypeError:
            raise DePassError(f"class_idx must be an integer, got {type(class_idx).__name__}") from None
        if not -n_out <= class_idx < n_out:
            raise DePassError(f"class_idx={class_idx!r} is out of range for {n_out} outputs")
        n_tok = len(self.labels) - (1 if self.bias_policy == "bias" else 0)
        if self.head_kind == "classification":
            if position is not None:
                raise DePassError("position= is only for the MLM head; a classification logit has no position")
            return self._head_logits[:n_tok, :, class_idx].T
        if position is None or not -n_tok <= position < n_tok:
            raise DePassError(f"the MLM head needs position= in [0, {n_tok}), got {position!r}")
        return self._head_logits[:n_tok, :, position, class_idx].T
