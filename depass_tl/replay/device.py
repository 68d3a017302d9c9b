"""Device placement: each block's work runs where that block's weights live.

TransformerLens can split a model over several devices (``n_devices``): block l's weights sit on one
device, the embeddings on the first and the unembedding on the last. The replay moves each chunk's
state, and the block's frozen coefficients, to the block's device before working on it (a no-op
when they are already there), so nothing is gathered on one device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from depass_tl.model_view import BlockView, NormView

__all__ = ["block_device", "norm_device", "block_tensors"]


def block_device(block: BlockView) -> torch.device:
    """The device of a block's weights (its attention output matrix)."""
    return block.attn.W_O.device


def norm_device(norm: NormView, fallback: torch.device) -> torch.device:
    """The device of a norm's weight, or ``fallback`` for weightless norms."""
    return fallback if norm.w is None else norm.w.device


def block_tensors(acts: Mapping[str, Tensor], prefix: str, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
    """The frozen tensors whose names start with ``prefix``, floating ones in ``dtype``, all on ``device``.

    Only the block's own tensors are converted (one block at a time), so a replay in another dtype or
    on another device never holds a second copy of the whole run.
    """
    out = {}
    for name, t in acts.items():
        if name.startswith(prefix):
            t = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
            out[name] = t
    return out
