"""Positions in padded batches: one rule for every ``pos`` argument of the package.

A non-negative position is an index into the ``[batch, pos]`` tokens (the same column for every prompt,
as asked, padding included); a negative one counts back from each prompt's last real (unpadded) token,
so ``-1`` is each prompt's last token and ``-2`` the one before it, whether the batch is padded on the
left, on the right, or not at all (a right-padded prompt's ``-2`` is not a padding column). A negative
position that falls before the first column is refused; ``real_only=True`` also refuses columns past a
prompt's last real token (where nothing real is computed: attention scores).

Examples:
    >>> import torch
    >>> last = torch.tensor([5, 2])  # 6 columns; prompt 1 is right-padded after column 2
    >>> per_prompt_positions(-1, last, 6, "pos").tolist(), per_prompt_positions(-2, last, 6, "pos").tolist()
    ([5, 2], [4, 1])
    >>> per_prompt_positions(4, last, 6, "pos").tolist()
    [4, 4]
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from depass_tl.errors import DePassTypeError, DePassValueError

__all__ = ["per_prompt_positions"]


def _is_index(value: object) -> bool:
    """Whether ``value`` is one integer (``int``, a numpy integer or 0-d integer array), not an array or float."""
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def per_prompt_positions(pos: int | Tensor, last: Tensor, n_pos: int, what: str, *, real_only: bool = False) -> Tensor:
    """``[batch]`` long positions (on ``last``'s device) for ``pos``: an int, or one integer per prompt.

    Args:
        pos: the position(s); negative values count back from each prompt's last real token.
        last: ``[batch]`` each prompt's last real position.
        n_pos: the number of columns.
        what: the argument's name, for the error.
        real_only: refuse a column past a prompt's last real token too.

    Raises:
        DePassTypeError: not an int or an integer tensor.
        DePassValueError: a position outside the columns, before a prompt's start, or (``real_only``) past
            its last real token.
    """
    batch = last.shape[0]
    if isinstance(pos, Tensor) and not pos.is_floating_point() and pos.dtype != torch.bool:
        out = pos.detach().to(device=last.device, dtype=torch.long).reshape(-1)
        out = out.expand(batch).clone() if out.numel() == 1 else out
    elif not isinstance(pos, (bool, Tensor)) and _is_index(pos):  # int, numpy integers
        out = torch.full((batch,), operator.index(pos), dtype=torch.long, device=last.device)
    else:
        raise DePassTypeError(f"{what} must be an int or a [batch] integer tensor of positions; got {pos!r}")
    if out.shape != (batch,):
        raise DePassValueError(f"{what} must give one position per prompt (batch {batch}); got shape {tuple(out.shape)}")
    out = torch.where(out < 0, last + 1 + out, out)  # -1: each prompt's last real token
    end = last if real_only else torch.full_like(last, n_pos - 1)
    if bool((out < 0).any()) or bool((out > end).any()):
        given = pos.tolist() if isinstance(pos, Tensor) else operator.index(pos)
        where = (f"must point at real tokens: columns 0 .. each prompt's last real token {last.tolist()}" if real_only
                 else f"is out of range for {n_pos} positions: columns 0 .. {n_pos - 1}")
        raise DePassValueError(
            f"{what} {given} {where} (negative values count back from each prompt's last real token "
            f"{last.tolist()}); got {out.tolist()}."
        )
    return out
