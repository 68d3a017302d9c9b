"""Tokenisation at the API boundary: user input to ``[batch, pos]`` token ids and an attention mask.

Strings go through the model's tokenizer (padded when their lengths differ, with TransformerLens's
mask); token ids and masks are checked (dtype, shape, vocabulary, ``cfg.n_ctx``); answer strings are
looked up as single known tokens (:func:`single_token_fn`), and answer tokens of every kind become
ids (:func:`answer_ids`). Tokenizer calls hold the model's lock
(:func:`depass_tl.model_state.model_lock`): fast tokenizers refuse concurrent use.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassTypeError, DePassValueError
from depass_tl.model_state import model_lock

__all__ = ["to_tokens", "tokens_and_mask", "single_token_fn", "answer_ids", "AnswerTokens"]


def _get_attention_mask_fn() -> Any:
    """TL's ``get_attention_mask(tokenizer, tokens, prepend_bos, padding_side=...)``.

    It lives in ``transformer_lens.utils`` up to 3.x and ``utilities.tokenize_utils`` in 4.x. TL 2.x's
    has no ``padding_side`` argument (it reads ``tokenizer.padding_side``); it is then called on a
    shallow copy of the tokenizer with the requested side, so the model's tokenizer is never changed.
    """
    import copy
    import inspect

    try:
        from transformer_lens.utils import get_attention_mask
    except ImportError:
        from transformer_lens.utilities.tokenize_utils import get_attention_mask
    if "padding_side" in inspect.signature(get_attention_mask).parameters:
        return get_attention_mask

    def with_side(tokenizer: Any, tokens: Tensor, prepend_bos: bool, *, padding_side: str) -> Tensor:
        sided = copy.copy(tokenizer)
        sided.padding_side = padding_side
        return get_attention_mask(sided, tokens, prepend_bos)

    return with_side


def _string_tokens(
    model: Any, prompts: list[str], prepend_bos: bool | None, padding_side: str | None
) -> tuple[Tensor, Tensor | None]:
    if getattr(model, "tokenizer", None) is None:
        raise DePassValueError(
            "string input needs a model with a tokenizer (model.tokenizer is None); pass token ids as a "
            "[batch, pos] integer tensor instead."
        )
    if any(len(p) == 0 for p in prompts):
        raise DePassValueError("got an empty prompt; pass at least one character of text.")
    # truncate=False: TL cuts prompts at n_ctx by default; an over-long prompt is refused by the caller instead
    kwargs: dict[str, Any] = {"truncate": False} if prepend_bos is None else {"prepend_bos": prepend_bos, "truncate": False}
    each = [model.to_tokens(p, **kwargs) for p in prompts]
    if len({int(t.shape[-1]) for t in each}) == 1:
        return torch.cat(each, dim=0), None
    side = padding_side if padding_side is not None else model.tokenizer.padding_side
    if side not in ("left", "right"):
        raise DePassValueError(f"padding_side must be 'left' or 'right'; got {side!r}.")
    get_attention_mask = _get_attention_mask_fn()
    tokens = model.to_tokens(prompts, padding_side=side, **kwargs)
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    mask = get_attention_mask(model.tokenizer, tokens, bos, padding_side=side)
    return tokens, mask


def _unknown_word(model: Any, prompts: list[str]) -> str | None:
    """The first word of ``prompts`` the tokenizer does not know (it becomes the unknown token), or None."""
    tokenizer = model.tokenizer
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return None
    for prompt in prompts:
        if str(tokenizer.unk_token) in prompt:
            continue
        for word in re.findall(r"\s*\S+", prompt):
            if bool((model.to_tokens(word, prepend_bos=False, truncate=False) == unk).any()):
                return f"word {word!r} in {prompt!r}"
    return None


def single_token_fn(model: Any) -> Callable[[str], int] | None:
    """A function that turns a single-token string into its id with the model's tokenizer (None without one).

    The function raises a :class:`~depass_tl.errors.DePassValueError` for a string of several tokens, or
    one the tokenizer does not know (it would become the unknown token). Lookups hold the model's lock
    (fast tokenizers refuse concurrent use).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return None

    def to_single_token(s: str) -> int:
        if not isinstance(s, str) or not s:
            raise DePassValueError(f"an answer token must be a non-empty string or an id; got {s!r}.")
        with model_lock(model):
            ids = model.to_tokens(s, prepend_bos=False)[0]
            pieces = model.to_str_tokens(s, prepend_bos=False) if ids.numel() != 1 else None
        if pieces is not None:
            raise DePassValueError(f"{s!r} is {ids.numel()} tokens {pieces}, not one; pick a single-token answer.")
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and int(ids[0]) == unk and s != getattr(tokenizer, "unk_token", None):
            raise DePassValueError(
                f"{s!r} is not in the tokenizer's vocabulary (it becomes the unknown token "
                f"{tokenizer.unk_token!r}); pick a token the model knows (mind the leading space), or pass its id."
            )
        return int(ids[0])

    return to_single_token


def _check_ids(model: Any, input: Any, what: str) -> Tensor:
    if not isinstance(input, Tensor):
        raise DePassTypeError(
            f"{what} must be a string, a list of strings, or a [batch, pos] integer tensor; got {type(input).__name__}."
        )
    if input.is_floating_point() or input.is_complex() or input.dtype == torch.bool:
        raise DePassTypeError(f"token ids must be an integer tensor, got dtype {input.dtype}; use tokens.long().")
    if input.ndim == 1:
        input = input[None]
    if input.ndim != 2:
        raise DePassValueError(f"tokens must have shape [batch, pos] (or [pos]); got shape {tuple(input.shape)}.")
    if input.shape[0] == 0 or input.shape[1] == 0:
        raise DePassValueError(f"tokens must be non-empty; got shape {tuple(input.shape)}.")
    return input


def _check_mask(mask: Any, tokens: Tensor) -> Tensor:
    if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
        raise DePassTypeError(
            f"attention_mask must be an integer or bool tensor of 0/1 shaped like the tokens {tuple(tokens.shape)}; "
            f"got {type(mask).__name__}{'' if not isinstance(mask, Tensor) else ' of dtype ' + str(mask.dtype)}."
        )
    mask = mask[None] if mask.ndim == 1 else mask
    if tuple(mask.shape) != tuple(tokens.shape):
        raise DePassValueError(
            f"attention_mask has shape {tuple(mask.shape)} but the tokens have shape {tuple(tokens.shape)}; "
            "give one 0/1 entry per token (1 = real token, 0 = padding)."
        )
    mask = mask.long()
    if bool(((mask != 0) & (mask != 1)).any()):
        raise DePassValueError(f"attention_mask must hold only 0 and 1; got values {sorted(set(mask.flatten().tolist()))}.")
    empty = (mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise DePassValueError(f"attention_mask masks every token of prompt(s) {empty}; each prompt needs a real token.")
    return mask.to(tokens.device)


def tokens_and_mask(
    model: Any,
    input: Any,
    *,
    prepend_bos: bool | None = None,
    padding_side: str | None = None,
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Turn user input into ``[batch, pos]`` token ids and an attention mask (None: no padding).

    Strings of different token lengths are padded on ``padding_side`` (default: the tokenizer's
    ``padding_side``) and get TransformerLens's mask (``utils.get_attention_mask``). For token-id
    input, ``attention_mask`` (1 = real token, 0 = padding) marks the padding explicitly.

    Raises:
        DePassError: empty input, wrong shape or dtype, ids outside the vocabulary, more tokens than
            ``cfg.n_ctx``, strings without a tokenizer, or a malformed mask.
    """
    is_text = isinstance(input, str) or (
        isinstance(input, (list, tuple)) and len(input) > 0 and all(isinstance(s, str) for s in input)
    )
    if is_text:
        prompts = [input] if isinstance(input, str) else list(input)
        tokens, mask = _string_tokens(model, prompts, prepend_bos, padding_side)
        if attention_mask is not None:
            mask = _check_mask(attention_mask, tokens)
    else:
        tokens = _check_ids(model, input, "input")
        mask = None if attention_mask is None else _check_mask(attention_mask, tokens)
    d_vocab = model.cfg.d_vocab
    if int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
        unk = getattr(getattr(model, "tokenizer", None), "unk_token_id", None)
        unknown = _unknown_word(model, prompts) if is_text and unk is not None and not 0 <= unk < d_vocab else None
        if unknown is not None:  # a tokenizer whose unknown token lies outside the model's vocabulary (the toys')
            raise DePassValueError(
                f"{unknown} is not in the tokenizer's vocabulary (it would become the unknown token "
                f"{model.tokenizer.unk_token!r}, which this model has no embedding for); use words the model knows "
                "(mind the leading space), or pass token ids."
            )
        raise DePassValueError(
            f"token ids must lie in [0, {d_vocab}); got min {int(tokens.min())}, max {int(tokens.max())}."
        )
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if isinstance(n_ctx, int) and n_ctx > 0 and tokens.shape[1] > n_ctx:
        raise DePassValueError(
            f"the input is {tokens.shape[1]} tokens long, longer than the model's context (cfg.n_ctx={n_ctx}); "
            "shorten it, or split it into prompts of at most that many tokens."
        )
    tokens = tokens.to(model.cfg.device).long()
    if mask is not None and bool((mask == 1).all()):
        mask = None  # nothing is padded: run exactly as without a mask
    return tokens, None if mask is None else mask.to(tokens.device)


def to_tokens(
    model: Any, input: Any, *, prepend_bos: bool | None = None, padding_side: str | None = None
) -> Tensor:
    """Turn user input into a ``[batch, pos]`` long tensor on the model's device.

    Accepts a string, a list of strings (padded on ``padding_side`` when their lengths differ; see
    :func:`tokens_and_mask` for the matching attention mask), or an integer tensor of shape
    ``[batch, pos]`` or ``[pos]`` (one prompt).

    Raises:
        DePassError: see :func:`tokens_and_mask`.
    """
    return tokens_and_mask(model, input, prepend_bos=prepend_bos, padding_side=padding_side)[0]


AnswerTokens = str | int | Sequence[int] | Sequence[str] | Tensor
"""Answer tokens of a logit attribution: a string (one token), an id, one per prompt, or an integer tensor."""


def _one_answer(token: Any, to_single_token: Callable[[str], int] | None) -> int:
    if isinstance(token, str):
        if to_single_token is None:
            raise DePassValueError(f"the model has no tokenizer, so {token!r} cannot be looked up; pass a token id.")
        return to_single_token(token)
    if isinstance(token, numbers.Integral) and not isinstance(token, bool):
        return int(token)
    raise DePassTypeError(
        f"an answer token must be a token id (int) or a single-token string; got {token!r} "
        f"({type(token).__name__}). Floats and bools are not token ids."
    )


def answer_ids(
    tokens: AnswerTokens, batch: int, d_vocab: int, to_single_token: Callable[[str], int] | None
) -> Tensor:
    """Answer tokens as ``[batch]`` long ids on the CPU: one for every prompt, or one per prompt.

    Args:
        tokens: a single-token string, an id, a sequence of them (one per prompt), or an integer
            tensor of one id or one per prompt.
        batch: the number of prompts.
        d_vocab: the vocabulary size (ids must lie in ``[0, d_vocab)``).
        to_single_token: the model's string lookup (:func:`single_token_fn`; None without a tokenizer).

    Raises:
        DePassTypeError: a float, bool or float/bool tensor (not token ids).
        DePassValueError: a string that is not one known token, a wrong count, or an id out of range.

    Examples:
        >>> answer_ids(3, 2, 10, None).tolist(), answer_ids([1, 2], 2, 10, None).tolist()
        ([3, 3], [1, 2])
        >>> answer_ids(5.5, 1, 10, None)
        Traceback (most recent call last):
        ...
        depass_tl.errors.DePassTypeError: an answer token must be a token id (int) or a single-token string; got 5.5 (float). Floats and bools are not token ids.
    """
    if isinstance(tokens, Tensor):
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise DePassTypeError(
                f"answer tokens must be an integer tensor of token ids; got dtype {tokens.dtype}. Use .long() only "
                "if the values really are ids."
            )
        ids = tokens.detach().cpu().long().flatten()
    elif isinstance(tokens, (str, numbers.Integral)) or isinstance(tokens, (bool, float)):
        ids = torch.tensor([_one_answer(tokens, to_single_token)])
    elif isinstance(tokens, Sequence) and len(tokens) > 0:
        ids = torch.tensor([_one_answer(t, to_single_token) for t in tokens])
    else:
        raise DePassTypeError(
            f"answer tokens must be a string, an id, one per prompt, or an integer tensor; got {tokens!r}."
        )
    if ids.numel() == 1:
        ids = ids.expand(batch)
    if ids.numel() != batch:
        raise DePassValueError(f"give one answer token, or one per prompt ({batch}); got {ids.numel()}.")
    if int(ids.min()) < 0 or int(ids.max()) >= d_vocab:
        raise DePassValueError(f"token ids must lie in [0, {d_vocab}); got {ids.tolist()}.")
    return ids
