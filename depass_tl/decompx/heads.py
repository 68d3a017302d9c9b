"""Output heads that DecompX carries the decomposition through.

A transformers ``BertForSequenceClassification`` brings its own head (:func:`~depass_tl.decompx.run_decompx`
reads it). ``HookedEncoder.forward`` only runs the masked-LM head, and never the pooler, so there a
sequence classifier's head (pooler dense + tanh, then a linear classifier) is supplied by the user as a
:class:`SequenceClassificationHead`. The masked-LM head is read from the model itself by
:meth:`MLMHead.from_encoder`, restricted to the token ids you ask about (never the full vocabulary).

Both heads are plain frozen dataclasses of tensors: they hold no hooks and no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from depass_tl.backends import read_encoder
from depass_tl.errors import DePassError

__all__ = ["MLMHead", "SequenceClassificationHead"]


def _tensor(state_dict: Mapping[str, Tensor], key: str, shape_hint: str) -> Tensor:
    if key not in state_dict:
        raise DePassError(
            f"state dict has no key {key!r} ({shape_hint}); expected the state dict of a transformers "
            "BertForSequenceClassification"
        )
    value = state_dict[key]
    if not isinstance(value, Tensor):
        raise DePassError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
    return value.detach().clone()


@dataclass(frozen=True, eq=False)
class SequenceClassificationHead:
    """BERT sequence-classification head: ``tanh(h_CLS @ W_pool + b_pool) @ W_cls + b_cls``.

    Attributes:
        W_pool: pooler dense weight ``[d_model, d_model]`` (input dim first, TL convention).
        b_pool: pooler dense bias ``[d_model]``.
        W_cls: classifier weight ``[d_model, n_classes]``.
        b_cls: classifier bias ``[n_classes]``.

    Examples:
        >>> import torch
        >>> head = SequenceClassificationHead(W_pool=torch.eye(2), b_pool=torch.zeros(2),
        ...     W_cls=torch.ones(2, 1), b_cls=torch.zeros(1))
        >>> head.n_classes
        1
    """

    W_pool: Float[Tensor, "d_model d_model"]
    b_pool: Float[Tensor, " d_model"]
    W_cls: Float[Tensor, "d_model n_classes"]
    b_cls: Float[Tensor, " n_classes"]

    def __post_init__(self) -> None:
        for name in ("W_pool", "b_pool", "W_cls", "b_cls"):
            if not isinstance(getattr(self, name), Tensor):
                raise DePassError(f"SequenceClassificationHead.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        d = self.W_pool.shape[0] if self.W_pool.ndim == 2 else -1
        ok = (
            self.W_pool.ndim == 2
            and self.W_pool.shape == (d, d)
            and self.b_pool.shape == (d,)
            and self.W_cls.ndim == 2
            and self.W_cls.shape[0] == d
            and self.b_cls.shape == (self.W_cls.shape[1],)
        )
        if not ok:
            raise DePassError(
                "SequenceClassificationHead shapes do not fit: got W_pool "
                f"{tuple(self.W_pool.shape)}, b_pool {tuple(self.b_pool.shape)}, W_cls {tuple(self.W_cls.shape)}, "
                f"b_cls {tuple(self.b_cls.shape)}; expected [d,d], [d], [d,C], [C] (use from_hf_state_dict "
                "for an HF checkpoint, whose Linear weights are [out, in])"
            )

    @property
    def d_model(self) -> int:
        """Width of the encoder output the head reads."""
        return int(self.W_pool.shape[0])

    @property
    def n_classes(self) -> int:
        """Number of classes (columns of ``W_cls``)."""
        return int(self.W_cls.shape[1])

    @classmethod
    def from_hf_state_dict(cls, state_dict: Mapping[str, Tensor]) -> SequenceClassificationHead:
        """Read the head from an HF ``BertForSequenceClassification`` state dict (no hub needed).

        Uses the keys ``bert.pooler.dense.{weight,bias}`` and ``classifier.{weight,bias}``; HF stores
        Linear weights as ``[out, in]``, so they are transposed here.

        Args:
            state_dict: ``model.state_dict()`` (or a loaded checkpoint) of the classifier.

        Returns:
            The head, with tensors copied from the state dict.

        Raises:
            DePassError: a key is missing or the shapes do not fit together.
        """
        return cls(
            W_pool=_tensor(state_dict, "bert.pooler.dense.weight", "[d_model, d_model]").T.contiguous(),
            b_pool=_tensor(state_dict, "bert.pooler.dense.bias", "[d_model]"),
            W_cls=_tensor(state_dict, "classifier.weight", "[n_classes, d_model]").T.contiguous(),
            b_cls=_tensor(state_dict, "classifier.bias", "[n_classes]"),
        )

    def pooler_pre(self, cls_resid: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_model"]:
        """Pre-tanh pooler activation ``h_CLS @ W_pool + b_pool``."""
        return cls_resid @ self.W_pool.to(cls_resid) + self.b_pool.to(cls_resid)

    def logits(self, final_resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch n_classes"]:
        """Class logits from the encoder output (``blocks.{L-1}.hook_normalized_resid_post``)."""
        pooled = torch.tanh(self.pooler_pre(final_resid[:, 0]))
        return pooled @ self.W_cls.to(pooled) + self.b_cls.to(pooled)


@dataclass(frozen=True, eq=False)
class MLMHead:
    """The encoder's masked-LM head, projected onto chosen token ids.

    ``logits[..., t] = LN(gelu(x @ W + b)) @ W_U[:, token_ids[t]] + b_U[token_ids[t]]``.

    Attributes:
        W: dense weight ``[d_model, d_model]``; b: its bias ``[d_model]``.
        ln_w, ln_b: LayerNorm weight and bias ``[d_model]``; eps: LayerNorm epsilon.
        W_U: unembedding columns of the requested tokens ``[d_model, n_tokens]``.
        b_U: unembedding bias of the requested tokens ``[n_tokens]``.
        token_ids: the requested vocabulary ids, in order.
    """

    W: Float[Tensor, "d_model d_model"]
    b: Float[Tensor, " d_model"]
    ln_w: Float[Tensor, " d_model"]
    ln_b: Float[Tensor, " d_model"]
    eps: float
    W_U: Float[Tensor, "d_model n_tokens"]
    b_U: Float[Tensor, " n_tokens"]
    token_ids: tuple[int, ...]

    @property
    def d_model(self) -> int:
        """Width of the encoder output the head reads."""
        return int(self.W.shape[0])

    @property
    def n_classes(self) -> int:
        """Number of requested token ids (the last axis of the decomposed logits)."""
        return len(self.token_ids)

    @classmethod
    def from_encoder(cls, encoder: Any, *, token_ids: Sequence[int]) -> MLMHead:
        """Copy the MLM head and the unembedding columns of ``token_ids`` from an encoder.

        Args:
            encoder: a model with an MLM head that DecompX reads: transformers' ``BertForMaskedLM``, a
                ``TransformerBridge`` wrapping one, or a ``HookedEncoder`` (its ``mlm_head``/``unembed``).
            token_ids: vocabulary ids whose logits are decomposed (at least one).

        Returns:
            The head, with tensors copied (the encoder is not modified).

        Raises:
            DePassError: no ids, or an id outside ``[0, d_vocab)``, or the encoder has no MLM head (or an
                all-zero one), or its activation is not the exact (erf) GELU.
        """
        ids = tuple(int(t) for t in token_ids)
        view = read_encoder(encoder).view
        mlm = view.mlm
        if mlm is None:
            raise DePassError(
                f"{type(encoder).__name__} has no MLM head (mlm_head/unembed, or cls.predictions); "
                "MLMHead.from_encoder needs a BertForMaskedLM, a Bridge wrapping one, or a HookedEncoder"
            )
        d_vocab = int(mlm.W_U.shape[1])
        if not bool(mlm.W_U.any()) or not bool(mlm.W.any()):
            raise DePassError(
                f"{type(encoder).__name__}'s MLM head or unembedding is all zeros (e.g. a HookedEncoder converted "
                "from a checkpoint without cls.predictions, such as a BertForSequenceClassification); its logits "
                "would be constants. Use an encoder with a trained MLM head (BertForMaskedLM)."
            )
        if len(ids) == 0 or any(t < 0 or t >= d_vocab for t in ids):
            raise DePassError(
                f"token_ids must be a non-empty list of ids in [0, {d_vocab}), got {list(ids)}"
            )
        if mlm.act_fn != "gelu":
            raise DePassError(
                f"the MLM head's activation is {mlm.act_fn!r}; only the exact (erf) GELU is supported"
            )
        index = torch.tensor(ids, device=mlm.W_U.device)
        b_U = torch.zeros(d_vocab, dtype=mlm.W_U.dtype, device=mlm.W_U.device) if mlm.b_U is None else mlm.b_U
        return cls(
            W=mlm.W.detach().clone(),
            b=mlm.b.detach().clone(),
            ln_w=mlm.ln.w.detach().clone() if mlm.ln.w is not None else torch.ones_like(mlm.b),
            ln_b=mlm.ln.b.detach().clone() if mlm.ln.b is not None else torch.zeros_like(mlm.b),
            eps=float(mlm.eps),
            W_U=mlm.W_U.detach()[:, index].clone(),
            b_U=b_U.detach()[index].clone(),
            token_ids=ids,
        )

    def dense_pre(self, final_resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Pre-GELU activation of the MLM dense layer (TransformerLens has no hook for it)."""
        return final_resid @ self.W.to(final_resid) + self.b.to(final_resid)

    def logits(self, final_resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos n_tokens"]:
        """Logits of the requested tokens from the encoder output."""
        h = F.gelu(self.dense_pre(final_resid))
        h = h - h.mean(-1, keepdim=True)
        h = h / (h.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        h = h * self.ln_w.to(h) + self.ln_b.to(h)
        return h @ self.W_U.to(h) + self.b_U.to(h)
