"""Read a ``HookedTransformer`` (TL 2.x / 3.x) into a :class:`~depass_tl.model_view.ModelView`.

Norms are recognised by module class (``LayerNorm``, ``LayerNormPre``, ``RMSNorm``, ``RMSNormPre``),
so a post-fold model is read correctly whatever ``cfg.normalization_type`` says (TL 2.x leaves it
at ``"LN"`` after ``fold_ln`` when a config is built by hand). GQA value weights are read unexpanded
from ``attn._W_V``; all-zero biases become None.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from depass_tl.backends.base import Backend
from depass_tl.backends.common import check_supported, maybe_bias, soft_cap, zero_biases_known
from depass_tl.errors import UnsupportedModelError
from depass_tl.model_view import AttnView, BlockView, ExpertView, MLPView, ModelView, MoEView, NormView

__all__ = ["BACKEND", "read_hooked_view", "is_hooked"]


def _norm_view(module: Any) -> NormView:
    name = type(module).__name__
    if name == "LayerNorm":
        return NormView("LN", module.w.detach(), module.b.detach())
    if name == "LayerNormPre":
        return NormView("LNPre", None, None)
    if name == "RMSNorm":
        return NormView("RMS", module.w.detach(), None)
    if name == "RMSNormPre":
        return NormView("RMSPre", None, None)
    if name == "Identity":
        return NormView("none", None, None)
    raise UnsupportedModelError(
        f"norm module of type {name!r} is not supported; expected LayerNorm, LayerNormPre, RMSNorm, "
        "RMSNormPre or no norm."
    )


def _attn_view(attn: Any, n_heads: int, clip_qkv: float | None) -> AttnView:
    W_V = attn._W_V if hasattr(attn, "_W_V") else attn.W_V
    b_V = attn._b_V if hasattr(attn, "_b_V") else attn.b_V
    n_kv = W_V.shape[0]
    if n_heads % n_kv != 0:
        raise UnsupportedModelError(f"n_heads={n_heads} is not a multiple of the {n_kv} key/value heads.")
    kv_of_head = torch.arange(n_heads, device=W_V.device) // (n_heads // n_kv)
    return AttnView(W_V.detach(), maybe_bias(b_V), attn.W_O.detach(), maybe_bias(attn.b_O), kv_of_head, clip_qkv)


def _mlp_view(mlp: Any, cfg: Any) -> MLPView | MoEView:
    name = type(mlp).__name__
    act_fn = str(getattr(cfg, "act_fn", "") or "")
    if name == "MoE":
        experts = tuple(
            ExpertView(e.W_gate.weight.detach().T, e.W_in.weight.detach().T, e.W_out.weight.detach().T)
            for e in mlp.experts
        )
        # TL 2.x has no cfg.norm_topk_prob and always renormalises the top-k routing weights
        return MoEView(experts, int(cfg.experts_per_token), bool(getattr(cfg, "norm_topk_prob", True)))
    if name not in ("MLP", "GatedMLP"):
        raise UnsupportedModelError(
            f"MLP module of type {name!r} (cfg.num_experts={getattr(cfg, 'num_experts', None)}, "
            f"cfg.act_fn={act_fn!r}) is not replayed; supported: MLP, GatedMLP and the Mixtral-style MoE. "
            "GPT-OSS experts clamp their inputs and add a router bias: use a dense or Mixtral-style model."
        )
    ln = None
    if getattr(mlp, "ln", None) is not None and getattr(mlp, "hook_mid", None) is not None:
        ln = _norm_view(mlp.ln)
    if name == "GatedMLP" and ln is None:
        return MLPView(
            "gated", mlp.W_in.detach(), maybe_bias(mlp.b_in), mlp.W_gate.detach(), mlp.W_out.detach(),
            maybe_bias(mlp.b_out), act_fn, None,
        )
    if name == "GatedMLP":  # TL computes ln(solu(x W_gate)) W_out + b_out: W_in and b_in are unused
        return MLPView(
            "standard", mlp.W_gate.detach(), None, None, mlp.W_out.detach(), maybe_bias(mlp.b_out), act_fn, ln
        )
    return MLPView(
        "standard", mlp.W_in.detach(), maybe_bias(mlp.b_in), None, mlp.W_out.detach(), maybe_bias(mlp.b_out),
        act_fn, ln,
    )


def read_hooked_view(model: Any) -> ModelView:
    """Read a ``HookedTransformer``'s config and weights (no copies; nothing is modified).

    Raises:
        UnsupportedModelError: a config feature the replay does not handle.
    """
    with zero_biases_known(model):  # one batched zero check for every bias, not one sync each
        return _read_hooked_view(model)


def _read_hooked_view(model: Any) -> ModelView:
    cfg = model.cfg
    check_supported(cfg)
    clip = getattr(cfg, "clip_qkv", None)
    clip = None if clip is None else float(clip)
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
    blocks = []
    for block in model.blocks:
        ln2 = None if cfg.attn_only else _norm_view(block.ln2)
        mlp = None if cfg.attn_only else _mlp_view(block.mlp, cfg)
        ln1_post = _norm_view(block.ln1_post) if hasattr(block, "ln1_post") else None
        ln2_post = _norm_view(block.ln2_post) if hasattr(block, "ln2_post") and mlp is not None else None
        attn = _attn_view(block.attn, cfg.n_heads, clip)
        blocks.append(
            BlockView(_norm_view(block.ln1), attn, ln2, mlp, ln1_post, ln2_post, parallel and mlp is not None)
        )
    ln_final = _norm_view(model.ln_final) if hasattr(model, "ln_final") else NormView("none", None, None)
    W_U: Tensor = model.unembed.W_U.detach()
    d_vocab_out = getattr(cfg, "d_vocab_out", -1)
    return ModelView(
        blocks=tuple(blocks),
        ln_final=ln_final,
        W_U=W_U,
        b_U=maybe_bias(model.unembed.b_U),
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_model=cfg.d_model,
        d_vocab=d_vocab_out if d_vocab_out > 0 else cfg.d_vocab,
        attn_only=bool(cfg.attn_only),
        has_pos_embed_in_resid=getattr(cfg, "positional_embedding_type", "standard") == "standard",
        output_logits_soft_cap=soft_cap(cfg),
        dtype=W_U.dtype,
        device=W_U.device,
        backend="HookedTransformer",
    )


def is_hooked(model: Any) -> bool:
    """Duck typing: a model with ``cfg``, ``blocks`` and ``unembed`` (a ``HookedTransformer`` or look-alike).

    The generic fallback: asked after every more specific backend.
    """
    return getattr(model, "cfg", None) is not None and hasattr(model, "blocks") and hasattr(model, "unembed")


BACKEND = Backend(
    name="HookedTransformer",
    matches=is_hooked,
    read_view=read_hooked_view,
    classes=(("transformer_lens", "HookedTransformer"),),
    priority=0,
)
