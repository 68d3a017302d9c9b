"""A ``TransformerBridge`` wrapping a BERT (TL 3.x / 4.x, ``boot_transformers`` on a BERT folder): DecompX.

TransformerLens 4's BERT adapter wraps ``BertForMaskedLM`` (and the next-sentence heads); it has no
sequence-classification head (pass a ``BertForSequenceClassification`` itself instead, see
:mod:`~depass_tl.backends.hf_bert`). The Bridge runs the Hugging Face module tree it wraps
(``bridge.original_model``), with its own components in place of some modules; DecompX reads that tree
exactly like a plain transformers model, so the numbers are the same. The Bridge's own BERT hook
aliases are not used: in TL 4.3 its ``hook_resid_mid`` is not LayerNorm #1's input.

Refused: a Bridge in compatibility mode (``enable_compatibility_mode()`` processes BERT's weights
although TL cannot fold post-LN LayerNorms, and warns so; the logits then differ from the original
model's, by 0.02 on a random 2-layer BERT), and everything
:func:`~depass_tl.backends.hf_bert.read_hf_bert` refuses.
"""

from __future__ import annotations

from typing import Any

from depass_tl.backends.base import Backend, EncoderSource, class_named
from depass_tl.backends.hf_bert import read_hf_bert
from depass_tl.errors import UnsupportedModelError

__all__ = ["BACKEND", "is_bert_bridge", "read_bert_bridge"]


def is_bert_bridge(model: Any) -> bool:
    """True for a ``TransformerBridge`` whose wrapped model is a transformers BERT (no TL import)."""
    if not class_named(model, "TransformerBridge"):
        return False
    inner = getattr(model, "__dict__", {}).get("original_model")
    return inner is not None and class_named(inner, "BertPreTrainedModel")


def read_bert_bridge(model: Any) -> EncoderSource:
    """Read the BERT a ``TransformerBridge`` wraps (nothing copied or modified).

    Raises:
        UnsupportedModelError: compatibility mode, or what :func:`read_hf_bert` refuses.
    """
    if getattr(model, "compatibility_mode", False):
        raise UnsupportedModelError(
            "this BERT TransformerBridge is in compatibility mode: TL has processed BERT's weights although it "
            "cannot fold post-LN LayerNorms, so its logits differ from the original model's. Run DecompX on "
            "a Bridge booted without enable_compatibility_mode() (its outputs equal the Hugging Face model's)."
        )
    return read_hf_bert(model.__dict__["original_model"], backend="TransformerBridge")


BACKEND = Backend(
    name="TransformerBridge (BERT)",
    matches=is_bert_bridge,
    read_view=None,
    method="decompx",
    priority=30,
    read_encoder=read_bert_bridge,
)
