"""``run_decompx``: DecompX (Modarressi et al., ACL 2023) on a TransformerLens ``HookedEncoder``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from depass_tl.decompx._compat import hooked_encoder_class
from depass_tl.decompx.bias import BiasPolicy, check_bias_policy
from depass_tl.decompx.capture import RESID_HOOKS, capture_encoder
from depass_tl.decompx.heads import MLMHead, SequenceClassificationHead
from depass_tl.decompx.replay import replay_encoder
from depass_tl.decompx.result import DecompXResult
from depass_tl.errors import DePassError, UnsupportedModelError

__all__ = ["run_decompx"]

_SUPPORTED_ACTS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu")


def _check_encoder(encoder: Any) -> None:
    cls = hooked_encoder_class()
    if not isinstance(encoder, cls):
        raise UnsupportedModelError(
            f"run_decompx needs a transformer_lens.HookedEncoder, got {type(encoder).__name__}; "
            "for decoder models use depass_tl.run_with_depass"
        )
    cfg = encoder.cfg
    if cfg.act_fn not in _SUPPORTED_ACTS:
        raise UnsupportedModelError(
            f"cfg.act_fn={cfg.act_fn!r} is not supported (the GELU ratio needs f(0) = 0); "
            f"supported: {list(_SUPPORTED_ACTS)}"
        )
    if getattr(cfg, "gated_mlp", False) or getattr(cfg, "num_experts", None):
        raise UnsupportedModelError("gated or mixture-of-experts MLPs are not supported in HookedEncoder replay")


def _check_ids(name: str, value: Any, shape: torch.Size, *, allowed: str, high: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise DePassError(f"{name} must be a torch integer tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise DePassError(f"{name} must have an integer dtype, got {value.dtype}")
    if value.shape != shape:
        raise DePassError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)} (same as tokens)")
    if value.numel() and (int(value.min()) < 0 or int(value.max()) >= high):
        raise DePassError(
            f"{name} must hold values in {allowed}, got min {int(value.min())}, max {int(value.max())}"
        )
    return value


def run_decompx(
    encoder: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    head: SequenceClassificationHead | MLMHead,
    token_type_ids: Int[Tensor, "batch pos"] | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    bias_policy: BiasPolicy = "bias",
    dtype: torch.dtype | None = None,
    names_filter: Callable[[str], bool] | Sequence[str] | None = None,
) -> tuple[Float[Tensor, "batch n_classes"] | Float[Tensor, "batch pos d_vocab"], DecompXResult]:
    """Decompose a BERT forward pass, and its head's logits, into per-input-token contributions.

    Components are the input positions (``tok{p}``; the whole embedding output of position ``p``,
    i.e. token + position + segment embedding after the embedding LN, belongs to ``tok{p}`` as in
    DecompX), plus a ``bias`` component under ``bias_policy="bias"``. Attention patterns, LayerNorm
    scales and the GELU/tanh slopes (``act(x)/x``, DecompX's "ZO") are frozen at their clean values,
    so every decomposed activation sums exactly (to float precision) to the clean one.

    Args:
        encoder: a ``transformer_lens.HookedEncoder`` (TL < 4); never modified.
        tokens: token ids ``[batch, pos]``.
        head: a :class:`SequenceClassificationHead` (pooler + classifier) or an :class:`MLMHead`.
        token_type_ids: segment ids (0 or 1), default all 0.
        attention_mask: 1 for real tokens, 0 for padding; default all 1.
        bias_policy: ``"bias"`` (separate bias component), or DecompX's ``"absdot"`` (the paper's
            default), ``"norm"`` or ``"equal"``; see :mod:`depass_tl.decompx.bias`.
        dtype: replay dtype (``torch.float32`` or ``torch.float64``); default: the encoder's dtype.
        names_filter: hook names to keep (a list, or a predicate on the name); default all of
            ``hook_full_embed`` and ``blocks.{l}.hook_{resid_pre,attn_out,resid_mid,mlp_out,
            resid_post,normalized_resid_post}``.

    Returns:
        ``(logits, result)``: the clean class logits ``[batch, n_classes]`` (classification head)
        or the encoder's MLM logits ``[batch, pos, d_vocab]`` (MLM head), and the
        :class:`~depass_tl.decompx.result.DecompXResult`.

    Raises:
        DePassError: bad tokens, masks, head, policy or dtype; ``UnsupportedModelError`` if
            ``HookedEncoder`` is unavailable (TransformerLens 4) or the encoder is not one.

    Examples:
        >>> import warnings; warnings.filterwarnings("ignore", category=DeprecationWarning)
        >>> import torch
        >>> from transformer_lens import HookedEncoder, HookedTransformerConfig
        >>> _ = torch.manual_seed(0)
        >>> cfg = HookedTransformerConfig(d_model=8, d_head=4, n_heads=2, d_mlp=16, n_layers=1, n_ctx=8,
        ...     d_vocab=20, act_fn="gelu", attention_dir="bidirectional", device="cpu")
        >>> enc = HookedEncoder(cfg, move_to_device=False)
        >>> for p in enc.parameters(): _ = torch.nn.init.normal_(p, std=0.3)
        >>> head = SequenceClassificationHead(W_pool=torch.randn(8, 8), b_pool=torch.randn(8),
        ...     W_cls=torch.randn(8, 2), b_cls=torch.randn(2))
        >>> logits, result = run_decompx(enc, torch.tensor([[1, 5, 7, 2]]), head=head)
        >>> result.class_logits.shape, result.labels
        (torch.Size([5, 1, 2]), ('tok0', 'tok1', 'tok2', 'tok3', 'bias'))
        >>> bool(torch.allclose(result.class_logits.sum(0), logits, atol=1e-5))
        True
    """
    _check_encoder(encoder)
    cfg = encoder.cfg
    policy = check_bias_policy(bias_policy)
    if not isinstance(head, (SequenceClassificationHead, MLMHead)):
        raise DePassError(
            f"head must be a SequenceClassificationHead or an MLMHead, got {type(head).__name__}"
        )
    if head.d_model != cfg.d_model:
        raise DePassError(f"head reads d_model={head.d_model} but the encoder has d_model={cfg.d_model}")
    if isinstance(head, MLMHead) and max(head.token_ids) >= cfg.d_vocab:
        raise DePassError(f"MLMHead token_ids {list(head.token_ids)} exceed the encoder's d_vocab={cfg.d_vocab}")

    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise DePassError(f"tokens must be a non-empty integer tensor [batch, pos], got {shape}")
    if tokens.shape[1] > cfg.n_ctx:
        raise DePassError(f"tokens have {tokens.shape[1]} positions but the encoder's n_ctx is {cfg.n_ctx}")
    _check_ids("tokens", tokens, tokens.shape, allowed=f"[0, {cfg.d_vocab})", high=cfg.d_vocab)
    if token_type_ids is not None:
        _check_ids("token_type_ids", token_type_ids, tokens.shape, allowed="{0, 1}", high=2)
    if attention_mask is not None:
        _check_ids("attention_mask", attention_mask, tokens.shape, allowed="{0, 1}", high=2)
        empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise DePassError(f"attention_mask rows {empty} have no real token; every row needs at least one 1")

    if dtype is None:
        dtype = cfg.dtype if cfg.dtype in (torch.float32, torch.float64) else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise DePassError(f"dtype must be torch.float32 or torch.float64, got {dtype}")

    if names_filter is None:
        keep: Callable[[str], bool] = lambda name: True  # noqa: E731
    elif callable(names_filter):
        keep = names_filter
    else:
        wanted = set(names_filter)
        known = {"hook_full_embed"} | {f"blocks.{l}.{h}" for l in range(cfg.n_layers) for h in RESID_HOOKS}
        unknown = sorted(wanted - known)
        if unknown:
            raise DePassError(f"names_filter has unknown hook names {unknown}; known: {sorted(known)}")
        keep = wanted.__contains__

    is_mlm = isinstance(head, MLMHead)
    run = capture_encoder(
        encoder,
        tokens,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        dtype=dtype,
        with_mlm=is_mlm,
    )
    out = replay_encoder(run, head, policy=policy, keep=keep)

    n_pos = tokens.shape[1]
    labels = tuple(f"tok{p}" for p in range(n_pos)) + (("bias",) if policy == "bias" else ())
    clean = {name: run.clean[name] for name in out.hooks}
    if is_mlm:
        assert run.model_logits is not None  # internal: captured with with_mlm=True
        index = torch.tensor(head.token_ids, device=run.model_logits.device)
        head_clean = run.model_logits[..., index]
        pooler_clean = None
        logits = run.model_logits
    else:
        pre = head.pooler_pre(run.final_resid[:, 0])
        pooler_clean = torch.tanh(pre)
        head_clean = head.logits(run.final_resid)
        logits = head_clean
    result = DecompXResult(
        components=out.hooks,
        clean=clean,
        labels=labels,
        bias_policy=policy,
        head_kind="mlm" if is_mlm else "classification",
        pooler=out.pooler,
        pooler_clean=pooler_clean,
        head_logits=out.head_logits,
        head_logits_clean=head_clean,
        token_ids=head.token_ids if is_mlm else (),
    )
    return logits, result
