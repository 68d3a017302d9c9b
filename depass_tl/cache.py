"""DePassCache: decomposed activations keyed by TransformerLens hook name.

Like ``ActivationCache`` it is a read-only mapping, but every value has a leading component axis:
``[component, batch, pos, d_model]``, with ``labels`` aligned to it. Keys are full TL hook names
(``blocks.3.hook_resid_post``, ``blocks.3.hook_attn_out``, ``unembed.hook_in``, ...); TL shorthand such
as ``("resid_post", 3)`` is accepted on lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassError, HookNotFoundError

__all__ = ["DePassCache"]

TokenLike = str | int | Sequence[int] | Sequence[str] | Tensor


class DePassCache(Mapping[str, Tensor]):
    """Read-only mapping hook name -> ``[component, batch, pos, d_model]``, plus labels and analysis.

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
        logits_soft_capped: True when the model soft-caps its logits; attributions are then of the
            pre-cap logits (``unembed.hook_out``), which is what sums exactly.
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
    ) -> None:
        if len(labels) % group_size:
            raise ValueError("labels must split into groups of group_size")
        self._acts = MappingProxyType(activations)
        self.labels = labels
        self.clean = MappingProxyType(clean)
        self.clean_last_logits = clean_last_logits
        B, P = tokens.shape
        self.last_positions = torch.full((B,), P - 1, dtype=torch.long) if last_positions is None else last_positions
        self.tokens = tokens
        self.str_tokens = str_tokens
        self._W_U = W_U
        self._b_U = b_U
        self.group_size = group_size
        self.bias_rows = torch.arange(group_size - 1, len(labels), group_size)
        self.start_hook = start_hook
        self.mlp_rule = mlp_rule
        self.logits_soft_capped = logits_soft_capped
        self._to_single_token = to_single_token

    # ----------------------------------------------------------------------------------- mapping
    def _resolve(self, key: str | tuple[Any, ...]) -> str:
        if isinstance(key, tuple):
            from depass_tl.backends import get_act_name

            key = get_act_name(*key)
        if key in self._acts:
            return key
        raise HookNotFoundError(
            f"{key!r} is not in this DePassCache. Stored hooks: {', '.join(self._acts)}. "
            "Hooks before the start hook are never stored; others may have been left out by names_filter."
        )

    def __getitem__(self, key: str | tuple[Any, ...]) -> Tensor:  # type: ignore[override]
        return self._acts[self._resolve(key)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def __repr__(self) -> str:
        shape = tuple(next(iter(self._acts.values())).shape) if self._acts else ()
        return (
            f"DePassCache({len(self)} hooks, {len(self.labels)} components, shape {shape}, "
            f"start={self.start_hook!r}, mlp_rule={self.mlp_rule!r})"
        )

    @property
    def n_components(self) -> int:
        return len(self.labels)

    def component(self, label: str) -> int:
        """Index of the component with this label."""
        try:
            return self.labels.index(label)
        except ValueError as e:
            raise DePassError(f"no component labelled {label!r}; labels are {list(self.labels)}.") from e

    # ------------------------------------------------------------------------- completeness
    def completeness_error(self, hook: str | None = None, *, relative: bool = False) -> dict[str, float] | float:
        """Max ``|Σ_c component - clean activation|`` per stored hook (captum's convergence delta).

        Args:
            hook: one hook name (returns a float) or None (returns a dict over every stored hook plus
                ``"logits"``, checked over the whole vocabulary at the last position).
            relative: divide by the max absolute clean value at that hook.
        """
        if hook is not None:
            name = self._resolve(hook)
            return self._error(self._acts[name].sum(0), self.clean[name], relative)
        errors = {name: self._error(v, self.clean[name], relative) for name, v in self._acts.items()}
        errors["logits"] = self._error(self._logits_last(), self.clean_last_logits, relative)
        return errors

    def _error(self, comps: Tensor, clean: Tensor, relative: bool) -> float:
        """Max over groups of ``|Σ_(c in group) comps - clean|`` (each group is a full partition)."""
        K = self.group_size
        total = comps.reshape(comps.shape[0] // K, K, *comps.shape[1:]).sum(1)
        err = float((total - clean.to(device=total.device, dtype=total.dtype)).abs().max())
        return err / max(float(clean.abs().max()), 1e-30) if relative else err

    def _final_at(self, pos: int) -> Tensor:
        """``unembed.hook_in`` at ``pos`` per prompt (``-1``: each prompt's last real token): ``[C, B, d]``."""
        final = self._acts["unembed.hook_in"]
        P = final.shape[2]
        if not -P <= pos < P:
            raise DePassError(f"pos {pos} is out of range for {P} positions.")
        if pos != -1:
            return final[:, :, pos]
        idx = self.last_positions.to(final.device)
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
        device = self._W_U.device
        if isinstance(tokens, Tensor):
            ids = tokens.to(device).long().flatten()
        elif isinstance(tokens, (str, int)):
            ids = torch.tensor([self._one_id(tokens)], device=device)
        else:
            ids = torch.tensor([self._one_id(t) for t in tokens], device=device)
        if ids.numel() == 1:
            ids = ids.expand(batch)
        if ids.numel() != batch:
            raise DePassError(f"give one answer token, or one per prompt ({batch}); got {ids.numel()}.")
        d_vocab = self._W_U.shape[-1]
        if int(ids.min()) < 0 or int(ids.max()) >= d_vocab:
            raise DePassError(f"token ids must lie in [0, {d_vocab}); got {ids.tolist()}.")
        return ids

    def _one_id(self, token: str | int) -> int:
        if isinstance(token, int):
            return token
        if self._to_single_token is None:
            raise DePassError(f"the model has no tokenizer, so {token!r} cannot be looked up; pass a token id.")
        return self._to_single_token(token)

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
        import re

        if self.group_size != len(self.labels):
            raise DePassError("group() works on single-group caches (one partition); this cache has several groups.")
        members: dict[str, list[int]] = {name: [] for name in groups}
        claimed: set[int] = set()
        for name, rule in groups.items():
            for c, label in enumerate(self.labels[:-1]):
                if c in claimed:
                    continue
                hit = re.fullmatch(rule, label) is not None if isinstance(rule, str) else label in rule
                if hit:
                    members[name].append(c)
                    claimed.add(c)
            if not isinstance(rule, str) and self.labels[-1] in rule:
                raise DePassError(f"the {self.labels[-1]!r} component cannot be grouped; leave it out of {name!r}.")
            if not members[name]:
                raise DePassError(f"group {name!r} matches no component; labels are {list(self.labels)}.")
        rest = [c for c in range(len(self.labels) - 1) if c not in claimed]
        new_labels = tuple(members) + tuple(self.labels[c] for c in rest) + (self.labels[-1],)
        if len(set(new_labels)) != len(new_labels):
            raise DePassError(f"grouped labels collide: {list(new_labels)}.")
        index = [members[n] for n in members] + [[c] for c in rest] + [[len(self.labels) - 1]]

        def regroup(v: Tensor) -> Tensor:
            return torch.stack([v[idx].sum(0) for idx in index])

        return DePassCache(
            activations={k: regroup(v) for k, v in self._acts.items()},
            labels=new_labels,
            clean=dict(self.clean),
            clean_last_logits=self.clean_last_logits,
            last_positions=self.last_positions,
            tokens=self.tokens,
            str_tokens=self.str_tokens,
            W_U=self._W_U,
            b_U=self._b_U,
            group_size=len(new_labels),
            start_hook=self.start_hook,
            mlp_rule=self.mlp_rule,
            logits_soft_capped=self.logits_soft_capped,
            to_single_token=self._to_single_token,
        )

    # ------------------------------------------------------------------------------- export
    def to_dataframe(self, tokens: TokenLike, *, incorrect_tokens: TokenLike | None = None, pos: int = -1) -> Any:
        """A long-format ``pandas.DataFrame``: one row per (prompt, component) with its attribution.

        Columns: ``batch``, ``component``, ``label``, ``token`` (the token string for token components
        when known), ``attribution``.
        """
        import pandas as pd

        attrs = self.logit_attrs(tokens, incorrect_tokens=incorrect_tokens, pos=pos)
        rows = []
        for b in range(attrs.shape[1]):
            for c, label in enumerate(self.labels):
                token = None
                if self.str_tokens is not None and label.startswith("tok") and label[3:].isdigit():
                    token = self.str_tokens[b][int(label[3:])]
                rows.append({"batch": b, "component": c, "label": label, "token": token,
                             "attribution": float(attrs[c, b])})
        return pd.DataFrame(rows)

    def to(self, device: str | torch.device) -> "DePassCache":
        """A copy with every tensor moved to ``device``."""
        return DePassCache(
            activations={k: v.to(device) for k, v in self._acts.items()},
            labels=self.labels,
            clean={k: v.to(device) for k, v in self.clean.items()},
            clean_last_logits=self.clean_last_logits.to(device),
            last_positions=self.last_positions.to(device),
            tokens=self.tokens.to(device),
            str_tokens=self.str_tokens,
            W_U=self._W_U.to(device),
            b_U=None if self._b_U is None else self._b_U.to(device),
            group_size=self.group_size,
            start_hook=self.start_hook,
            mlp_rule=self.mlp_rule,
            logits_soft_capped=self.logits_soft_capped,
            to_single_token=self._to_single_token,
        )
