"""Toy model zoo: small trained HookedTransformers with a word-level encoder, loaded by name.

* ``induction``: 2-layer attention-only model with a previous-token head (L0H0) and induction heads
  (layer 1) that copy repeated random sequences of any length that fits its 64 positions.
* ``ioi``: 3-layer model with MLPs that solves indirect-object identification
  (``"When Mary and John went to the store, John gave a drink to"`` → ``" Mary"``).
* ``facts``: 2-layer model with MLPs that recalls the synthetic facts in
  :data:`depass_tl.toy.data.FACTS` (two-token subjects, so recall needs the MLPs).

Weights ship with the package as safetensors plus a JSON config; loading needs no network and
unpickles nothing. Retrain with ``python scripts/train_toy.py induction|ioi|facts|all``.

Examples:
    >>> from depass_tl import toy
    >>> model, encoder = toy.load("induction")
    >>> model.cfg.n_layers, model.cfg.attn_only
    (2, True)
"""

from __future__ import annotations

from depass_tl.toy.encoder import ToyEncoder
from depass_tl.toy.loading import available, info, load
from depass_tl.toy.random_model import random_model

__all__ = ["ToyEncoder", "available", "info", "load", "random_model"]
