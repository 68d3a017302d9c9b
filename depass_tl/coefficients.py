"""The frozen record of one clean forward pass: activations and nonlinear coefficients.

A :class:`FrozenRun` is produced once by :func:`depass_tl.capture.capture` and read by the replay
engine as many times as needed (one capture, many component sets). Every tensor is keyed by its full
TransformerLens hook name; the mapping is read-only.

Keys held (``l`` a layer):

* clean residual stream: ``hook_embed``, ``hook_pos_embed`` (standard positions only),
  ``blocks.l.hook_resid_pre``, ``blocks.l.hook_resid_mid`` (not for attn-only),
  ``blocks.l.hook_attn_out``, ``blocks.l.hook_mlp_out``, ``blocks.l.hook_resid_post``,
  ``unembed.hook_in`` (the final-norm output; computed from the frozen scale on TL versions that have
  no unembed hooks);
* frozen coefficients: ``blocks.l.ln1.hook_scale``, ``blocks.l.ln2.hook_scale``,
  ``ln_final.hook_scale`` ``[batch, pos, 1]`` (with ``use_split_qkv_input`` / ``use_attn_in`` TL
  reports ``ln1`` per head; every head normalises the same vector, so one ``[batch, pos, 1]`` is kept);
  Gemma-2/3 post-norms ``blocks.l.ln1_post.hook_scale`` / ``ln2_post.hook_scale``;
  ``blocks.l.attn.hook_pattern`` ``[batch, head_index, query_pos, key_pos]``;
  ``blocks.l.mlp.hook_pre`` / ``hook_post`` ``[batch, pos, d_mlp]`` and, for gated MLPs,
  ``blocks.l.mlp.hook_pre_linear`` and the frozen gate activation ``blocks.l.mlp.gate_act``
  (= act(hook_pre)); ``solu`` / ``solu_ln``: ``blocks.l.mlp.solu_softmax`` (= softmax(hook_pre) over
  d_mlp), and for ``solu_ln`` ``blocks.l.mlp.hook_mid`` and the inner norm's ``blocks.l.mlp.ln.hook_scale``;
* ``clip_qkv``: ``blocks.l.attn.hook_v`` (TL's pre-clamp value) and the frozen ratio
  ``blocks.l.attn.clip_ratio`` = clamp(v) / v ``[batch, pos, kv_head, d_head]`` (1 where v = 0);
* MoE (Mixtral): ``blocks.l.mlp.hook_expert_weights`` / ``hook_expert_indices`` and per expert e
  ``blocks.l.mlp.experts.e.hook_gate`` / ``hook_post`` ``[n_routed, d_mlp]`` plus the frozen
  ``...experts.e.tokens`` (flat ``batch * n_pos + pos`` index of each routed row, TL's row order),
  ``...experts.e.route_weight`` ``[n_routed]`` and ``...experts.e.gate_act`` (= act(hook_gate)).

Keys without ``hook_`` in their last part are depass_tl's own frozen coefficients, not TL hooks.

Hooks the user had attached when the run was captured are recorded by name (``foreign_hooks``) and
so are those that changed the value passing through them (``edited_hooks``): the replay refuses
edits it cannot follow (:mod:`depass_tl.foreign_hooks`) and the completeness guard names them as a
likely cause when a sum misses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor

from depass_tl.model_view import ModelView

__all__ = ["FrozenRun"]


@dataclass(frozen=True)
class FrozenRun:
    """Clean activations, frozen coefficients and the weights view of one forward pass.

    Attributes:
        tokens: ``[batch, pos]`` input token ids.
        logits: ``[batch, pos, d_vocab]`` the model's clean output.
        acts: read-only mapping hook name -> tensor (see the module docstring for the keys).
        view: the weights (:class:`~depass_tl.model_view.ModelView`).
        str_tokens: per prompt, the token strings (None when the model has no tokenizer).
        attention_mask: ``[batch, pos]`` 1 for real tokens, 0 for padding; None when nothing is padded.
        foreign_hooks: the model's hook points that held hooks of the user's during the capture (one
            name each, TransformerLens's when it has several).
        edited_hooks: those of ``foreign_hooks`` whose hooks changed the activation (output != input).
        hook_aliases: every name of each of ``foreign_hooks`` (a ``TransformerBridge`` registers some hook
            points under several names, e.g. ``blocks.0.hook_resid_mid`` is ``blocks.0.ln2.hook_in``).
        to_single_token: the model tokenizer's lookup of a single-token string (None without a
            tokenizer): what caches replayed from this run use for string answers.
    """

    tokens: Tensor
    logits: Tensor
    acts: Mapping[str, Tensor]
    view: ModelView
    str_tokens: tuple[tuple[str, ...], ...] | None
    attention_mask: Tensor | None = None
    foreign_hooks: tuple[str, ...] = ()
    edited_hooks: tuple[str, ...] = ()
    hook_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    to_single_token: Callable[[str], int] | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def build(
        *,
        tokens: Tensor,
        logits: Tensor,
        acts: dict[str, Tensor],
        view: ModelView,
        str_tokens: list[list[str]] | None,
        attention_mask: Tensor | None = None,
        foreign_hooks: tuple[str, ...] = (),
        edited_hooks: tuple[str, ...] = (),
        hook_aliases: Mapping[str, tuple[str, ...]] | None = None,
        to_single_token: Callable[[str], int] | None = None,
    ) -> "FrozenRun":
        frozen_strs = None if str_tokens is None else tuple(tuple(s) for s in str_tokens)
        return FrozenRun(tokens, logits, MappingProxyType(dict(acts)), view, frozen_strs, attention_mask,
                         tuple(foreign_hooks), tuple(edited_hooks), MappingProxyType(dict(hook_aliases or {})),
                         to_single_token)

    @property
    def pad(self) -> Tensor | None:
        """``[batch, pos]`` bool, True at padded positions (None when nothing is padded)."""
        return None if self.attention_mask is None else self.attention_mask == 0

    @property
    def last_real_positions(self) -> Tensor:
        """Per prompt, the index of its last real (unpadded) token: ``[batch]`` long (``pos=-1`` means it)."""
        if self.attention_mask is None:
            return torch.full((self.batch,), self.n_pos - 1, dtype=torch.long, device=self.tokens.device)
        positions = torch.arange(self.n_pos, device=self.tokens.device)
        return (self.attention_mask.to(self.tokens.device).bool() * (positions + 1)).argmax(-1)

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[1])

    def get(self, name: str) -> Tensor:
        """The captured tensor for hook ``name`` (internal helper; KeyError names what is missing)."""
        try:
            return self.acts[name]
        except KeyError as e:  # an internal invariant: capture must have stored it
            raise KeyError(f"{name!r} was not captured; captured: {sorted(self.acts)[:8]}...") from e

    def to(self, dtype: torch.dtype) -> dict[str, Tensor]:
        """The floating-point activations converted to ``dtype`` (a new dict; self is unchanged)."""
        return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in self.acts.items()}
