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
log-n query scaling, split q/k/v inputs, shortformer positions.

Both model classes are supported. On a ``HookedTransformer`` the parts are checked against TL's
``hook_attn_scores``. On a ``TransformerBridge`` (whose ``hook_attn_scores`` is not always the
pre-softmax score: TL 4's native model and Bridges around Hugging Face modules that return only the
weights, e.g. OPT, hook the pattern there) the clean score is ``q · k / attn_scale`` from the cached
``hook_q``/``hook_k``, rotated where the model has rotary embeddings, and that score is itself checked
against the model's own attention pattern: the softmax of the query's row of scores must reproduce
``hook_pattern`` (a key whose pattern is 0 is masked and refused). Rotary embeddings on the Bridge
use the model's own tables: TL's native rotary module (adjacent pairs), or the ``hook_cos`` /
``hook_sin`` of Hugging Face models (rotate-half, partial rotary as in NeoX; checked against
``hook_rot_q`` / ``hook_rot_k`` where the Bridge hooks them). Attention sinks are refused on the
Bridge. Padded batches work with right padding, and with left padding on the Bridge (which shifts
rotary positions by the mask, read back from the model's pattern or its ``hook_cos``); with left
padding on a rotary HookedTransformer TL shifts the positions by the mask, which the DePassCache does
not record, so the final check raises.

The final check allows 256 units of rounding of the clean run's precision times the magnitude of the
parts: the model's dtype, or float32 for a float64 Bridge whose RMS norms (TL-native, Hugging Face
Llama-family) normalise in float32 (``ModelView.clean_run_dtype``), so its q and k carry float32
rounding (~1e-7 relative) that the split, with the frozen scale in float64, does not.

Examples:
    On the induction toy (a HookedTransformer on TL 2.x / 3.x, a TransformerBridge on TL 4), the
    induction heads' keys on a repeated sequence are built by the previous-token head L0H0:

    >>> import torch, depass_tl
    >>> from depass_tl import toy
    >>> from depass_tl.attention_scores import attention_score_attrs
    >>> from depass_tl.toy.data import repeated_sequences
    >>> model, _ = toy.load("induction")
    >>> tokens = repeated_sequences(1, half_len=8, d_vocab=model.cfg.d_vocab, seed=0)  # BOS, 8 tokens, same 8
    >>> _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(0))
    >>> _, cache = model.run_with_cache(tokens)
    >>> att = attention_score_attrs(model, dc, cache, layer=1, key_pos=9)  # the token after the earlier copy
    >>> att.values.shape, att.labels[-1], att.completeness_error() < 1e-4
    (torch.Size([6, 1, 4]), 'bias', True)
    >>> [att.labels[int(c)] for c in att.values[:, 0].argmax(0)]
    ['L0H0', 'L0H0', 'L0H0', 'L0H0']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from depass_tl.backends import read_model_view
from depass_tl.backends.bridge import is_bridge, optional_tensor
from depass_tl.cache import DePassCache
from depass_tl.errors import CompletenessError, DePassError, HookNotFoundError
from depass_tl.positions import per_prompt_positions
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
    ``clean``, the model's pre-softmax scores at those positions (TransformerLens's ``hook_attn_scores``
    on a HookedTransformer; ``q · k / attn_scale`` from the cached, rotated queries and keys on a Bridge).
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


def _refuse_nonlinear(cfg: Any, model: Any) -> None:
    qk_norm_modules = any(getattr(block.attn, name, None) is not None  # a Bridge's cfg says use_qk_norm=False
                          for block in model.blocks for name in ("q_norm", "k_norm"))
    checks = [
        (getattr(cfg, "use_qk_norm", False), "use_qk_norm=True (a norm on each query/key)"),
        (qk_norm_modules, "q_norm / k_norm modules (a norm on each query/key, e.g. Qwen3)"),
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


def _rotate_half_matrix(cos: Tensor, sin: Tensor, d_head: int) -> Tensor:
    """``R [d_head, d_head]`` with ``v @ R = v·cos + rotate_half(v)·sin`` on the first ``len(cos)`` dims (Llama)."""
    rd = cos.shape[-1]
    eye = torch.eye(d_head, dtype=cos.dtype, device=cos.device)
    x = eye[:, :rd]
    rotated = eye.clone()
    rotated[:, :rd] = x * cos + torch.cat([-x[:, rd // 2:], x[:, : rd // 2]], -1) * sin
    return rotated


def _per_head(t: Tensor, n_heads: int) -> Tensor:
    """GQA: expand ``[n_kv, ...]`` to ``[n_heads, ...]`` (each query head reads its shared key head)."""
    return t if t.shape[0] == n_heads else t.repeat_interleave(n_heads // t.shape[0], dim=0)


@dataclass(frozen=True)
class _Reference:
    """What the split is checked against, from the clean run of one model class."""

    whole: Tensor  # [batch, head, d_head]: the side that is kept whole, at its position
    clean: Tensor  # [batch, head]: the clean scores
    rotation: list[Tensor] | None  # per prompt: R of the split side's position (rotary), else None
    attn_scale: float


def _hooked_reference(model: Any, cache: Any, layer: int, side: str, heads: list[int], q_pos: Tensor, k_pos: Tensor,
                      n_pos: int, dtype: torch.dtype) -> _Reference:
    attn, cfg = model.blocks[layer].attn, model.cfg
    rotary = cfg.positional_embedding_type == "rotary"
    name = ("hook_rot_k" if side == "query" else "hook_rot_q") if rotary else ("hook_k" if side == "query" else "hook_q")
    whole = _per_head_cache(cache[f"blocks.{layer}.attn.{name}"], cfg.n_heads)  # [batch, pos, head, d_head]
    scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]  # [batch, head, query, key]
    rows = torch.arange(q_pos.shape[0])
    other = q_pos if side == "key" else k_pos
    split = k_pos if side == "key" else q_pos
    rotation = [_rotary_matrix(attn, int(p), n_pos, dtype) for p in split] if rotary else None
    clean = scores[rows[:, None], torch.tensor(heads)[None], q_pos[:, None], k_pos[:, None]]
    return _Reference(whole[rows, other][:, heads].to(dtype), clean.to(dtype), rotation, float(attn.attn_scale))


def _per_head_cache(t: Tensor, n_heads: int) -> Tensor:
    """GQA: a cached ``[batch, pos, n_kv, d_head]`` key expanded to ``n_heads``."""
    return t if t.shape[2] == n_heads else t.repeat_interleave(n_heads // t.shape[2], dim=2)


def _rotate_half(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """HF's rotary embedding on the first ``cos.shape[-1]`` dims of ``x`` [batch, pos, head, d].

    ``x·cos + rotate_half(x)·sin`` there; the other dims pass unchanged (partial rotary, NeoX).
    """
    rd = cos.shape[-1]
    cos, sin = cos[:, :, None].to(x.dtype), sin[:, :, None].to(x.dtype)  # [batch or 1, pos, 1, rd]
    turned, passed = x[..., :rd], x[..., rd:]
    half = torch.cat([-turned[..., rd // 2:], turned[..., : rd // 2]], -1)
    return torch.cat([turned * cos + half * sin, passed], -1)


def _bridge_rotary(model: Any, cache: Any, layer: int, dtype: torch.dtype) -> tuple[Any, Any]:
    """``(rotate, matrix)`` for a Bridge's rotary embedding, from the model's own tables.

    ``rotate(t)`` applies it to ``t`` [batch, pos, head, d_head] at positions ``0..pos-1``; ``matrix(b, p)``
    is ``R`` [d_head, d_head] with ``rotate(v) = v @ R`` for prompt ``b`` at position ``p``. TL's native
    model rotates with its ``rotary`` module (adjacent pairs, tables from its own buffers); Hugging Face
    models behind a Bridge rotate half of the dims with the ``cos`` / ``sin`` their attention hooks
    (per prompt: left padding's shifted positions included).
    """
    prefix, d_head = f"blocks.{layer}.attn.", model.cfg.d_head
    rotary = getattr(getattr(model.blocks[layer].attn, "original_component", None), "rotary", None)
    if rotary is not None and callable(getattr(rotary, "apply_rope", None)):  # TL-native model (boot_native)
        # the Bridge hands the native model TL's mask-derived positions (cumsum(mask) - 1, 1 at padding); the
        # mask is read back from the model's own pattern: a key no query attends to is padding
        real = (cache[prefix + "hook_pattern"] > 0).any(1).any(1)  # [batch, key]
        ids = real.long().cumsum(-1) - 1
        ids = ids.masked_fill(~real, 1).to(rotary.cos_cached.device)

        def rotate(t: Tensor) -> Tensor:
            heads_first = t.transpose(1, 2)  # apply_rope wants [batch, head, pos, d_head]
            return rotary.apply_rope(heads_first, heads_first, position_ids=ids[:, : t.shape[1]])[0].transpose(1, 2)

        def matrix(b: int, p: int) -> Tensor:
            eye = torch.eye(d_head, dtype=_model_dtype(model), device=rotary.cos_cached.device)[:, None, None, :]
            at = ids[b, p].expand(d_head, 1)
            return rotary.apply_rope(eye, eye, position_ids=at)[0][:, 0, 0, :].to(dtype)

        return rotate, matrix
    if prefix + "hook_cos" in cache and prefix + "hook_sin" in cache:  # HF models: rotate-half (Llama, NeoX, ...)
        cos, sin = cache[prefix + "hook_cos"], cache[prefix + "hook_sin"]  # [batch or 1, pos, rotary_dim]
        if cos.ndim != 3 or cos.shape[-1] > d_head or cos.shape[-1] % 2:
            raise DePassError(
                f"attention_score_attrs: this TransformerBridge's hook_cos has shape {tuple(cos.shape)}, not "
                f"[batch, pos, rotary_dim <= d_head={d_head}] of a rotate-half rotary embedding; use a "
                "HookedTransformer."
            )

        def rotate(t: Tensor) -> Tensor:
            return _rotate_half(t, cos[:, : t.shape[1]], sin[:, : t.shape[1]])

        def matrix(b: int, p: int) -> Tensor:
            row = min(b, cos.shape[0] - 1)
            return _rotate_half_matrix(cos[row, p].double(), sin[row, p].double(), d_head).to(dtype)

        return rotate, matrix
    arch = getattr(model.cfg, "architecture", None) or type(model).__name__
    raise DePassError(
        f"attention_score_attrs: this TransformerBridge ({arch})"
        " has rotary embeddings but neither a TL-native rotary module nor hook_cos / hook_sin tables, so a key cannot "
        "be rotated per component; use a HookedTransformer for this model."
    )


def _bridge_reference(model: Any, cache: Any, layer: int, side: str, heads: list[int], q_pos: Tensor, k_pos: Tensor,
                      dtype: torch.dtype) -> _Reference:
    cfg, prefix = model.cfg, f"blocks.{layer}.attn."
    if getattr(cfg, "use_attention_sinks", False):
        raise DePassError("attention_score_attrs on a TransformerBridge cannot check scores against a pattern with "
                          "attention sinks (use_attention_sinks=True); use a HookedTransformer.")
    q = _per_head_cache(cache[prefix + "hook_q"], cfg.n_heads).to(torch.float64)  # [batch, pos, head, d_head]
    k = _per_head_cache(cache[prefix + "hook_k"], cfg.n_heads).to(torch.float64)
    rotation = None
    split = k_pos if side == "key" else q_pos
    if cfg.positional_embedding_type == "rotary":
        rotate, matrix = _bridge_rotary(model, cache, layer, torch.float64)
        rotation = [matrix(i, p) for i, p in enumerate(split.tolist())]
        name = "k" if side == "key" else "q"
        if prefix + "hook_rot_q" in cache and prefix + "hook_rot_k" in cache:  # the model's own rotated q and k
            plain, turned = cache[prefix + f"hook_{name}"], cache[prefix + f"hook_rot_{name}"]
            for i, p in enumerate(split.tolist()):
                if not torch.allclose(plain[i, p].double() @ rotation[i], turned[i, p].double(),
                                      rtol=1e-4, atol=1e-4):
                    raise DePassError(
                        "attention_score_attrs: this TransformerBridge's rotary embedding is not the kind its "
                        "hook_cos / hook_sin imply (hook_rot_k does not match); use a HookedTransformer for this model."
                    )
            q = _per_head_cache(cache[prefix + "hook_rot_q"], cfg.n_heads).to(torch.float64)
            k = _per_head_cache(cache[prefix + "hook_rot_k"], cfg.n_heads).to(torch.float64)
        else:  # rotated here with the model's tables; the pattern check below confirms the result
            q, k = rotate(q), rotate(k)
        rotation = [r.to(dtype) for r in rotation]
    attn_scale = float(cfg.attn_scale) if getattr(cfg, "attn_scale", -1.0) > 0 else cfg.d_head ** 0.5
    pattern = cache[prefix + "hook_pattern"]  # [batch, head, query, key]
    rows, head_idx = torch.arange(q_pos.shape[0]), torch.tensor(heads)
    q_rows = q[rows, q_pos][:, heads]  # [batch, head, d_head]
    row_scores = torch.einsum("bhe,bkhe->bhk", q_rows, k[:, :, heads]) / attn_scale  # every key of the query's row
    row_pattern = pattern[rows[:, None], head_idx[None], q_pos[:, None]].to(torch.float64)  # [batch, head, key]
    seen = row_pattern > 0
    rebuilt = torch.where(seen, row_scores, torch.full_like(row_scores, -torch.inf)).softmax(-1)
    miss = float((rebuilt - row_pattern).abs().max())
    if miss > max(1e-3, 4 * torch.finfo(pattern.dtype).eps):  # a few units of a half-precision pattern's rounding
        raise DePassError(
            f"attention_score_attrs: q · k / {attn_scale:.4g} from this TransformerBridge's hook_q / hook_k does not "
            f"reproduce its attention pattern (off by {miss:.3g}); its scores have a term the split does not model "
            "(e.g. a scale other than sqrt(d_head) or a bias), or the cache is from another input, so it is refused."
        )
    other = (q if side == "key" else k)[rows, q_pos if side == "key" else k_pos][:, heads]
    clean = (q_rows * k[rows, k_pos][:, heads]).sum(-1) / attn_scale
    # a key the model masks (padding, outside a window) has pattern 0: its score is -inf, as in hook_attn_scores
    clean = torch.where(row_pattern[rows, :, k_pos] > 0, clean, torch.full_like(clean, -torch.inf))
    return _Reference(other.to(dtype), clean.to(dtype), rotation, attn_scale)


def _check_complete(result: ScoreAttribution, eps: float) -> None:
    v = result.values
    groups = v.reshape(-1, result.group_size, *v.shape[1:])
    miss = (groups.sum(1) - result.clean).abs()  # [group, batch, head]
    allowed = _CHECK_ULPS * eps * (groups.abs().sum(1) + result.clean.abs())
    if not bool((miss <= allowed).all()):  # NaN fails too
        raise CompletenessError(
            f"the split scores miss the model's clean scores by up to {float(miss.max()):.3g} (allowed "
            f"{float(allowed.max()):.3g}): the DePassCache and the ActivationCache must come from the same model "
            "and input (rotary HookedTransformers: without left padding, whose shifted positions the DePassCache "
            "does not record)."
        )


def _model_dtype(model: Any) -> torch.dtype:
    return next(model.parameters()).dtype


def _layer_input(dc: DePassCache, layer: int) -> Tensor:
    names = [f"blocks.{layer}.hook_resid_pre"] + ([f"blocks.{layer - 1}.hook_resid_post"] if layer > 0 else [])
    for name in names:
        if name in dc:
            return dc[name]
    if dc.group_size != len(dc.labels):  # several groups (heads() / modules() of several layers)
        raise HookNotFoundError(
            f"the DePassCache has no decomposition of layer {layer}'s input ({' or '.join(names)}): it holds "
            f"{len(dc.labels) // dc.group_size} groups of components, and a cache of several groups stores only the "
            f"hooks after the last group's start ({dc.start_hook}). Use one group that starts before layer {layer}"
            + (f" (e.g. depass_tl.heads({layer - 1}))" if layer > 0 else " (e.g. depass_tl.tokens())") + "."
        )
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
        model: The ``HookedTransformer`` or ``TransformerBridge`` both runs came from.
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
        DePassError: On a model other than those two, a score that is not linear in the layer
            input (see the module docstring), bad positions (padding, a key after the query in causal
            attention, outside a local window, a masked score), or a missing hook.
    """
    if not (is_bridge(model) or any(c.__name__ == "HookedTransformer" for c in type(model).__mro__)):
        raise DePassError(
            f"attention_score_attrs supports HookedTransformer and TransformerBridge models; got {type(model).__name__}."
        )
    cfg = model.cfg
    _refuse_nonlinear(cfg, model)
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
    q_pos = per_prompt_positions(query_pos, last, n_pos, "query_pos", real_only=True)
    k_pos = per_prompt_positions(key_pos, last, n_pos, "key_pos", real_only=True)
    if getattr(cfg, "attention_dir", "causal") == "causal" and bool((k_pos > q_pos).any()):
        raise DePassError(f"key_pos {k_pos.tolist()} is after query_pos {q_pos.tolist()}: causal attention never "
                          "looks ahead, so that score is masked.")

    if getattr(cfg, "use_local_attn", False) and cfg.attn_types[layer] == "local":
        if bool((q_pos - k_pos >= cfg.window_size).any()):
            raise DePassError(f"layer {layer} is a local-attention layer with window {cfg.window_size}: query "
                              f"{q_pos.tolist()} never sees key {k_pos.tolist()} (the score is masked).")
    attn = model.blocks[layer].attn
    dtype = x_all.dtype
    try:
        if is_bridge(model):
            ref = _bridge_reference(model, cache, layer, side, head_list, q_pos, k_pos, dtype)
        else:
            ref = _hooked_reference(model, cache, layer, side, head_list, q_pos, k_pos, n_pos, dtype)
        norm = read_model_view(model).blocks[layer].ln1
        scale = None if norm.kind == "none" else cache[f"blocks.{layer}.ln1.hook_scale"]  # [batch, pos, 1]
    except KeyError as err:
        raise DePassError(f"the ActivationCache lacks {err}; pass the full model.run_with_cache(tokens) cache.") from err
    if not bool(torch.isfinite(ref.clean).all()):
        raise DePassError(
            f"the clean score from query {q_pos.tolist()} to key {k_pos.tolist()} is masked (-inf) for some prompt: "
            "the key is padding or outside the attention window."
        )

    rows = torch.arange(batch)
    split_pos = k_pos if side == "key" else q_pos
    x = x_all[:, rows, split_pos]  # [component, batch, d_model]
    if scale is not None and scale.ndim == 4:  # use_attn_in: one copy of the input per head, same scale
        scale = scale[:, :, 0]
    scale_at = None if scale is None else scale[rows, split_pos].to(dtype)[:, None, :]  # [batch, 1, 1]
    normed = apply_norm(x[:, :, None], scale_at, norm, dc.bias_rows.to(x.device))[:, :, 0]  # [comp, batch, d]
    W = _per_head(optional_tensor(attn, "W_K" if side == "key" else "W_Q"), cfg.n_heads)[head_list].to(dtype)
    b = optional_tensor(attn, "b_K" if side == "key" else "b_Q")  # None: no bias (Bridge)
    parts = torch.einsum("cbd,hde->cbhe", normed, W)  # [component, batch, head, d_head]
    if b is not None:
        parts[dc.bias_rows] += _per_head(b, cfg.n_heads)[head_list].to(dtype)
    if ref.rotation is not None:  # rotation at a position is a linear map R_p of d_head: exact per component
        parts = torch.stack([parts[:, i] @ ref.rotation[i].to(parts.device) for i in range(batch)], 1)
    values = (parts * ref.whole).sum(-1) / ref.attn_scale  # [component, batch, head]
    result = ScoreAttribution(
        values=values, labels=tuple(dc.labels), layer=layer, heads=tuple(head_list), side=side,
        query_pos=q_pos, key_pos=k_pos, clean=ref.clean, group_size=dc.group_size,
    )
    # the clean run's own precision: a float64 Bridge whose RMS norms normalise in float32 rounds its q and k there
    _check_complete(result, torch.finfo(read_model_view(model).clean_run_dtype).eps)
    return result
