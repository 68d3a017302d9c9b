"""DecompX for BERT encoders: transformers' BERT, a BERT ``TransformerBridge``, or TL's ``HookedEncoder``.

DecompX (Modarressi et al., *DecompX: Explaining Transformers Decisions by Propagating Token
Decomposition*, ACL 2023) splits every hidden state of an encoder into one vector per input token
and carries the split through the pooler and classifier, with attention patterns, LayerNorm scales
and activation slopes frozen at their clean values. :func:`run_decompx` returns the clean logits
and a :class:`DecompXResult` keyed by TransformerLens hook name; the official code's ablation
variants are options (``ffn_approx``, ``tanh_approx``, ``include_ffn``; :mod:`~depass_tl.decompx.approx`).

Models are read through the backend registry (:func:`depass_tl.backends.read_encoder`): on
TransformerLens 4, which has no ``HookedEncoder``, pass a transformers ``BertForSequenceClassification``
or ``BertForMaskedLM`` (or a ``TransformerBridge`` booted on a BERT folder). Importing this package
does not import TransformerLens. The replay runs on the decoder replay's kernels
(:mod:`depass_tl.replay`: frozen-pattern attention, frozen-scale norms, rule objects).
"""

from depass_tl.decompx.approx import FFN_APPROX, TANH_APPROX, FFNApprox, TanhApprox
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
    "FFN_APPROX",
    "FFNApprox",
    "MLMHead",
    "SequenceClassificationHead",
    "TANH_APPROX",
    "TanhApprox",
    "hooked_encoder_class",
    "hooked_encoder_from_hf_bert",
    "run_decompx",
]
