"""The distilled illusion example as hand-set TransformerLens models (reference/illusion.md §2).

Token ``t`` encodes ``x = t`` on residual axis 0. Attention is zeroed (``W_O = b_O = 0``), there is no
norm, and the ReLU MLP's hidden post-activation (``blocks.0.mlp.hook_post``) is ``h = (x, 0, x)``: the
middle unit's pre-activation is ``−x < 0``, so it is a ReLU that is inactive on the data (a dormant
pathway). ``W_out`` writes ``w·h`` on residual axis 1 and the logit difference
``logit[ANSWER] − logit[OTHER]`` at the last position reads axis 1 (bottleneck, ``y = w·h``) or axes
0 and 1 (bypass, ``y = x + w·h``, with ``h = (x, 0)`` and ``w = (0, 2)``).

With base ``x = 1`` and source ``x' = 2``, patching ``v = (e₁ + e₂)/√2`` gives the full effect although
``e₁`` and ``e₂`` alone give none; ``e₃`` is the faithful mediator.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["ANSWER", "OTHER", "SITE", "distilled_model", "distilled_tokens", "logit_diff"]

ANSWER, OTHER = 0, 3
"""Token ids whose logit difference is the output ``y``."""
SITE = "blocks.0.mlp.hook_post"
"""The patched site."""


def distilled_model(w: tuple[float, ...] = (0.0, 2.0, 1.0), *, bypass: bool = False) -> Any:
    """Build the bottleneck toy (``w = (0, 2, 1)``) or, with ``bypass=True``, the bypass toy.

    Args:
        w: Output weights of the hidden units (2 or 3 of them; unit 2 is the dormant ReLU).
        bypass: Add the residual copy ``x`` to the output (use ``w = (0, 2)``).

    Returns:
        A float64 model (1 layer, d_model 4, d_mlp ``len(w)``, vocabulary 4): a ``HookedTransformer`` on
        TransformerLens 2.x / 3.x, a ``TransformerBridge`` on 4.x (:func:`depass_tl.toy.loading.build_model`).

    Examples:
        >>> model = distilled_model()
        >>> logit_diff(model(distilled_tokens(1, 2))).tolist()
        [1.0, 2.0]
    """
    from depass_tl.toy.loading import build_model

    d_mlp = len(w)
    config = dict(n_layers=1, d_model=4, n_ctx=4, d_head=2, n_heads=1, d_mlp=d_mlp, d_vocab=4, act_fn="relu",
                  normalization_type=None, positional_embedding_type="standard", attn_only=False)
    f64 = dict(dtype=torch.float64)
    state = {  # HookedTransformer names and shapes; everything not set below is zero (attention included)
        "embed.W_E": torch.zeros(4, 4, **f64), "pos_embed.W_pos": torch.zeros(4, 4, **f64),
        "unembed.W_U": torch.zeros(4, 4, **f64), "unembed.b_U": torch.zeros(4, **f64),
        **{f"blocks.0.attn.W_{m}": torch.zeros(1, 4, 2, **f64) for m in "QKV"},
        **{f"blocks.0.attn.b_{m}": torch.zeros(1, 2, **f64) for m in "QKV"},
        "blocks.0.attn.W_O": torch.zeros(1, 2, 4, **f64), "blocks.0.attn.b_O": torch.zeros(4, **f64),
        "blocks.0.mlp.W_in": torch.zeros(4, d_mlp, **f64), "blocks.0.mlp.b_in": torch.zeros(d_mlp, **f64),
        "blocks.0.mlp.W_out": torch.zeros(d_mlp, 4, **f64), "blocks.0.mlp.b_out": torch.zeros(4, **f64),
    }
    state["embed.W_E"][:, 0] = torch.arange(4, **f64)
    state["blocks.0.mlp.W_in"][0, :] = torch.tensor([1.0, -1.0, 1.0][:d_mlp], **f64)
    state["blocks.0.mlp.W_out"][:, 1] = torch.tensor(w, **f64)
    state["unembed.W_U"][1, ANSWER] = 1.0
    if bypass:
        state["unembed.W_U"][0, ANSWER] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return build_model(config, state, dtype=torch.float64)


def logit_diff(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, " batch"]:
    """Per-example ``logit[ANSWER] − logit[OTHER]`` at the last position."""
    return logits[:, -1, ANSWER] - logits[:, -1, OTHER]


def distilled_tokens(*xs: int) -> Int[Tensor, "batch 2"]:
    """A ``[batch, 2]`` batch whose last token encodes each ``x`` (the first token encodes 0)."""
    return torch.tensor([[0, x] for x in xs])
