"""Component specs: *what* to attribute to, as data.

A spec turns a :class:`~depass_tl.coefficients.FrozenRun` into an
:class:`~depass_tl.replay.engine.InitialState`: a start hook, components
``[component, batch, pos, d_model]`` that sum to the clean activation there, and their labels. The
last component is always ``bias``; it starts at zero and collects every constant the replay meets.

* :func:`tokens` (the default): one component per input position (``tok{p}``), optionally with the
  positional embedding as its own ``pos_embed`` component.
* :func:`custom`: any user tensor at a residual-stream hook, validated to sum to the clean activation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from depass_tl.coefficients import FrozenRun
from depass_tl.errors import DePassError
from depass_tl.replay.engine import Group, InitialState, parse_start_hook

__all__ = ["ComponentSpec", "TokenSpec", "CustomSpec", "tokens", "custom", "BIAS"]

BIAS = "bias"


class ComponentSpec:
    """Base class of component specs (frozen dataclasses with an ``init`` method)."""

    def required_hooks(self, n_layers: int) -> set[str]:
        """TL hooks beyond the standard capture that ``init`` reads (e.g. ``attn.hook_z``)."""
        return set()

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:  # pragma: no cover - interface
        raise NotImplementedError


def _with_bias(x: Tensor, labels: list[str], start_hook: str, bias: Tensor | None = None) -> InitialState:
    """One group: ``x`` plus a bias component (zero, or ``bias`` ``[batch, pos, d_model]``)."""
    b = torch.zeros_like(x[:1]) if bias is None else bias.to(x)[None].expand_as(x[:1])
    return InitialState((Group(start_hook, torch.cat([x, b], dim=0), tuple(labels) + (BIAS,)),))


@dataclass(frozen=True)
class TokenSpec(ComponentSpec):
    """One component per input position, starting at ``blocks.0.hook_resid_pre``."""

    separate_pos_embed: bool = False

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:
        B, P = run.tokens.shape
        resid = run.get("blocks.0.hook_resid_pre").to(dtype)  # [batch, pos, d_model]
        if self.separate_pos_embed:
            if not run.view.has_pos_embed_in_resid or "hook_pos_embed" not in run.acts:
                raise DePassError(
                    "separate_pos_embed=True needs learned positional embeddings in the residual stream "
                    "(positional_embedding_type='standard'); this model has none. Use tokens()."
                )
            pos = run.get("hook_pos_embed").to(dtype)
            pos = pos.expand(B, -1, -1) if pos.shape[0] != B else pos
            token_part = resid - pos
        else:
            token_part = resid
        eye = torch.eye(P, dtype=dtype, device=resid.device)  # [component, pos]
        x = eye[:, None, :, None] * token_part[None]  # [component=pos, batch, pos, d_model]
        labels = [f"tok{p}" for p in range(P)]
        if self.separate_pos_embed:
            x = torch.cat([x, pos[None]], dim=0)
            labels.append("pos_embed")
        return _with_bias(x, labels, "blocks.0.hook_resid_pre")


def tokens(*, separate_pos_embed: bool = False) -> TokenSpec:
    """One component per input token (the default spec), plus ``bias``.

    Component ``tok{p}`` holds the clean residual stream at position p (token + positional embedding)
    at position p only. With ``separate_pos_embed=True`` the learned positional embedding becomes its
    own ``pos_embed`` component and ``tok{p}`` holds only the token embedding.

    Examples:
        >>> import torch, depass_tl
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...                               d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> _, dc = depass_tl.run_with_depass(HookedTransformer(cfg), torch.tensor([[1, 2, 3]]),
        ...                                   components=depass_tl.tokens(separate_pos_embed=True))
        >>> dc.labels
        ('tok0', 'tok1', 'tok2', 'pos_embed', 'bias')
    """
    return TokenSpec(separate_pos_embed=separate_pos_embed)


@dataclass(frozen=True)
class CustomSpec(ComponentSpec):
    """User-supplied components at a residual-stream hook."""

    hook: str
    tensor: Tensor = field(repr=False)
    labels: tuple[str, ...]
    rtol: float = 1e-4

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:
        parse_start_hook(self.hook, run.view)
        clean = run.get(self.hook).to(dtype)
        x = self.tensor.to(device=clean.device, dtype=dtype)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(clean.shape):
            raise DePassError(
                f"custom components at {self.hook!r} must have shape [component, {', '.join(map(str, clean.shape))}] "
                f"([component, batch, pos, d_model]); got {tuple(self.tensor.shape)}."
            )
        if len(self.labels) != x.shape[0]:
            raise DePassError(f"got {len(self.labels)} labels for {x.shape[0]} components; give one label each.")
        residual = x.sum(0) - clean
        err = float(residual.abs().max())
        tol = self.rtol * max(1.0, float(clean.abs().max()))
        if not err <= tol:
            b, p, d = (int(i) for i in torch.unravel_index(residual.abs().argmax(), residual.shape))
            raise DePassError(
                f"custom components do not sum to the clean activation at {self.hook!r}: max |Σ_c x_c - clean| = "
                f"{err:.4g} (tolerance {tol:.3g}) at batch {b}, pos {p}, dim {d} (sum {float(x.sum(0)[b, p, d]):.6g}, "
                f"clean {float(clean[b, p, d]):.6g}). Add a remainder component (clean - sum) to make them complete."
            )
        return _with_bias(x, list(self.labels), self.hook)


def custom(hook: str, tensor: Tensor, labels: list[str] | tuple[str, ...]) -> CustomSpec:
    """Components given as a tensor at a residual-stream hook, plus ``bias``.

    Args:
        hook: ``blocks.{l}.hook_resid_pre|mid|post``; the replay starts there.
        tensor: ``[component, batch, pos, d_model]`` that must sum over components to the clean
            activation at ``hook`` (checked; the error shows the residual if not).
        labels: one unique label per component (``bias`` is reserved).

    Examples:
        >>> import torch, depass_tl
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...                               d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> toks = torch.tensor([[1, 2, 3]])
        >>> _, cache = model.run_with_cache(toks)
        >>> h = cache["blocks.0.hook_resid_post"]
        >>> halves = torch.stack([h / 2, h / 2])
        >>> _, dc = depass_tl.run_with_depass(model, toks, mlp_rule="ratio",
        ...     components=depass_tl.custom("blocks.0.hook_resid_post", halves, ["a", "b"]))
        >>> dc.labels
        ('a', 'b', 'bias')
    """
    labels = tuple(labels)
    if BIAS in labels:
        raise DePassError(f"the label {BIAS!r} is reserved for the bias component; rename that component.")
    if len(set(labels)) != len(labels):
        raise DePassError(f"component labels must be unique; got {list(labels)}.")
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        raise DePassError("custom components must be a floating-point torch.Tensor [component, batch, pos, d_model].")
    return CustomSpec(hook, tensor.detach(), labels)
