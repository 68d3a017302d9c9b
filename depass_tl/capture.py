"""Capture: run the model once under scoped hooks and freeze what the replay needs.

This is the only module that registers hooks. It uses ``model.run_with_cache`` (whose hooks live in a
``model.hooks(...)`` context and are removed in a ``finally``, also when the forward raises), keeps
only the hooks the replay needs, and never modifies the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from depass_tl.coefficients import FrozenRun
from depass_tl.errors import DePassError, UnsupportedModelError
from depass_tl.model_view import ModelView, NormView, read_model_view

__all__ = ["capture", "to_tokens"]


def to_tokens(model: Any, input: Any, *, prepend_bos: bool | None = None) -> Tensor:
    """Turn user input into a ``[batch, pos]`` long tensor on the model's device.

    Accepts a string, a list of strings (all must tokenise to the same length), or an integer tensor
    of shape ``[batch, pos]`` or ``[pos]`` (one prompt).

    Raises:
        DePassError: empty input, wrong shape or dtype, ids outside the vocabulary, strings without a
            tokenizer, or prompts of different lengths.
    """
    if isinstance(input, str) or (isinstance(input, (list, tuple)) and input and all(isinstance(s, str) for s in input)):
        if getattr(model, "tokenizer", None) is None:
            raise DePassError(
                "string input needs a model with a tokenizer (model.tokenizer is None); pass token ids as a "
                "[batch, pos] integer tensor instead."
            )
        prompts = [input] if isinstance(input, str) else list(input)
        if any(len(p) == 0 for p in prompts):
            raise DePassError("got an empty prompt; pass at least one character of text.")
        kwargs = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
        rows = [model.to_tokens(p, **kwargs) for p in prompts]
        lengths = sorted({int(r.shape[-1]) for r in rows})
        if len(lengths) > 1:
            raise DePassError(
                f"the prompts tokenise to different lengths {lengths}; padded batches are not supported yet. "
                "Pass prompts of equal token length, or run them one at a time."
            )
        return torch.cat(rows, dim=0)
    if not isinstance(input, Tensor):
        raise DePassError(
            f"input must be a string, a list of strings, or a [batch, pos] integer tensor; got {type(input).__name__}."
        )
    if input.is_floating_point() or input.is_complex() or input.dtype == torch.bool:
        raise DePassError(f"token ids must be an integer tensor, got dtype {input.dtype}; use tokens.long().")
    if input.ndim == 1:
        input = input[None]
    if input.ndim != 2:
        raise DePassError(
            f"tokens must have shape [batch, pos] (or [pos]); got shape {tuple(input.shape)}."
        )
    if input.shape[0] == 0 or input.shape[1] == 0:
        raise DePassError(f"tokens must be non-empty; got shape {tuple(input.shape)}.")
    d_vocab = model.cfg.d_vocab
    if int(input.min()) < 0 or int(input.max()) >= d_vocab:
        raise DePassError(
            f"token ids must lie in [0, {d_vocab}); got min {int(input.min())}, max {int(input.max())}."
        )
    return input.to(model.cfg.device).long()


def _needed_hooks(view: ModelView, model: Any) -> set[str]:
    names = {"hook_embed", "blocks.0.hook_resid_pre", "ln_final.hook_scale"}
    if view.has_pos_embed_in_resid:
        names.add("hook_pos_embed")
    if "unembed.hook_in" in model.hook_dict:
        names.add("unembed.hook_in")
    for l, block in enumerate(view.blocks):
        p = f"blocks.{l}."
        names |= {p + "hook_resid_pre", p + "hook_attn_out", p + "hook_resid_post", p + "attn.hook_pattern"}
        names.add(p + "ln1.hook_scale")
        if block.mlp is not None:
            names |= {p + "hook_resid_mid", p + "hook_mlp_out", p + "ln2.hook_scale", p + "mlp.hook_pre", p + "mlp.hook_post"}
            if block.mlp.kind == "gated":
                names.add(p + "mlp.hook_pre_linear")
    return {n for n in names if n in model.hook_dict}


def _apply_norm_clean(x: Tensor, scale: Tensor | None, norm: NormView) -> Tensor:
    if norm.kind in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    if norm.kind != "none":
        assert scale is not None
        x = x / scale
    if norm.w is not None:
        x = x * norm.w
    if norm.b is not None:
        x = x + norm.b
    return x


def _check_residual_identity(acts: dict[str, Tensor], view: ModelView) -> None:
    """The clean cache must satisfy resid_pre + attn_out (+ mlp_out) = resid_post (TL issue #1639)."""
    for l, block in enumerate(view.blocks):
        p = f"blocks.{l}."
        total = acts[p + "hook_resid_pre"] + acts[p + "hook_attn_out"]
        if block.mlp is not None:
            total = total + acts[p + "hook_mlp_out"]
        ref = acts[p + "hook_resid_post"]
        err = float((total - ref).abs().max())
        tol = 1e-3 * max(1.0, float(ref.abs().max()))
        if err > tol:
            raise UnsupportedModelError(
                f"layer {l}: hook_resid_pre + hook_attn_out (+ hook_mlp_out) differs from hook_resid_post by "
                f"{err:.3g}; the model's residual stream is not the sum its hooks report, so it cannot be "
                "decomposed. Check the model class and its hook semantics."
            )


def capture(
    model: Any, input: Any, *, prepend_bos: bool | None = None, extra_hooks: Iterable[str] = ()
) -> FrozenRun:
    """Run ``model`` once on ``input`` and freeze the clean activations and coefficients.

    Args:
        model: a ``HookedTransformer``.
        input: a string, a list of equal-length strings, or ``[batch, pos]`` token ids.
        prepend_bos: passed to ``model.to_tokens`` for string input (None: the model's default).
        extra_hooks: further TL hook names to keep (e.g. ``blocks.3.attn.hook_z`` for head components).

    Returns:
        A :class:`~depass_tl.coefficients.FrozenRun`. No hook stays attached to the model.

    Raises:
        DePassError: bad input or an unsupported model.

    Examples:
        >>> import torch, depass_tl
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...                               d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> run = depass_tl.capture(HookedTransformer(cfg), torch.tensor([[1, 2, 3]]))
        >>> run.acts["blocks.0.attn.hook_pattern"].shape
        torch.Size([1, 2, 3, 3])
    """
    view = read_model_view(model)
    tokens = to_tokens(model, input, prepend_bos=prepend_bos)
    names = _needed_hooks(view, model)
    extra = set(extra_hooks)
    unknown = sorted(extra - set(model.hook_dict))
    if unknown:
        raise DePassError(f"unknown hook name(s) {unknown}; see model.hook_dict for the hooks this model has.")
    names |= extra
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    acts: dict[str, Tensor] = {name: cache[name].detach().clone() for name in names}
    _check_residual_identity(acts, view)
    for l, block in enumerate(view.blocks):
        if block.mlp is not None and block.mlp.kind == "gated":
            with torch.no_grad():
                acts[f"blocks.{l}.mlp.gate_act"] = model.blocks[l].mlp.act_fn(acts[f"blocks.{l}.mlp.hook_pre"]).clone()
    if "unembed.hook_in" not in acts:  # TL 2.x has no unembed hooks: rebuild from the frozen final scale
        final = acts[f"blocks.{view.n_layers - 1}.hook_resid_post"]
        acts["unembed.hook_in"] = _apply_norm_clean(final, acts.get("ln_final.hook_scale"), view.ln_final)
    str_tokens = None
    if getattr(model, "tokenizer", None) is not None:
        str_tokens = [model.to_str_tokens(row) for row in tokens]
    return FrozenRun.build(tokens=tokens, logits=logits.detach(), acts=acts, view=view, str_tokens=str_tokens)
