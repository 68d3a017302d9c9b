"""Token masking for the faithfulness protocols: rank positions, mask them, score the target.

Every token-level protocol has the same three steps: rank the *maskable* positions by an
attribution, build masked copies of the prompt, and score the target token at the last position
of each copy. This module holds those steps; :mod:`depass_tl.evaluate.token_metrics` strings them
into the protocols.

Rules shared by every protocol:

* The target position (the last one, whose next-token prediction is scored) is never masked.
* Position 0 is a BOS / special token and is never masked (``protect_bos=True``, the default; set
  it to False for prompts without BOS).
* ``masking="delete"`` removes the masked tokens (the DePass paper's protocol: positions shift, the
  prompt gets shorter); ``masking="replace"`` writes ``replace_with`` (a token id) at the masked
  positions (positions stay put).
* ``k`` tokens for a fraction ``p`` of ``n`` maskable positions: ``k = max(1, floor(p·n))`` for
  ``p > 0`` (the DePass scripts' ``max(1, int(p·n))``), and 0 for ``p = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassError

__all__ = ["Masking", "Metric", "apply_mask", "check_masking", "maskable_positions", "rank_positions",
           "score_rows", "top_k_count"]

Masking = Literal["delete", "replace"]
Metric = Literal["prob", "logprob", "logit"]
_METRICS = ("prob", "logprob", "logit")


def check_masking(masking: str, replace_with: int | None, d_vocab: int) -> None:
    """Validate the masking keyword and its replacement token.

    Raises:
        DePassError: unknown ``masking``; ``replace`` without a valid ``replace_with`` id.
    """
    if masking not in ("delete", "replace"):
        raise DePassError(f"masking must be 'delete' or 'replace'; got {masking!r}.")
    if masking == "replace":
        if replace_with is None or isinstance(replace_with, bool) or not isinstance(replace_with, int):
            raise DePassError(
                f"masking='replace' needs replace_with=<token id> (e.g. a pad or unk id); got {replace_with!r}."
            )
        if not 0 <= replace_with < d_vocab:
            raise DePassError(f"replace_with must be a token id in [0, {d_vocab}); got {replace_with}.")
    elif replace_with is not None:
        raise DePassError("replace_with is only used with masking='replace'; drop it or set masking='replace'.")


def maskable_positions(n_pos: int, *, protect_bos: bool = True) -> list[int]:
    """Positions that may be masked: all but the last (target) position and, with BOS, position 0.

    Raises:
        DePassError: when no position is left to mask.

    Examples:
        >>> maskable_positions(5)
        [1, 2, 3]
        >>> maskable_positions(5, protect_bos=False)
        [0, 1, 2, 3]
    """
    first = 1 if protect_bos else 0
    positions = list(range(first, n_pos - 1))
    if not positions:
        raise DePassError(
            f"a prompt of {n_pos} tokens has no maskable position (BOS {'protected' if protect_bos else 'not protected'}, "
            "the last position is the target); use prompts with at least one token between BOS and the last token."
        )
    return positions


def top_k_count(fraction: float, n: int) -> int:
    """``max(1, floor(fraction·n))`` for ``fraction > 0``, 0 for ``fraction == 0``.

    Raises:
        DePassError: a fraction outside [0, 1].

    Examples:
        >>> [top_k_count(p, 7) for p in (0.0, 0.1, 0.5, 1.0)]
        [0, 1, 3, 7]
    """
    if not 0.0 <= fraction <= 1.0:
        raise DePassError(f"fractions must lie in [0, 1]; got {fraction}.")
    if fraction == 0:
        return 0
    return max(1, int(fraction * n + 1e-9))


def rank_positions(attributions: Tensor, *, protect_bos: bool = True) -> Tensor:
    """Maskable positions of each prompt, most relevant first (descending attribution).

    Ties are broken by position (earlier first), so rankings are deterministic.

    Args:
        attributions: ``[batch, pos]`` one score per input position.
        protect_bos: position 0 is never ranked.

    Returns:
        ``[batch, n]`` long tensor of positions.
    """
    if attributions.ndim != 2:
        raise DePassError(f"attributions must have shape [batch, pos]; got {tuple(attributions.shape)}.")
    if not torch.isfinite(attributions).all():
        raise DePassError("attributions contain NaN or inf; check the attribution method's output.")
    positions = torch.tensor(maskable_positions(attributions.shape[1], protect_bos=protect_bos))
    scores = attributions[:, positions].double().cpu()
    order = torch.argsort(-scores, dim=1, stable=True)  # [batch, n]
    return positions[order]


def apply_mask(row: Sequence[int], masked: Sequence[int], *, masking: Masking, replace_with: int | None) -> list[int]:
    """One prompt (a list of ids) with the ``masked`` positions deleted or replaced.

    Examples:
        >>> apply_mask([0, 5, 6, 7, 8], [1, 3], masking="delete", replace_with=None)
        [0, 6, 8]
        >>> apply_mask([0, 5, 6, 7, 8], [1, 3], masking="replace", replace_with=2)
        [0, 2, 6, 2, 8]
    """
    gone = set(int(p) for p in masked)
    if masking == "delete":
        return [t for i, t in enumerate(row) if i not in gone]
    assert replace_with is not None
    return [replace_with if i in gone else t for i, t in enumerate(row)]


@torch.no_grad()
def score_rows(
    model: Any,
    rows: Sequence[Sequence[int]],
    targets: Sequence[int],
    *,
    metric: Metric = "prob",
    batch_size: int = 64,
) -> Tensor:
    """The target score at the last token of each row: ``p``, ``log p`` or the logit of the target.

    Rows may have different lengths: they are right-padded (a causal model's last real position does
    not see the padding) and read at their own last position.

    Returns:
        ``[len(rows)]`` float64 scores.
    """
    if metric not in _METRICS:
        raise DePassError(f"metric must be one of {list(_METRICS)}; got {metric!r}.")
    if len(rows) != len(targets):
        raise DePassError(f"got {len(rows)} prompts and {len(targets)} targets; give one target per prompt.")
    device = getattr(getattr(model, "cfg", None), "device", "cpu")
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        lengths = torch.tensor([len(r) for r in chunk])
        tokens = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)
        for i, r in enumerate(chunk):
            tokens[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        logits = model(tokens.to(device), return_type="logits")  # [chunk, pos, d_vocab]
        last = logits[torch.arange(len(chunk)), (lengths - 1).to(logits.device)].double()  # [chunk, d_vocab]
        tgt = torch.tensor(list(targets[start : start + batch_size]), device=last.device)
        if metric == "logit":
            vals = last.gather(1, tgt[:, None])[:, 0]
        else:
            logp = last.log_softmax(-1).gather(1, tgt[:, None])[:, 0]
            vals = logp if metric == "logprob" else logp.exp()
        out.append(vals.cpu())
    return torch.cat(out)
