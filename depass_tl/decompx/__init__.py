"""DecompX for BERT-style encoders (TransformerLens ``HookedEncoder``).

DecompX (Modarressi et al., *DecompX: Explaining Transformers Decisions by Propagating Token
Decomposition*, ACL 2023) splits every hidden state of an encoder into one vector per input token
and carries the split through the pooler and classifier, with attention patterns, LayerNorm scales
and activation slopes frozen at their clean values. :func:`run_decompx` returns the clean logits
and a :class:`DecompXResult` keyed by TransformerLens hook name.

Importing this package does not import TransformerLens; on TransformerLens 4 (no
``HookedEncoder``) :func:`run_decompx` raises :class:`~depass_tl.errors.UnsupportedModelError`.
"""

from depass_tl.decompx._compat import hooked_encoder_class
from depass_tl.decompx.api import run_decompx
from depass_tl.decompx.bias import BIAS_POLICIES, BiasPolicy
from depass_tl.decompx.convert import hooked_encoder_from_hf_bert
from depass_tl.decompx.heads import MLMHead, SequenceClassificationHead
from depass_tl.decompx.result import DecompXResult

__all__ = [
    "BIAS_POLICIES",
    "BiasPolicy",
    "DecompXResult",
    "MLMHead",
    "SequenceClassificationHead",
    "hooked_encoder_class",
    "hooked_encoder_from_hf_bert",
    "run_decompx",
]
