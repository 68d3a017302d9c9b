"""One transformer block's sublayers, per component (pure tensor code).

A pre-norm block is ``resid_mid = resid_pre + attn(ln1(resid_pre))`` and ``resid_post = resid_mid +
mlp(ln2(resid_mid))``. Variants handled here, each with frozen coefficients:

* ``parallel_attn_mlp`` (GPT-J, NeoX): the MLP reads ``ln2(resid_pre)``; ``resid_post = resid_pre +
  attn_out + mlp_out`` and there is no ``hook_resid_mid``.
* Gemma-2/3 post-norms (``use_normalization_before_and_after``): ``attn_out = ln1_post(attn(...))`` and
  ``mlp_out = ln2_post(mlp(...))``, RMS norms with their own frozen ``hook_scale``.
* MLP kinds: standard / gated / SoLU (:mod:`~depass_tl.replay.mlp`) and Mixtral MoE
  (:mod:`~depass_tl.replay.moe`).
* Padding: :func:`pad_to_bias` puts everything at padded positions into the bias component.

The engine (:mod:`~depass_tl.replay.engine`) composes these per chunk of components; this module
keeps the padding rule for whole groups (the initial components).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pad_to_bias"]


def pad_to_bias(t: Tensor, pad: Tensor | None, group_size: int) -> Tensor:
    """Move, per group, the whole of ``t`` ``[component, batch, pos, d]`` at padded positions to the bias row.

    ``pad`` is ``[batch, pos]`` bool (True = padding) or None. The group sums are unchanged, so
    completeness holds; every other component is exactly zero at padded positions. TL's mask keeps
    real query positions from attending padded keys, so nothing moved here reaches a real position.
    """
    if pad is None:
        return t
    C = t.shape[0]
    g = t.reshape(C // group_size, group_size, *t.shape[1:])  # [group, component, batch, pos, d]
    total = g.sum(1)  # [group, batch, pos, d]
    at_pad = pad[None, :, :, None]
    g = torch.where(at_pad[:, None], torch.zeros_like(g), g)
    last = torch.where(at_pad, total, g[:, -1])
    return torch.cat([g[:, :-1], last[:, None]], dim=1).reshape(t.shape)
