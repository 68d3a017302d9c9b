"""The result of :func:`~depass_tl.decompx.run_decompx`: a :class:`~depass_tl.decomposition.Decomposition`
keyed by TransformerLens hook name, plus the decomposed head."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from jaxtyping import Float
from torch import Tensor

from depass_tl.decomposition import Decomposition
from depass_tl.errors import DePassError

__all__ = ["DecompXResult"]


class DecompXResult(Decomposition):
    """Per-token decomposition of a BERT run, keyed by TransformerLens hook name.

    ``result[hook]`` is ``[component, batch, pos, d_model]``; summing over the component axis gives
    the clean activation at that hook (up to float rounding when :attr:`exact`; otherwise see
    :meth:`residual`). Hook names (``l`` = layer): ``hook_full_embed``,
    ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.hook_attn_out`` (attention output *including* its
    share of the attention bias), ``blocks.{l}.hook_resid_mid`` (pre-LN#1), ``blocks.{l}.hook_mlp_out``,
    ``blocks.{l}.hook_resid_post`` (pre-LN#2: in BERT this is ``LN1(resid_mid) + mlp_out``) and
    ``blocks.{l}.hook_normalized_resid_post`` (the block output). The same names on every backend
    (``HookedEncoder``, transformers' BERT, a BERT ``TransformerBridge``).

    Attributes:
        labels: one per component: ``tok{p}`` for input position ``p``, then ``bias`` when
            ``bias_policy == "bias"``.
        bias_policy: the policy used.
        head_kind: ``"classification"`` or ``"mlm"``.
        token_ids: the decomposed vocabulary ids (MLM head), else ``()``.
        options: the linearisation options (``ffn_approx``, ``tanh_approx``, ``include_ffn``).
        exact: True when every option keeps the decomposition complete; False for ``ffn_approx="relu"``
            on a GELU model and for ``include_ffn=False``: the components then miss part of each
            activation, which :meth:`residual` reports (and :meth:`completeness_error` shows).
        backend: the backend that read the model (``"HookedEncoder"``, ``"transformers"``,
            ``"TransformerBridge"``).
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
        options: Mapping[str, Any] | None = None,
        exact: bool = True,
        backend: str = "HookedEncoder",
    ) -> None:
        super().__init__(activations=components, labels=labels, clean=clean)
        self.bias_policy = bias_policy
        self.head_kind = head_kind
        self.token_ids = token_ids
        self.options = MappingProxyType(dict(options or {}))
        self.exact = exact
        self.backend = backend
        self._pooler = pooler
        self._pooler_clean = pooler_clean
        self._head_logits = head_logits
        self._head_logits_clean = head_logits_clean

    def _missing(self, key: str) -> str:
        return f"{key!r} was not decomposed; available: {list(self._acts)}"

    def __repr__(self) -> str:
        extra = "" if self.exact else ", exact=False"
        return (
            f"DecompXResult(head={self.head_kind!r}, bias_policy={self.bias_policy!r}, "
            f"components={len(self.labels)}, hooks={len(self)}{extra})"
        )

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

    def _outputs(self) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        if self._pooler is not None and self._pooler_clean is not None:
            out["pooler"] = (self._pooler, self._pooler_clean)
        out["logits"] = (self._head_logits, self._head_logits_clean)
        return out

    def residual(self, name: str = "logits") -> Tensor:
        """What the components miss: ``clean − Σ_components`` at a hook, ``"pooler"`` or ``"logits"``.

        Float rounding only when :attr:`exact`; the part of the activations an inexact option leaves
        out otherwise (e.g. ``GELU(ζ) − ReLU(ζ)`` carried to the logits under ``ffn_approx="relu"``).

        Raises:
            HookNotFoundError: a hook that was not decomposed.
        """
        outputs = self._outputs()
        if name in outputs:
            comps, clean = outputs[name]
        else:
            key = self._resolve(name)
            comps, clean = self._acts[key], self.clean[key]
        return clean.to(comps.dtype) - comps.sum(0)

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
        return self._logit_shares(class_idx, position)[: self._n_tokens].T

    @property
    def _n_tokens(self) -> int:
        return len(self.labels) - (1 if self.bias_policy == "bias" else 0)

    def _logit_shares(self, class_idx: int, position: int | None) -> Tensor:
        """Every component's share of one logit: ``[component, batch]``."""
        n_out = self._head_logits.shape[-1]
        try:
            class_idx = operator.index(class_idx)
        except TypeError:
            raise DePassError(f"class_idx must be an integer, got {type(class_idx).__name__}") from None
        if not -n_out <= class_idx < n_out:
            raise DePassError(f"class_idx={class_idx!r} is out of range for {n_out} outputs")
        n_tok = self._n_tokens
        if self.head_kind == "classification":
            if position is not None:
                raise DePassError("position= is only for the MLM head; a classification logit has no position")
            return self._head_logits[:, :, class_idx]
        if position is None or not -n_tok <= position < n_tok:
            raise DePassError(f"the MLM head needs position= in [0, {n_tok}), got {position!r}")
        return self._head_logits[:, :, position, class_idx]

    def to_dataframe(self, class_idx: int, *, position: int | None = None) -> Any:
        """A long-format ``pandas.DataFrame`` of one logit's decomposition, as ``DePassCache.to_dataframe``.

        One row per (prompt, component), the ``bias`` component included: columns ``batch``,
        ``component``, ``label``, ``token`` (None: encoder results carry no token strings),
        ``attribution``. Arguments as in :meth:`explanation`.
        """
        return self._frame(self._logit_shares(class_idx, position))
