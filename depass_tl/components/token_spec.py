"""Token components: one per input position."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from depass_tl.coefficients import FrozenRun
from depass_tl.components.base import BIAS, ComponentSpec
from depass_tl.errors import DePassError
from depass_tl.replay.state import DiagonalComponents, Group, InitialState, parse_start_hook

__all__ = ["TokenSpec", "tokens"]


@dataclass(frozen=True)
class TokenSpec(ComponentSpec):
    """One component per position of the residual stream at ``start`` (default: the embeddings)."""

    separate_pos_embed: bool = False
    start: str = "blocks.0.hook_resid_pre"

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:
        parse_start_hook(self.start, run.view)
        B, P = run.tokens.shape
        resid = run.get(self.start).to(dtype)  # [batch, pos, d_model]
        token_part = resid
        if self.separate_pos_embed:
            if self.start != "blocks.0.hook_resid_pre":
                raise DePassError("separate_pos_embed=True only applies at start='blocks.0.hook_resid_pre'.")
            if not run.view.has_pos_embed_in_resid or "hook_pos_embed" not in run.acts:
                raise DePassError(
                    "separate_pos_embed=True needs learned positional embeddings in the residual stream "
                    "(positional_embedding_type='standard'); this model has none. Use tokens()."
                )
            pos = run.get("hook_pos_embed").to(dtype).expand(B, -1, -1)
            token_part = resid - pos
        labels = [f"tok{p}" for p in range(P)]
        extra = [torch.zeros_like(resid)]  # the bias component
        if self.separate_pos_embed:
            extra.insert(0, pos.contiguous())
            labels.append("pos_embed")
        # component p holds token_part at position p only: kept as [batch, pos, d_model], never densified
        comps = DiagonalComponents(token_part.contiguous(), torch.stack(extra))
        return InitialState((Group(self.start, comps, tuple(labels) + (BIAS,)),))


def tokens(*, separate_pos_embed: bool = False, start: str = "blocks.0.hook_resid_pre") -> TokenSpec:
    """One component per input token (the default spec), plus ``bias``.

    Component ``tok{p}`` holds the clean residual stream at position p at the start hook (by default
    the token + positional embedding) at position p only. With ``separate_pos_embed=True`` the
    learned positional embedding becomes its own ``pos_embed`` component. With a later ``start``
    (``blocks.{l}.hook_resid_pre|mid|post``) the split is by position of that residual stream, as in
    the DePass paper's middle-layer mode.

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]),
        ...                                   components=depass_tl.tokens(separate_pos_embed=True))
        >>> dc.labels
        ('tok0', 'tok1', 'tok2', 'pos_embed', 'bias')
    """
    return TokenSpec(separate_pos_embed=separate_pos_embed, start=start)
