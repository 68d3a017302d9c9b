"""DePassCache: decomposed activations keyed by TransformerLens hook name.

Like ``ActivationCache`` it is a read-only mapping, but every value has a leading component axis:
``[component, batch, pos, d_model]``, with ``labels`` aligned to it. Keys are full TL hook names
(``blocks.3.hook_resid_post``, ``blocks.3.hook_attn_out``, ``unembed.hook_in``, ...); TL shorthand such
as ``("resid_post", 3)`` is accepted on lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from depass_tl._checks import check_device
from depass_tl.decomposition import Decomposition
from depass_tl.errors import DePassError, DePassTypeError, DePassValueError, HookNotFoundError
from depass_tl.guard import Completeness
from depass_tl.positions import per_prompt_positions
from depass_tl.tokenization import AnswerTokens, answer_ids

__all__ = ["DePassCache"]

TokenLike = AnswerTokens


class DePassCache(Decomposition):
    """Read-only mapping hook name -> ``[component, batch, pos, d_model]``, plus labels and analysis.

    A :class:`~depass_tl.decomposition.Decomposition` (mapping, ``labels``, ``clean``,
    ``completeness_error``, ``component``), plus logit attribution.

    Attributes:
        labels: one label per component (axis 0 of every value), e.g. ``tok0 … tok{P-1}, bias``.
        clean: hook name -> the clean activation ``[batch, pos, d_model]`` for every stored hook.
        clean_last_logits: ``[batch, d_vocab]`` clean (pre-soft-cap) logits at each prompt's last real
            position.
        last_positions: ``[batch]`` each prompt's last real (unpadded) position; ``pos=-1`` means it.
        tokens: ``[batch, pos]`` input ids.
        str_tokens: token strings per prompt (None without a tokenizer).
        start_hook: where the replay started.
        mlp_rule: the MLP allocation rule used.
        precision: the replay's precision mode (``"exact"``, ``"tf32x3"`` or ``"fast"``; :mod:`depass_tl.precision`);
            ``completeness`` holds the error it measured and the tolerance that mode allows.
        logits_soft_capped: True when the model soft-caps its logits; attributions are then of the
            pre-cap logits (``unembed.hook_out``), which is what sums exactly.
        completeness: what the completeness guard measured when the replay ran (relative error per
            stored hook and at the logits, and the tolerance; :class:`~depass_tl.guard.Completeness`).
    """

    def __init__(
        self,
        *,
        activations: dict[str, Tensor],
        labels: tuple[str, ...],
        clean: dict[str, Tensor],
        clean_last_logits: Tensor,
        tokens: Tensor,
        last_positions: Tensor | None = None,
        str_tokens: tuple[tuple[str, ...], ...] | None,
        W_U: Tensor,
        b_U: Tensor | None,
        group_size: int,
        start_hook: str,
        mlp_rule: str,
        logits_soft_capped: bool,
        to_single_token: Callable[[str], int] | None,
        completeness: Completeness | None = None,
        precision: str = "exact",
    ) -> None:
        super().__init__(
            activations=activations, labels=labels, clean=clean, group_size=group_size, str_tokens=str_tokens
        )
        self.clean_last_logits = clean_last_logits
        B, P = tokens.shape
        self.last_positions = torch.full((B,), P - 1, dtype=torch.long) if last_positions is None else last_positions
        self.tokens = tokens
        self._W_U = W_U
        self._b_U = b_U
        self.bias_rows = torch.arange(group_size - 1, len(labels), group_size)
        self.start_hook = start_hook
        self.mlp_rule = mlp_rule
        self.precision = precision
        self.logits_soft_capped = logits_soft_capped
        self._to_single_token = to_single_token
        self.completeness = Completeness() if completeness is None else completeness

    # ----------------------------------------------------------------------------------- mapping
    def _missing(self, key: str) -> str:
        return (
            f"{key!r} is not in this DePassCache. Stored hooks: {', '.join(self._acts)}. "
            "Hooks before the start hook are never stored; others may have been left out by names_filter."
        )

    def __repr__(self) -> str:
        shape = tuple(next(iter(self._acts.values())).shape) if self._acts else ()
        return (
            f"DePassCache({len(self)} hooks, {len(self.labels)} components, shape {shape}, "
            f"start={self.start_hook!r}, mlp_rule={self.mlp_rule!r})"
        )

    # ------------------------------------------------------------------------- completeness
    def _outputs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``"logits"``: checked over the whole vocabulary at each prompt's last real position."""
        return {"logits": (self._logits_last(), self.clean_last_logits)}

    def _final_at(self, pos: int) -> Tensor:
        """``unembed.hook_in`` at ``pos`` per prompt (negative: counted back from each prompt's last real token,
        :mod:`depass_tl.positions`): ``[C, B, d]``."""
        final = self._acts["unembed.hook_in"]
        idx = per_prompt_positions(pos, self.last_positions.to(final.device), final.shape[2], "pos")
        return final[:, torch.arange(final.shape[1], device=final.device), idx]

    def _logits_last(self) -> Tensor:
        final = self._final_at(-1)  # [component, batch, d_model]
        logits = final @ self._W_U.to(device=final.device, dtype=final.dtype)
        if self._b_U is not None:
            logits[self.bias_rows] += self._b_U.to(device=final.device, dtype=final.dtype)
        return logits

    # ------------------------------------------------------------------------ logit attribution
    def _token_ids(self, tokens: TokenLike, batch: int) -> Tensor:
        """Answer ids ``[batch]`` on the unembedding's device (which a split model need not share with the tokens)."""
        return answer_ids(tokens, batch, self._W_U.shape[-1], self._to_single_token).to(self._W_U.device)

    def logit_attrs(
        self, tokens: TokenLike, *, incorrect_tokens: TokenLike | None = None, pos: int = -1
    ) -> Tensor:
        """Each component's contribution to a logit (or a logit difference) at one position.

        Projects the decomposed final-norm output onto the unembedding columns of the requested tokens
        only (never the full vocabulary). Sums over components to the clean logit (difference).

        Args:
            tokens: the answer token: a string (one token), an id, or one per prompt.
            incorrect_tokens: if given, attribute ``logit[tokens] - logit[incorrect_tokens]``.
            pos: the position; ``-1`` (default) is each prompt's last real token, also in padded batches.

        Returns:
            ``[component, batch]``.
        """
        x = self._final_at(pos)  # [component, batch, d_model]
        batch = x.shape[1]
        ids = self._token_ids(tokens, batch)
        direction = self._W_U[:, ids].to(x.dtype)  # [d_model, batch]
        offset = None if self._b_U is None else self._b_U[ids].to(x.dtype)
        if incorrect_tokens is not None:
            bad = self._token_ids(incorrect_tokens, batch)
            direction = direction - self._W_U[:, bad].to(x.dtype)
            if self._b_U is not None:
                offset = offset - self._b_U[bad].to(x.dtype)  # type: ignore[operator]
        attrs = torch.einsum("cbd,db->cb", x, direction.to(x.device))
        if offset is not None:
            attrs[self.bias_rows] += offset.to(x.device)
        return attrs

    def unembed_direction(self, tokens: TokenLike, *, incorrect_tokens: TokenLike | None = None) -> Tensor:
        """The unembedding direction ``W_U[:, tokens] (− W_U[:, incorrect_tokens])`` per prompt: ``[d_model, batch]``.

        ``logit_attrs`` is the decomposed final-norm output projected onto this direction (plus the
        ``b_U`` difference in the bias component).
        """
        batch = self.tokens.shape[0]
        direction = self._W_U[:, self._token_ids(tokens, batch)]
        if incorrect_tokens is not None:
            direction = direction - self._W_U[:, self._token_ids(incorrect_tokens, batch)]
        return direction

    def logit_diff_attrs(self, tokens: TokenLike, incorrect_tokens: TokenLike, *, pos: int = -1) -> Tensor:
        """``logit_attrs(tokens, incorrect_tokens=incorrect_tokens, pos=pos)``: ``[component, batch]``."""
        return self.logit_attrs(tokens, incorrect_tokens=incorrect_tokens, pos=pos)

    # ------------------------------------------------------------------------------- grouping
    def group(self, groups: Mapping[str, str | Sequence[str]]) -> "DePassCache":
        """Sum components into named groups; returns a new cache.

        Args:
            groups: new label -> a regular expression (matched against the whole label) or a list of
                labels. Each component joins the first group that claims it; unclaimed components keep
                their own label; ``bias`` always stays last: patterns never claim it and listing it is an error. Group order follows
                the mapping; unclaimed components come after the groups, in their original order.

        Examples:
            >>> import torch, depass_tl
            >>> from depass_tl.toy import random_model
            >>> cfg = dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2,
            ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
            >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3, 4]]))
            >>> dc.group({"early": ["tok0", "tok1"], "late": r"tok[23]"}).labels
            ('early', 'late', 'bias')

        Note: with the ``softmax`` or ``max`` MLP rules, grouping after the replay (summing shares) is
        not the same as replaying the grouped components (shares are not additive across groupings).
        """
        if self.group_size != len(self.labels):
            raise DePassError("group() works on single-group caches (one partition); this cache has several groups.")
        if not isinstance(groups, Mapping) or not groups:
            raise DePassTypeError(f"groups must be a non-empty mapping new label -> pattern or labels; got {groups!r}.")
        members: dict[str, list[int]] = {name: [] for name in groups}
        owner: dict[int, str] = {}
        for name, rule in groups.items():
            hits = self._group_hits(name, rule)
            members[name] = [c for c in hits if c not in owner]
            owner.update((c, name) for c in members[name])
            if not isinstance(rule, str) and self.labels[-1] in rule:
                raise DePassValueError(f"the {self.labels[-1]!r} component cannot be grouped; leave it out of {name!r}.")
            if not members[name] and hits:
                taken = sorted({owner[c] for c in hits})
                raise DePassValueError(
                    f"group {name!r} matches only components that earlier groups took ({', '.join(map(repr, taken))}): "
                    "each component joins the first group that matches it. Put the narrower group first, or narrow "
                    "the earlier pattern."
                )
            if not members[name]:
                raise DePassValueError(f"group {name!r} matches no component; labels are {list(self.labels)}.")
        claimed = set(owner)
        rest = [c for c in range(len(self.labels) - 1) if c not in claimed]
        new_labels = tuple(members) + tuple(self.labels[c] for c in rest) + (self.labels[-1],)
        if len(set(new_labels)) != len(new_labels):
            raise DePassError(f"grouped labels collide: {list(new_labels)}.")
        index = [members[n] for n in members] + [[c] for c in rest] + [[len(self.labels) - 1]]

        def regroup(v: Tensor) -> Tensor:
            return torch.stack([v[idx].sum(0) for idx in index])

        return self._replace(activations={k: regroup(v) for k, v in self._acts.items()}, labels=new_labels,
                             group_size=len(new_labels))

    def _group_hits(self, name: str, rule: Any) -> list[int]:
        """The non-bias components a group's pattern (a regular expression) or list of labels matches."""
        import re

        if isinstance(rule, str):
            try:
                pattern = re.compile(rule)
            except re.error as e:
                raise DePassValueError(f"group {name!r}: {rule!r} is not a valid regular expression ({e}).") from e
            return [c for c, label in enumerate(self.labels[:-1]) if pattern.fullmatch(label)]
        if not isinstance(rule, (list, tuple, set, frozenset)) or not all(isinstance(x, str) for x in rule):
            raise DePassTypeError(
                f"group {name!r} must be a regular expression (str) or a list of labels; got {rule!r}."
            )
        unknown = [x for x in rule if x not in self.labels]
        if unknown:
            raise DePassValueError(f"group {name!r} lists unknown labels {unknown}; labels are {list(self.labels)}.")
        return [c for c, label in enumerate(self.labels[:-1]) if label in rule]

    # ------------------------------------------------------------------------------- export
    def to_dataframe(self, tokens: TokenLike, *, incorrect_tokens: TokenLike | None = None, pos: int = -1) -> Any:
        """A long-format ``pandas.DataFrame``: one row per (prompt, component) with its attribution.

        Columns: ``batch``, ``component``, ``label``, ``token`` (the token string for token components
        when known), ``attribution``.
        """
        return self._frame(self.logit_attrs(tokens, incorrect_tokens=incorrect_tokens, pos=pos))

    def to(self, device: str | torch.device) -> "DePassCache":
        """A copy with every tensor moved to ``device``.

        Raises:
            DePassValueError: not a device, or one this machine does not have (e.g. ``"cuda"`` without CUDA).
        """
        device = check_device(device)
        return self._replace(
            activations={k: v.to(device) for k, v in self._acts.items()},
            clean={k: v.to(device) for k, v in self.clean.items()},
            clean_last_logits=self.clean_last_logits.to(device),
            last_positions=self.last_positions.to(device),
            tokens=self.tokens.to(device),
            W_U=self._W_U.to(device),
            b_U=None if self._b_U is None else self._b_U.to(device),
        )

    def _replace(self, **changes: Any) -> "DePassCache":
        """A cache with this one's fields (every argument of ``__init__``), ``changes`` replacing some."""
        fields: dict[str, Any] = dict(
            activations=dict(self._acts), labels=self.labels, clean=dict(self.clean), clean_last_logits=self.clean_last_logits,
            tokens=self.tokens, last_positions=self.last_positions, str_tokens=self.str_tokens, W_U=self._W_U,
            b_U=self._b_U, group_size=self.group_size, start_hook=self.start_hook, mlp_rule=self.mlp_rule,
            logits_soft_capped=self.logits_soft_capped, to_single_token=self._to_single_token,
            completeness=self.completeness, precision=self.precision,
        )
        return DePassCache(**{**fields, **changes})
