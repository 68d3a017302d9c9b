"""Which components build an attention score: DePass one level down, in the queries or the keys.

DePass freezes attention patterns, so a head whose job is to *decide where another head looks* (a
previous-token head feeding an induction head's keys: K-composition) gets little credit on the
logits. Its role is visible in the attention *scores*: with the norm scale frozen at its clean value
(the same rule the replay uses), the key of head ``h`` at position ``k`` is a sum over the components
of that layer's input, and so is the score ``q · k / attn_scale`` with the query kept whole
(``side="key"``). ``side="query"`` splits the query instead and keeps the key whole. Constants (the
norm's bias, ``b_K`` / ``b_Q``) go to each group's bias component, so every group sums to
TransformerLens's own ``hook_attn_scores`` exactly; the function checks that and raises if not.

Rotary embeddings are linear per position and are applied per component with the model's own
``apply_rotary``; GQA heads read their shared key/query head. Score features that are not linear in
the input are refused: QK norms, ``clip_qkv``, score soft caps, ALiBi / relative position biases,
log-n query scaling, split q/k/v inputs, shortformer positions. Only ``HookedTransformer`` is
supported (the function calls its attention modules). Padded batches work with right padding; with
left padding on a rotary model TL shifts the positions by the mask, which the DePassCache does not
record, so the final check raises.

Examples:
    >>> import torch, depass_tl
    >>> from depass_tl.attention_scores import attention_score_attrs
    >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
    >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=8, d_vocab=10,
    ...                               attn_only=True, act_fn=None, normalization_type="LN", seed=0)
    >>> model = HookedTransformer(cfg)
    >>> tokens = torch.tensor([[1, 2, 3, 4, 5]])
    >>> _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(0))
    >>> _, cache = model.run_with_cache(tokens)
    >>> att = attention_score_attrs(model, dc, cache, layer=1, key_pos=2)
    >>> att.values.shape, att.labels[-1], att.completeness_error() < 1e-5
    (torch.Size([4, 1, 2]), 'bias', True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from depass_tl.cache import DePassCache
from depass_tl.errors import CompletenessError, DePassError, HookNotFoundError
from depass_tl.backends import read_model_view
from depass_tl.replay.norm import apply_norm

__all__ = ["ScoreAttribution", "attention_score_attrs"]

# The final check against TL's hook_attn_scores allows this many units of rounding (eps of the model's
# dtype) times the magnitude of the parts: a cache from another input misses by O(1) relative.
_CHECK_ULPS = 256


@dataclass(frozen=True)
class ScoreAttribution:
    """Attention-score attributions: ``values[c, b, i]`` is component ``c``'s share of head ``heads[i]``'s
    pre-softmax score from ``query_pos[b]`` to ``key_pos[b]``.

    Each group of ``group_size`` consecutive components (as in the :class:`DePassCache`) sums to
    ``clean``, TransformerLens's ``hook_attn_scores`` at those positions.
    """

    values: Float[Tensor, "component batch head"] = field(repr=False)
    labels: tuple[str, ...]
    layer: int
    heads: tuple[int, ...]
    side: Literal["key", "query"]
    query_pos: Tensor = field(repr=False)
    key_pos: Tensor = field(repr=False)
    clean: Float[Tensor, "batch head"] = field(repr=False)
    group_size: int

    def completeness_error(self) -> float:
        """Largest ``|Σ_group values − clean|`` over groups, prompts and heads."""
        groups = self.values.reshape(-1, self.group_size, *self.values.shape[1:]).sum(1)
        return float((groups - self.clean.to(groups.dtype)).abs().max())

    def to_dataframe(self) -> Any:
        """Long table: one row per (component, batch, head) with the share, the clean score and positions."""
        import pandas as pd

        rows = []
        for c, label in enumerate(self.labels):
            for b in range(self.values.shape[1]):
                for i, h in enumerate(self.heads):
                    rows.append({
                        "component": label, "batch": b, "head": f"L{self.layer}H{h}",
                        "query_pos": int(self.query_pos[b]), "key_pos": int(self.key_pos[b]),
                        "share": float(self.values[c, b, i]), "clean_score": float(self.clean[b, i]),
                    })
        return pd.DataFrame(rows)


def _refuse_nonlinear(cfg: Any) -> None:
    checks = [
        (getattr(cfg, "use_qk_norm", False), "use_qk_norm=True (a norm on each query/key)"),
        (getattr(cfg, "original_architecture", None) in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM"),
         f"original_architecture={getattr(cfg, 'original_architecture', None)!r} (QK norm)"),
        (getattr(cfg, "clip_qkv", None) is not None, f"clip_qkv={getattr(cfg, 'clip_qkv', None)} (clamped q/k)"),
        ((getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0,
         f"attn_scores_soft_cap={getattr(cfg, 'attn_scores_soft_cap', None)} (tanh on the scores)"),
        (cfg.positional_embedding_type in ("alibi", "relative_positional_bias"),
         f"positional_embedding_type={cfg.positional_embedding_type!r} (a bias added to the scores)"),
        (getattr(cfg, "use_logn_attn", False), "use_logn_attn=True (log-n query scaling)"),
        (getattr(cfg, "use_split_qkv_input", False), "use_split_qkv_input=True (separate q/k/v inputs)"),
        (cfg.positional_embedding_type == "shortformer",
         "positional_embedding_type='shortformer' (positions added to the q/k inputs only)"),
    ]
    for bad, what in checks:
        if bad:
            raise DePassError(
                f"attention_score_attrs cannot split the scores of a model with {what}: the score is not "
                "linear in the layer input there. Attribute the logits (run_with_depass) instead."
            )


def _positions(pos: int | Tensor, n_pos: int, last: Tensor, what: str) -> Tensor:
    """One position per prompt (on the CPU); negative values count back from each prompt's last real token."""
    batch = last.shape[0]
    if isinstance(pos, Tensor) and not pos.is_floating_point():
        out = pos.detach().cpu().to(torch.long).reshape(-1)
        out = out.expand(batch).clone() if out.numel() == 1 else out
    elif isinstance(pos, int) and not isinstance(pos, bool):
        out = torch.full((batch,), pos, dtype=torch.long)
    else:
        raise DePassError(f"{what} must be an int or a [batch] integer tensor of positions; got {pos!r}")
    if out.shape != (batch,):
        raise DePassError(f"{what} must give one position per prompt (batch {batch}); got shape {tuple(out.shape)}")
    out = torch.where(out < 0, last + 1 + out, out)  # -1 = each prompt's last real token
    if bool((out < 0).any()) or bool((out > last).any()):
        raise DePassError(
            f"{what} must point at real tokens: positions 0..last real token {last.tolist()} (negative values count "
            f"back from it); got {out.tolist()}"
        )
    return out


def _rotary_matrix(attn: Any, pos: int, n_pos: int, dtype: torch.dtype) -> Tensor:
    """``R [d_head, d_head]`` with ``rotary(v) = v @ R`` at ``pos``, from the model's own ``apply_rotary``.

    With dynamic NTK scaling the table depends on the sequence length, so the call covers positions
    ``pos .. n_pos - 1`` like the clean run's rescale to ``n_pos``; otherwise one position is enough.
    """
    d_head = attn.cfg.d_head
    length = n_pos - pos if getattr(attn.cfg, "use_dynamic_ntk_rope", False) else 1
    eye = torch.eye(d_head, dtype=dtype, device=attn.rotary_sin.device)
    out = attn.apply_rotary(eye[:, None, None, :].expand(d_head, length, 1, d_head), past_kv_pos_offset=pos)
    return out[:, 0, 0, :].to(dtype)


def _check_complete(result: ScoreAttribution, eps: float) -> None:
    v = result.values
    groups = v.reshape(-1, result.group_size, *v.shape[1:])
    miss = (groups.sum(1) - result.clean).abs()  # [group, batch, head]
    allowed = _CHECK_ULPS * eps * (groups.abs().sum(1) + result.clean.abs())
    if not bool((miss <= allowed).all()):  # NaN fails too
        raise CompletenessError(
            f"the split scores miss TransformerLens's hook_attn_scores by up to {float(miss.max()):.3g} (allowed "
            f"{float(allowed.max()):.3g}): the DePassCache and the ActivationCache must come from the same model and "
            "input (rotary models: without left padding, whose shifted positions the DePassCache does not record)."
        )


def _layer_input(dc: DePassCache, layer: int) -> Tensor:
    names = [f"blocks.{layer}.hook_resid_pre"] + ([f"blocks.{layer - 1}.hook_resid_post"] if layer > 0 else [])
    for name in names:
        if name in dc:
            return dc[name]
    raise HookNotFoundError(
        f"the DePassCache has no decomposition of layer {layer}'s input ({' or '.join(names)}). Start the "
        "components before that layer ("
        + (f"e.g. depass_tl.heads({layer - 1}) or " if layer > 0 else "")
        + "token components, depass_tl.tokens()) and do not filter that hook out with names_filter."
    )


@torch.no_grad()
def attention_score_attrs(
    model: Any,
    dc: DePassCache,
    cache: Any,
    layer: int,
    *,
    key_pos: int | Tensor,
    query_pos: int | Tensor = -1,
    heads: int | list[int] | None = None,
    side: Literal["key", "query"] = "key",
) -> ScoreAttribution:
    """Split attention scores of ``layer`` over the components of ``dc``, on the key or the query side.

    Args:
        model: The ``HookedTransformer`` both runs came from.
        dc: A :class:`DePassCache` holding layer ``layer``'s input (``blocks.{layer}.hook_resid_pre``
            or ``blocks.{layer-1}.hook_resid_post``); e.g. ``run_with_depass(model, tokens,
            components=depass_tl.heads(layer - 1))``.
        cache: ``model.run_with_cache(tokens)``'s ``ActivationCache`` for the same input (gives the
            frozen norm scale, the whole query or key, and the scores to check against).
        layer: The attention layer whose scores are split.
        key_pos: Key position(s): an int or a ``[batch]`` integer tensor; negative values count back
            from each prompt's last real token (``-1`` is that token).
        query_pos: Query position(s), the same way; ``-1`` (default) is each prompt's last real token.
        heads: Head index, list of heads, or None for all heads.
        side: ``"key"`` splits the key and keeps the query whole; ``"query"`` the other way round.

    Returns:
        A :class:`ScoreAttribution` (values ``[component, batch, head]``), exact: each group sums to the
        clean score (checked; a mismatch raises).

    Raises:
        DePassError: On a model other than ``HookedTransformer``, a score that is not linear in the layer
            input (see the module docstring), bad positions (padding, a key after the query in causal
            attention, outside a local window, a masked score), or a missing hook.
    """
    try:
        from transformer_lens import HookedTransformer
    except ImportError as err:  # TL 4.x removed HookedTransformer
        raise DePassError("attention_score_attrs needs transformer_lens.HookedTransformer (TL 2.x / 3.x); the "
                          "installed TransformerLens has none.") from err
    if not isinstance(model, HookedTransformer):
        raise DePassError(
            f"attention_score_attrs supports HookedTransformer models (it calls their attention modules); got "
            f"{type(model).__name__}."
        )
    cfg = model.cfg
    _refuse_nonlinear(cfg)
    if side not in ("key", "query"):
        raise DePassError(f"side must be 'key' or 'query'; got {side!r}")
    if not 0 <= layer < cfg.n_layers:
        raise DePassError(f"layer must be in 0..{cfg.n_layers - 1}; got {layer}")
    head_list = list(range(cfg.n_heads)) if heads is None else [heads] if isinstance(heads, int) else list(heads)
    if not head_list or any(not 0 <= h < cfg.n_heads for h in head_list):
        raise DePassError(f"heads must be indices in 0..{cfg.n_heads - 1}; got {heads!r}")

    x_all = _layer_input(dc, layer)  # [component, batch, pos, d_model]
    n_comp, batch, n_pos, _ = x_all.shape
    last = dc.last_positions.detach().cpu().to(torch.long)
    q_pos = _positions(query_pos, n_pos, last, "query_pos")
    k_pos = _positions(key_pos, n_pos, last, "key_pos")
    if cfg.attention_dir == "causal" and bool((k_pos > q_pos).any()):
        raise DePassError(f"key_pos {k_pos.tolist()} is after query_pos {q_pos.tolist()}: causal attention never "
                          "looks ahead, so that score is masked.")

    attn = model.blocks[layer].attn
    if getattr(cfg, "use_local_attn", False) and cfg.attn_types[layer] == "local":
        if bool((q_pos - k_pos >= cfg.window_size).any()):
            raise DePassError(f"layer {layer} is a local-attention layer with window {cfg.window_size}: query "
                              f"{q_pos.tolist()} never sees key {k_pos.tolist()} (the score is masked).")
    rotary = cfg.positional_embedding_type == "rotary"
    prefix = f"blocks.{layer}.attn."
    whole_name = ("hook_rot_k" if side == "query" else "hook_rot_q") if rotary else ("hook_k" if side == "query" else "hook_q")
    try:
        whole = cache[prefix + whole_name]  # [batch, pos, n_(kv_)heads, d_head]
        scores = cache[prefix + "hook_attn_scores"]  # [batch, head, query, key]
        norm = read_model_view(model).blocks[layer].ln1
        scale = None if norm.kind == "none" else cache[f"blocks.{layer}.ln1.hook_scale"]  # [batch, pos, 1]
    except KeyError as err:
        raise DePassError(f"the ActivationCache lacks {err}; pass the full model.run_with_cache(tokens) cache.") from err
    if whole.shape[2] != cfg.n_heads:  # GQA: keys/values cached per kv head
        whole = whole.repeat_interleave(cfg.n_heads // whole.shape[2], dim=2)

    rows = torch.arange(batch)
    split_pos = k_pos if side == "key" else q_pos
    dtype = x_all.dtype
    x = x_all[:, rows, split_pos]  # [component, batch, d_model]
    if scale is not None and scale.ndim == 4:  # use_attn_in: one copy of the input per head, same scale
        scale = scale[:, :, 0]
    scale_at = None if scale is None else scale[rows, split_pos].to(dtype)[:, None, :]  # [batch, 1, 1]
    normed = apply_norm(x[:, :, None], scale_at, norm, dc.bias_rows.to(x.device))[:, :, 0]  # [comp, batch, d]
    W = (attn.W_K if side == "key" else attn.W_Q)[head_list].to(dtype)  # [head, d_model, d_head]
    b = (attn.b_K if side == "key" else attn.b_Q)[head_list].to(dtype)  # [head, d_head]
    parts = torch.einsum("cbd,hde->cbhe", normed, W)
    parts[dc.bias_rows] += b
    if rotary:  # rotation at a position is a linear map R_p of d_head: exact per component
        rotated = torch.empty_like(parts)
        for i in range(batch):
            rotated[:, i] = parts[:, i] @ _rotary_matrix(attn, int(split_pos[i]), n_pos, dtype).to(parts.device)
        parts = rotated
    other_pos = q_pos if side == "key" else k_pos
    other = whole[rows, other_pos][:, head_list].to(dtype)  # [batch, head, d_head]
    values = (parts * other).sum(-1) / attn.attn_scale  # [component, batch, head]
    clean = scores[rows[:, None], torch.tensor(head_list)[None], q_pos[:, None], k_pos[:, None]]  # [batch, head]
    result = ScoreAttribution(
        values=values, labels=tuple(dc.labels), layer=layer, heads=tuple(head_list), side=side,
        query_pos=q_pos, key_pos=k_pos, clean=clean.to(dtype), group_size=dc.group_size,
    )
    if not bool(torch.isfinite(clean).all()):
        raise DePassError(
            f"the clean score from query {q_pos.tolist()} to key {k_pos.tolist()} is masked (-inf) for some prompt: "
            "the key is padding or outside the attention window."
        )
    _check_complete(result, torch.finfo(cfg.dtype).eps)
    return result
