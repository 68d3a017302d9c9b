"""``run_decompx``: DecompX (Modarressi et al., ACL 2023) on a BERT encoder and its head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from depass_tl._checks import checked
from depass_tl._types import Model
from depass_tl.backends import read_encoder
from depass_tl.backends.base import EncoderSource
from depass_tl.decompx.approx import activation_approx
from depass_tl.decompx.bias import check_bias_policy
from depass_tl.decompx.capture import RESID_HOOKS, capture_encoder
from depass_tl.decompx.heads import MLMHead, SequenceClassificationHead
from depass_tl.decompx.replay import Approximations, replay_encoder
from depass_tl.decompx.result import DecompXResult
from depass_tl.errors import DePassError

__all__ = ["run_decompx"]


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


def _check_inputs(source: EncoderSource, tokens: Any, token_type_ids: Any, attention_mask: Any) -> None:
    view = source.view
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise DePassError(f"tokens must be a non-empty integer tensor [batch, pos], got {shape}")
    if tokens.shape[1] > view.n_ctx:
        raise DePassError(f"tokens have {tokens.shape[1]} positions but the encoder's n_ctx is {view.n_ctx}")
    _check_ids("tokens", tokens, tokens.shape, allowed=f"[0, {view.d_vocab})", high=view.d_vocab)
    if token_type_ids is not None:
        n_types = view.n_token_types
        _check_ids("token_type_ids", token_type_ids, tokens.shape, allowed=str(set(range(n_types))), high=n_types)
    if attention_mask is not None:
        _check_ids("attention_mask", attention_mask, tokens.shape, allowed="{0, 1}", high=2)
        empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise DePassError(f"attention_mask rows {empty} have no real token; every row needs at least one 1")


def _resolve_head(source: EncoderSource, head: Any) -> tuple[SequenceClassificationHead | MLMHead, bool]:
    """The head to decompose, and whether it is the model's own (then the model's logits are the clean ones)."""
    view = source.view
    if head is None:
        if view.pooler is not None and view.classifier is not None:
            (W_pool, b_pool), (W_cls, b_cls) = view.pooler, view.classifier
            return SequenceClassificationHead(W_pool=W_pool, b_pool=b_pool, W_cls=W_cls, b_cls=b_cls), True
        raise DePassError(
            f"this {view.backend} model has no classification head of its own, so DecompX needs a head: pass "
            "head=depass_tl.decompx.SequenceClassificationHead(...) or "
            "head=depass_tl.decompx.MLMHead.from_encoder(model, token_ids=[...])."
        )
    if not isinstance(head, (SequenceClassificationHead, MLMHead)):
        raise DePassError(f"head must be a SequenceClassificationHead or an MLMHead, got {type(head).__name__}")
    if head.d_model != view.d_model:
        raise DePassError(f"head reads d_model={head.d_model} but the encoder has d_model={view.d_model}")
    if isinstance(head, MLMHead):
        if max(head.token_ids) >= view.d_vocab:
            raise DePassError(f"MLMHead token_ids {list(head.token_ids)} exceed the encoder's d_vocab={view.d_vocab}")
        return head, view.mlm is not None
    return head, False


@checked(hints={
    "tokens": "tokens must be a non-empty integer tensor [batch, pos]",
    "head": "head must be a SequenceClassificationHead or an MLMHead",
})
def run_decompx(
    model: Model,
    tokens: Tensor,
    *,
    head: SequenceClassificationHead | MLMHead | None = None,
    token_type_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    bias_policy: str = "bias",
    ffn_approx: str = "zo",
    tanh_approx: str = "zo",
    include_ffn: bool = True,
    dtype: torch.dtype | None = None,
    names_filter: Callable[[str], bool] | Sequence[str] | None = None,
) -> tuple[Tensor, DecompXResult]:
    """Decompose a BERT forward pass, and its head's logits, into per-input-token contributions.

    Components are the input positions (``tok{p}``; the whole embedding output of position ``p``,
    i.e. token + position + segment embedding after the embedding LN, belongs to ``tok{p}`` as in
    DecompX), plus a ``bias`` component under ``bias_policy="bias"``. Attention patterns, LayerNorm
    scales and the activations' slopes are frozen at their clean values, so with the default options
    every decomposed activation sums exactly (to float precision) to the clean one.

    Args:
        model: transformers' ``BertForSequenceClassification`` or ``BertForMaskedLM`` (eval mode,
            ``attn_implementation="eager"``; any TransformerLens version), a ``TransformerBridge``
            wrapping a BERT (TL >= 3), or a ``transformer_lens.HookedEncoder`` (TL < 4). Never modified.
        tokens: token ids ``[batch, pos]``.
        head: a :class:`SequenceClassificationHead` (pooler + classifier) or an :class:`MLMHead`.
            Default: the model's own classification head (``BertForSequenceClassification``); other
            models need one (``MLMHead.from_encoder(model, token_ids=[...])`` for a masked-LM).
        token_type_ids: segment ids, default all 0.
        attention_mask: 1 for real tokens, 0 for padding; default all 1.
        bias_policy: ``"bias"`` (separate bias component), or DecompX's ``"absdot"`` (the paper's
            default), ``"norm"`` or ``"equal"``; see :mod:`depass_tl.decompx.bias`.
        ffn_approx: how the FFN's GELU (and the MLM head's) is linearised (official ``FFN_approx_type``,
            :mod:`depass_tl.decompx.approx`): ``"zo"`` (``act(x)/x``, the paper's), ``"gelu_la"``
            (tangent line; its offset is split like a bias) or ``"relu"`` (slope ``1[x > 0]``; not
            exact on a GELU model).
        tanh_approx: the pooler's tanh (official ``tanh_approx_type``): ``"zo"`` or ``"la"``.
            Classification head only.
        include_ffn: False leaves the FFNs out of the decomposition (official ``include_FFN=False``;
            the LayerNorm scales stay those of the real run, so the result is not exact).
        dtype: replay dtype (``torch.float32`` or ``torch.float64``); default: the model's dtype.
        names_filter: hook names to keep (a list, or a predicate on the name); default all of
            ``hook_full_embed`` and ``blocks.{l}.hook_{resid_pre,attn_out,resid_mid,mlp_out,
            resid_post,normalized_resid_post}``.

    Returns:
        ``(logits, result)``: the clean class logits ``[batch, n_classes]`` (classification head)
        or the model's MLM logits ``[batch, pos, d_vocab]`` (MLM head), and the
        :class:`~depass_tl.decompx.result.DecompXResult`. When an option is not exact
        (``result.exact`` False), ``result.residual(...)`` is what the components miss.

    Raises:
        DePassError: bad tokens, masks, head, policy, option or dtype; ``UnsupportedModelError`` for a
            model DecompX does not read (the message says what is supported and what to do).

    Examples:
        >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
        >>> import torch, transformers
        >>> cfg = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=8, num_labels=2,
        ...     attn_implementation="eager")
        >>> _ = torch.manual_seed(0)
        >>> bert = transformers.BertForSequenceClassification(cfg).eval()
        >>> logits, result = run_decompx(bert, torch.tensor([[1, 5, 7, 2]]))
        >>> result.class_logits.shape, result.labels
        (torch.Size([5, 1, 2]), ('tok0', 'tok1', 'tok2', 'tok3', 'bias'))
        >>> bool(torch.allclose(result.class_logits.sum(0), logits, atol=1e-5))
        True
        >>> _, ablated = run_decompx(bert, torch.tensor([[1, 5, 7, 2]]), include_ffn=False)
        >>> ablated.exact, ablated.residual("logits").shape
        (False, torch.Size([1, 2]))
    """
    source = read_encoder(model)
    view = source.view
    policy = check_bias_policy(bias_policy)
    head, own_head = _resolve_head(source, head)
    is_mlm = isinstance(head, MLMHead)
    ffn = activation_approx(ffn_approx, view.act, view.act_fn, option="ffn_approx")
    if is_mlm:
        if tanh_approx != "zo":
            raise DePassError(f"tanh_approx={tanh_approx!r} applies to the classification head's pooler; "
                              "the MLM head has no tanh (leave tanh_approx at 'zo')")
        head_approx = activation_approx(ffn_approx, F.gelu, "gelu", option="ffn_approx")
    else:
        head_approx = activation_approx(tanh_approx, torch.tanh, "tanh", option="tanh_approx")
    _check_inputs(source, tokens, token_type_ids, attention_mask)

    if dtype is None:
        dtype = view.dtype if view.dtype in (torch.float32, torch.float64) else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise DePassError(f"dtype must be torch.float32 or torch.float64, got {dtype}")

    n_layers = len(view.layers)
    if names_filter is None:
        keep: Callable[[str], bool] = lambda name: True  # noqa: E731
    elif callable(names_filter):
        keep = names_filter
    else:
        wanted = {names_filter} if isinstance(names_filter, str) else set(names_filter)  # one name, or several
        known = {"hook_full_embed"} | {f"blocks.{l}.{h}" for l in range(n_layers) for h in RESID_HOOKS}
        unknown = sorted(wanted - known)
        if unknown:
            raise DePassError(f"names_filter has unknown hook names {unknown}; known: {sorted(known)}")
        keep = wanted.__contains__

    run = capture_encoder(
        source, tokens, token_type_ids=token_type_ids, attention_mask=attention_mask, dtype=dtype,
        with_head=own_head,
    )
    approx = Approximations(ffn=ffn, head=head_approx, include_ffn=include_ffn)
    out = replay_encoder(run, head, policy=policy, approx=approx, keep=keep)

    n_pos = tokens.shape[1]
    labels = tuple(f"tok{p}" for p in range(n_pos)) + (("bias",) if policy == "bias" else ())
    clean = {name: run.clean[name] for name in out.hooks}
    final = run.final_resid
    if is_mlm:
        assert isinstance(head, MLMHead)
        if run.model_logits is not None:
            logits = run.model_logits
            head_clean = logits[..., torch.tensor(head.token_ids, device=logits.device)]
        else:
            logits = head_clean = head.logits(final)
        pooler_clean = None
    else:
        assert isinstance(head, SequenceClassificationHead)
        pooler_clean = torch.tanh(head.pooler_pre(final[:, 0]))
        logits = head_clean = run.model_logits if run.model_logits is not None else head.logits(final)
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
        options={"ffn_approx": ffn_approx, "tanh_approx": tanh_approx, "include_ffn": include_ffn},
        exact=include_ffn and ffn.exact and head_approx.exact,
        backend=view.backend,
    )
    return logits, result
