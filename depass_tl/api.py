"""Public entry points: ``run_with_depass`` (capture + replay) and ``replay``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from depass_tl._checks import checked
from depass_tl._types import COMPONENTS_HINT, TOKENS_HINT, ClassLogits, Logits, Model, TextOrTokens
from depass_tl.backends import backend_for
from depass_tl.cache import DePassCache
from depass_tl.capture import capture, single_token_fn
from depass_tl.coefficients import FrozenRun
from depass_tl.components import ComponentSpec, TokenSpec
from depass_tl.decompx.heads import MLMHead, SequenceClassificationHead
from depass_tl.decompx.result import DecompXResult
from depass_tl.errors import DePassError
from depass_tl.memory import parse_memory
from depass_tl.replay.engine import replay_components
from depass_tl.replay.rules import DEFAULT_RULE, DEFAULT_TEMPERATURE, RuleLike, get_rule
from depass_tl.replay.state import FINAL_HOOK

__all__ = ["run_with_depass", "replay"]

NamesFilter = Callable[[str], bool] | Sequence[str] | str | None


def _keep_fn(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, str):
        wanted = {names_filter}
    else:
        wanted = set(names_filter)
    return lambda name: name in wanted


def _check_names(keep_names: NamesFilter, stored: dict[str, Tensor]) -> None:
    if names_filter_is_list(keep_names):
        missing = sorted(set([keep_names] if isinstance(keep_names, str) else keep_names) - set(stored))  # type: ignore[arg-type]
        if missing:
            raise DePassError(
                f"names_filter asked for hooks the replay does not produce: {missing}. Valid names are "
                "blocks.{l}.hook_resid_pre|resid_mid|attn_out|mlp_out|resid_post and unembed.hook_in, "
                "at or after the start hook."
            )


def names_filter_is_list(f: NamesFilter) -> bool:
    return f is not None and not callable(f)


def _default_dtype(model_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if model_dtype == torch.float64 else torch.float32


@checked(hints={"components": COMPONENTS_HINT})
def replay(
    run: FrozenRun,
    components: ComponentSpec | None = None,
    *,
    mlp_rule: RuleLike = "softmax",
    temperature: float = DEFAULT_TEMPERATURE,
    names_filter: NamesFilter = None,
    dtype: torch.dtype | None = None,
    to_single_token: Callable[[str], int] | None = None,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
) -> DePassCache:
    """Replay components through a frozen run (capture once, replay many component sets).

    Args: see :func:`run_with_depass`.

    Returns:
        A :class:`~depass_tl.cache.DePassCache`.
    """
    spec = TokenSpec() if components is None else components
    rule = get_rule(mlp_rule, temperature=temperature)
    dtype = _default_dtype(run.view.dtype) if dtype is None else dtype
    if not dtype.is_floating_point:
        raise DePassError(f"dtype must be a floating-point torch dtype, got {dtype}.")
    init = spec.init(run, dtype)
    keep = _keep_fn(names_filter)
    budget = None if max_memory is None else parse_memory(max_memory)
    acts = replay_components(run, init, mlp_rule=rule, dtype=dtype, keep=keep, chunk_size=chunk_size, max_memory=budget)
    _check_names(names_filter, acts)
    clean = {name: run.get(name) for name in acts}
    last_pos = run.last_real_positions
    rows = torch.arange(run.batch, device=run.tokens.device)
    if run.view.output_logits_soft_cap is None:
        dev = run.logits.device  # a model split over devices: the unembedding's, not the tokens'
        last = run.logits[rows.to(dev), last_pos.to(dev)]
    else:  # decompose the pre-cap logits: they are what sums exactly
        final = run.get(FINAL_HOOK)
        final = final[rows.to(final.device), last_pos.to(final.device)].to(run.view.W_U.device)
        last = final @ run.view.W_U + (0 if run.view.b_U is None else run.view.b_U)
    return DePassCache(
        activations=acts,
        labels=init.labels,
        clean=clean,
        clean_last_logits=last,
        last_positions=last_pos,
        tokens=run.tokens,
        str_tokens=run.str_tokens,
        W_U=run.view.W_U,
        b_U=run.view.b_U,
        group_size=init.group_size,
        start_hook=init.groups[-1].start_hook,
        mlp_rule=rule.name,
        logits_soft_capped=run.view.output_logits_soft_cap is not None,
        to_single_token=to_single_token,
    )


@checked(hints={
    "input": TOKENS_HINT, "components": COMPONENTS_HINT, "head": "head must be a SequenceClassificationHead or an MLMHead",
    "padding_side": "padding_side must be 'left' or 'right'",
})
def run_with_depass(
    model: Model,
    input: TextOrTokens,
    *,
    components: ComponentSpec | None = None,
    mlp_rule: RuleLike = "softmax",
    temperature: float = DEFAULT_TEMPERATURE,
    names_filter: NamesFilter = None,
    dtype: torch.dtype | None = None,
    prepend_bos: bool | None = None,
    head: SequenceClassificationHead | MLMHead | None = None,
    token_type_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    bias_policy: str = "bias",
    padding_side: Literal["left", "right"] | None = None,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
) -> tuple[Logits, DePassCache] | tuple[ClassLogits | Logits, DecompXResult]:
    """Run the model once, then decompose every residual-stream activation and the logits.

    Like ``model.run_with_cache`` but the cache holds, for each hook, one slice per component:
    ``[component, batch, pos, d_model]``, summing exactly to the clean activation.

    Args:
        model: a ``transformer_lens.HookedTransformer``.
        input: a string, a list of equal-length strings, or ``[batch, pos]`` token ids.
        components: what to attribute to (default :func:`depass_tl.tokens`: one per input token).
        mlp_rule: how an MLP's activation is split among components: ``softmax`` (DePass default),
            ``ratio`` (frozen post/pre slope; linear), ``max``, the name of a registered rule, or a rule
            object (:mod:`depass_tl.replay.rules`, e.g. ``Softmax(temperature=0.5)``).
        temperature: softmax temperature for a rule given by name (default 0.1, as in DePass).
        names_filter: hook names to keep (a name, a list, or a predicate); ``unembed.hook_in`` is
            always kept for logit attribution. Default: every hook.
        dtype: accumulation dtype (default float32, float64 for float64 models).
        prepend_bos: for string input, passed to ``model.to_tokens``.
        attention_mask: ``[batch, pos]``, 1 for real tokens and 0 for padding (token-id input); lists
            of prompts of different lengths are padded and masked automatically.
        padding_side: ``"left"`` or ``"right"`` for padded string batches (default: the tokenizer's).
        chunk_size: replay at most this many components at a time (same result up to float rounding,
            for every rule; ``softmax`` / ``max`` take two passes per MLP layer).
        max_memory: a budget for the replay's own tensors (component states, stored hooks, working
            tensors; not the model or the captured run), e.g. ``"4GB"``: chunks are sized to fit, or a
            ``DePassError`` says what to drop (usually ``names_filter=[]``). See :mod:`depass_tl.memory`.
        head, token_type_ids, attention_mask, bias_policy: for a ``HookedEncoder`` (BERT) only:
            the call is forwarded to :func:`depass_tl.decompx.run_decompx` (DecompX), which needs a
            classification or MLM ``head``; see that function.

    Returns:
        ``(logits, cache)``: the model's clean logits ``[batch, pos, d_vocab]`` and a
        :class:`~depass_tl.cache.DePassCache`; for a ``HookedEncoder``, the head's logits and a
        :class:`~depass_tl.decompx.DecompXResult` (see :func:`depass_tl.decompx.run_decompx`).

    Raises:
        DePassError: bad input, unknown rule or hook, unsupported model (a wrong argument type:
            :class:`~depass_tl.errors.DePassTypeError`).

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4,
        ...            d_mlp=32, d_vocab=50, act_fn="gelu_new", seed=0)
        >>> model = random_model(**cfg)
        >>> logits, dc = depass_tl.run_with_depass(model, torch.tensor([[3, 1, 4, 1, 5]]))
        >>> dc["blocks.1.hook_resid_post"].shape
        torch.Size([6, 1, 5, 16])
        >>> dc.labels[-2:]
        ('tok4', 'bias')
        >>> attrs = dc.logit_attrs(7)          # [component, batch]
        >>> bool(torch.allclose(attrs.sum(0), logits[:, -1, 7], atol=1e-4))
        True
    """
    if backend_for(model).method == "decompx":
        from depass_tl.decompx import run_decompx

        if components is not None or get_rule(mlp_rule) != DEFAULT_RULE:
            raise DePassError(
                "a HookedEncoder is decomposed by DecompX into token components with the GELU ratio rule; "
                "components= and mlp_rule= do not apply. Drop them, or use depass_tl.decompx.run_decompx."
            )
        if chunk_size is not None or max_memory is not None:
            raise DePassError("chunk_size= and max_memory= apply to the decoder replay; DecompX runs unchunked.")
        if head is None:
            raise DePassError(
                "a HookedEncoder needs a head: pass head=depass_tl.decompx.SequenceClassificationHead(...) "
                "or head=depass_tl.decompx.MLMHead.from_encoder(model, token_ids=[...])."
            )
        return run_decompx(
            model, input, head=head, token_type_ids=token_type_ids, attention_mask=attention_mask,
            bias_policy=bias_policy, dtype=dtype, names_filter=names_filter,  # type: ignore[arg-type]
        )
    if head is not None or token_type_ids is not None or bias_policy != "bias":
        raise DePassError("head=, token_type_ids= and bias_policy= are for HookedEncoder (BERT) models only.")
    rule = get_rule(mlp_rule, temperature=temperature)
    n_layers = int(getattr(getattr(model, "cfg", None), "n_layers", 0))
    extra = set() if components is None else components.required_hooks(n_layers)
    run = capture(
        model, input, prepend_bos=prepend_bos, extra_hooks=extra, padding_side=padding_side,
        attention_mask=attention_mask,
    )
    cache = replay(
        run,
        components,
        mlp_rule=rule,
        names_filter=names_filter,
        dtype=dtype,
        to_single_token=single_token_fn(model),
        chunk_size=chunk_size,
        max_memory=max_memory,
    )
    return run.logits, cache
