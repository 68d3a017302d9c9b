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
  ``ln_final.hook_scale`` ``[batch, pos, 1]``; ``blocks.l.attn.hook_pattern``
  ``[batch, head_index, query_pos, key_pos]``; ``blocks.l.mlp.hook_pre`` / ``hook_post``
  ``[batch, pos, d_mlp]`` and, for gated MLPs, ``blocks.l.mlp.hook_pre_linear`` and the frozen gate
  activation ``blocks.l.mlp.gate_act`` (= act(hook_pre); not a TL hook).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    """

    tokens: Tensor
    logits: Tensor
    acts: Mapping[str, Tensor]
    view: ModelView
    str_tokens: tuple[tuple[str, ...], ...] | None

    @staticmethod
    def build(
        *,
        tokens: Tensor,
        logits: Tensor,
        acts: dict[str, Tensor],
        view: ModelView,
        str_tokens: list[list[str]] | None,
    ) -> "FrozenRun":
        frozen_strs = None if str_tokens is None else tuple(tuple(s) for s in str_tokens)
        return FrozenRun(tokens, logits, MappingProxyType(dict(acts)), view, frozen_strs)

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
