"""Each head's effect split by the position it reads from, as components for :func:`depass_tl.custom`.

With the attention pattern ``A`` frozen, head ``h`` writes at the predicting position ``q`` (each
prompt's last real token) ``Σ_s A[h, q, s] · v[s, h] W_O[h]``: one term per key (source) position
``s``. Component ``L{l}H{h}.src{s}`` is that term (zero at every other position);
``L{l}H{h}.earlier`` is what the head writes at the earlier positions, which reaches the answer only
through later layers' attention. Together they are the head's output (TransformerLens's
``hook_result``; ``b_V`` rides with the head, inside ``v``), and ``rest`` holds everything else in the
stream at the layer's start hook (the residual before the layer, ``b_O``, and in parallel blocks the
MLP output). A post-attention norm (Gemma-2/3) is applied to each part with its frozen scale, as
:func:`depass_tl.heads` does.

Replayed like any components, each part's logit attribution is the part of the head's effect that
comes from reading position ``s`` (or from its earlier outputs). With the ``ratio`` rule the replay is
linear and a head's parts sum exactly to the head's value in a ``heads()`` replay; ``softmax`` and
``max`` split MLPs among whichever components are present, so there they need not. The ``.src``
parts are zero before the predicting position, so the replay computes them at that position only
(causal skipping): they are listed first, so they fill their own chunks.
"""

from __future__ import annotations

import torch
from torch import Tensor

import depass_tl
from depass_tl.coefficients import FrozenRun
from depass_tl.components import ComponentSpec
from depass_tl.errors import UnsupportedModelError
from depass_tl.model_view import NormView
from depass_tl.replay.norm import apply_norm

__all__ = ["head_source_hooks", "head_source_spec", "source_label", "start_hook"]

_RTOL = 1e-4


def head_source_hooks(n_layers: int) -> set[str]:
    """The hooks beyond the standard capture that :func:`head_source_spec` reads."""
    return {f"blocks.{l}.attn.hook_{name}" for l in range(n_layers) for name in ("v", "z")}


def source_label(layer: int, head: int, source: int | None) -> str:
    """``L{l}H{h}.src{s}``, or ``L{l}H{h}.earlier`` for ``source=None``."""
    return f"L{layer}H{head}." + ("earlier" if source is None else f"src{source}")


def start_hook(run: FrozenRun, layer: int) -> str:
    """Where the heads of ``layer`` have just written (the start hook of ``depass_tl.heads(layer)``)."""
    block = run.view.blocks[layer]
    return f"blocks.{layer}.hook_resid_{'post' if block.mlp is None or block.parallel else 'mid'}"


def head_source_spec(run: FrozenRun, layer: int, last: Tensor, dtype: torch.dtype = torch.float32) -> ComponentSpec:
    """``custom`` components ``L{l}H{h}.src{s}`` for every head and source position, ``L{l}H{h}.earlier``, ``rest``.

    Args:
        run: holds :func:`head_source_hooks` (:func:`depass_tl.viz.explorer_caches` checks).
        layer: the attention layer to split.
        last: ``[batch]`` each prompt's predicting position (``DePassCache.last_positions``).
        dtype: the components' dtype.

    Raises:
        UnsupportedModelError: a post-attention norm over a bias, or an attention output that is not
            ``Σ_s A v W_O`` (checked against ``hook_z``).
    """
    p = f"blocks.{layer}."
    block = run.view.blocks[layer]
    attn = block.attn
    post = block.ln1_post  # Gemma-2/3: what is added is ln1_post(Σ_h result_h + b_O), linear with its frozen scale
    if post is not None and (attn.b_O is not None or post.b is not None):
        raise UnsupportedModelError(
            f"layer {layer} normalises the attention output together with a bias (a post-norm with b_O or a norm "
            "bias), so the bias cannot be kept apart from the parts it splits; the explorer's head breakdown does "
            "not support this model."
        )
    W_O = attn.W_O.to(dtype)
    z = run.acts[p + "attn.hook_z"].to(dtype)  # [batch, pos, head, d_head]
    results = torch.einsum("bqhe,hed->hbqd", z, W_O)  # [head, batch, pos, d_model]
    B, n_pos = z.shape[:2]
    rows = torch.arange(B, device=z.device)
    last = last.to(z.device)
    v = run.acts[p + "attn.hook_v"].to(dtype)  # [batch, pos, kv_head, d_head]
    if attn.clip_qkv is not None:  # TL clamps v after hook_v; the frozen ratio is clamp(v) / v
        v = v * run.acts[p + "attn.clip_ratio"].to(dtype)
    v = v[:, :, attn.kv_of_head.to(v.device)]  # [batch, pos, head, d_head]
    A = run.acts[p + "attn.hook_pattern"].to(dtype)[rows, :, last, :n_pos]  # [batch, head, source]
    at_last = torch.einsum("bhs,bshe,hed->hsbd", A, v, W_O)  # [head, source, batch, d_model]
    expected = results[:, rows, last]  # [head, batch, d_model]
    err = float((at_last.sum(1) - expected).abs().max())
    rtol = max(_RTOL, 8 * torch.finfo(run.view.dtype).eps)  # half-precision runs were rounded in their dtype
    if err > rtol * max(1.0, float(expected.abs().max())):
        raise UnsupportedModelError(
            f"layer {layer}: the heads' outputs differ from Σ_s pattern · v · W_O by {err:.3g}, so they cannot be "
            "split by source position (a term outside the attention pattern); the explorer's head breakdown does "
            "not support this model."
        )
    H = results.shape[0]
    parts = results.new_zeros(H, n_pos, B, n_pos, results.shape[-1])  # [head, source, batch, query, d_model]
    parts[:, :, rows, last] = at_last
    earlier = results.clone()
    earlier[:, rows, last] = 0
    x = torch.cat([parts.reshape(H * n_pos, B, n_pos, -1), earlier])
    if post is not None:
        scale = run.acts[p + "ln1_post.hook_scale"].to(dtype)
        norm = NormView(post.kind, None if post.w is None else post.w.to(dtype), None)
        x = apply_norm(x, scale, norm, torch.tensor([], dtype=torch.long))
    hook = start_hook(run, layer)
    rest = run.acts[hook].to(dtype) - x.sum(0)
    labels = ([source_label(layer, h, s) for h in range(H) for s in range(n_pos)]
              + [source_label(layer, h, None) for h in range(H)] + ["rest"])
    return depass_tl.custom(hook, torch.cat([x, rest[None]]), labels)
