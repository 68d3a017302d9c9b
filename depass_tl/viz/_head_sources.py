"""Each head's output split by the position it reads from, as components for :func:`depass_tl.custom`.

With the attention pattern ``A`` frozen, head ``h`` writes at query position ``q``
``Σ_s A[h, q, s] · v[s, h] W_O[h]``: one term per key (source) position ``s``. Component
``L{l}H{h}.src{s}`` holds that term at every query position, so the terms of a head add up to its
output (TransformerLens's ``hook_result``; ``b_V`` rides with the head, inside ``v``), and ``rest``
holds everything else in the stream at the layer's start hook (the residual before the layer, ``b_O``,
and in parallel blocks the MLP output). A post-attention norm (Gemma-2/3) is applied to each term with
its frozen scale, as :func:`depass_tl.heads` does. Replayed like any components, each term's logit attribution
is the part of the head's effect that comes from reading position ``s``. With the ``ratio`` rule the
replay is linear and the terms of a head sum exactly to the head's value in a ``heads()`` replay;
``softmax`` and ``max`` split MLPs among whichever components are present, so there they need not.
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


def source_label(layer: int, head: int, source: int) -> str:
    return f"L{layer}H{head}.src{source}"


def start_hook(run: FrozenRun, layer: int) -> str:
    """Where the heads of ``layer`` have just written (the start hook of ``depass_tl.heads(layer)``)."""
    block = run.view.blocks[layer]
    return f"blocks.{layer}.hook_resid_{'post' if block.mlp is None or block.parallel else 'mid'}"


def head_source_spec(run: FrozenRun, layer: int, dtype: torch.dtype = torch.float32) -> ComponentSpec:
    """``custom`` components ``L{l}H{h}.src{s}`` for every head ``h`` and source position ``s``, + ``rest``.

    The run must hold :func:`head_source_hooks` (:func:`depass_tl.viz.explorer_caches` checks).

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
    v = run.acts[p + "attn.hook_v"].to(dtype)  # [batch, pos, kv_head, d_head]
    if attn.clip_qkv is not None:  # TL clamps v after hook_v; the frozen ratio is clamp(v) / v
        v = v * run.acts[p + "attn.clip_ratio"].to(dtype)
    v = v[:, :, attn.kv_of_head.to(v.device)]  # [batch, pos, head, d_head]
    n_pos = v.shape[1]
    pattern = run.acts[p + "attn.hook_pattern"].to(dtype)[..., :n_pos]  # [batch, head, query, key]
    written = torch.einsum("bshe,hed->bhsd", v, attn.W_O.to(dtype))  # what each head writes per source
    parts = torch.einsum("bhqs,bhsd->hsbqd", pattern, written)  # [head, source, batch, query, d_model]
    z = run.acts[p + "attn.hook_z"].to(dtype)
    results = torch.einsum("bqhe,hed->hbqd", z, attn.W_O.to(dtype))
    err = float((parts.sum(1) - results).abs().max())
    rtol = max(_RTOL, 8 * torch.finfo(run.view.dtype).eps)  # half-precision runs were rounded in their dtype
    if err > rtol * max(1.0, float(results.abs().max())):
        raise UnsupportedModelError(
            f"layer {layer}: the heads' outputs differ from Σ_s pattern · v · W_O by {err:.3g}, so they cannot be "
            "split by source position (a term outside the attention pattern); the explorer's head breakdown does "
            "not support this model."
        )
    n_heads = parts.shape[0]
    parts = parts.reshape(n_heads * n_pos, *parts.shape[2:])
    if post is not None:
        scale = run.acts[p + "ln1_post.hook_scale"].to(dtype)
        norm = NormView(post.kind, None if post.w is None else post.w.to(dtype), None)
        parts = apply_norm(parts, scale, norm, torch.tensor([], dtype=torch.long))
    hook = start_hook(run, layer)
    rest = run.acts[hook].to(dtype) - parts.sum(0)
    labels = [source_label(layer, h, s) for h in range(n_heads) for s in range(n_pos)] + ["rest"]
    return depass_tl.custom(hook, torch.cat([parts, rest[None]]), labels)
