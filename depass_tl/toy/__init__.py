"""Toy model zoo: small trained transformers with a word-level tokenizer, loaded by name, offline.

* ``induction``: 2-layer attention-only model with a previous-token head (L0H0) and induction heads
  (layer 1) that copy repeated random sequences of any length that fits its 64 positions.
* ``ioi``: 2-layer attention-only model that solves indirect-object identification
  (``"When Mary and John went to the store, John gave a drink to"`` → ``" Mary"``) with the textbook
  circuit: name movers (layer 1) copy the IO from the end, steered by an S-inhibition head (L0H3).
* ``facts``: 2-layer model with MLPs that recalls the synthetic facts in
  :data:`depass_tl.toy.data.FACTS` (two-token subjects, so recall needs the MLPs).

:func:`load` returns ``(model, encoder)``: a ``HookedTransformer`` on TransformerLens 2.x / 3.x or a
``TransformerBridge`` on TL 4 (``model_class=`` chooses on TL 3.x, which has both; the logits are
identical), with a real Hugging Face tokenizer attached as ``model.tokenizer``, and the
:class:`ToyEncoder` of the same vocabulary. Each model is a folder of safetensors weights, a JSON
config and the tokenizer files (:mod:`depass_tl.toy.checkpoint`); loading needs no network and
unpickles nothing. :func:`save` writes a trained ``HookedTransformer`` and its vocabulary in that
form. Retrain with ``python scripts/train_toy.py induction|ioi|facts|all``.

Examples:
    >>> from depass_tl import toy
    >>> model, encoder = toy.load("induction")
    >>> model.cfg.n_layers, model.cfg.attn_only
    (2, True)
    >>> model, _ = toy.load("ioi")
    >>> model.to_str_tokens("When Mary and John")
    ['<|BOS|>', 'When', ' Mary', ' and', ' John']
"""

from __future__ import annotations

from depass_tl.toy.checkpoint import save
from depass_tl.toy.encoder import ToyEncoder
from depass_tl.toy.loading import available, default_model_class, folder, info, load
from depass_tl.toy.random_model import random_model

__all__ = ["ToyEncoder", "available", "default_model_class", "folder", "info", "load", "random_model", "save"]
