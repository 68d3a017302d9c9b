"""What a backend is: a predicate on model objects and what to do with the models it accepts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from depass_tl.model_view import EncoderView, ModelView

__all__ = ["Backend", "EncoderSource", "HookSite", "Method", "class_named", "encoder_site_names"]

Method = Literal["depass", "decompx"]


def encoder_site_names(n_layers: int) -> tuple[str, ...]:
    """The clean tensors DecompX captures from an encoder, named by TransformerLens ``HookedEncoder`` hook:
    ``hook_full_embed`` (embedding output, after the embedding LayerNorm) and, per layer ``l``,
    ``blocks.{l}.attn.hook_pattern`` ``[batch, head, query_pos, key_pos]``, ``blocks.{l}.hook_attn_out``,
    ``blocks.{l}.hook_resid_mid`` (LN#1's input), ``blocks.{l}.mlp.hook_pre`` / ``mlp.hook_post`` (the
    FFN activation's input and output), ``blocks.{l}.hook_mlp_out``, ``blocks.{l}.hook_resid_post``
    (LN#2's input) and ``blocks.{l}.hook_normalized_resid_post`` (the layer output).

    Examples:
        >>> encoder_site_names(1)[:3]
        ('hook_full_embed', 'blocks.0.attn.hook_pattern', 'blocks.0.hook_attn_out')
    """
    per_layer = (
        "attn.hook_pattern", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
        "hook_resid_post", "hook_normalized_resid_post",
    )
    return ("hook_full_embed",) + tuple(f"blocks.{l}.{name}" for l in range(n_layers) for name in per_layer)


@dataclass(frozen=True)
class HookSite:
    """Where one clean tensor is read: a module's input (``read="input"``, positional argument
    ``index``) or output (``read="output"``; ``index`` picks an element of a tuple output)."""

    module: Any
    read: Literal["input", "output"] = "output"
    index: int | None = None


@dataclass(frozen=True)
class EncoderSource:
    """What an encoder backend gives DecompX: the weights, where to read each clean tensor, how to run.

    Attributes:
        view: the weights (shared with the model, not copied).
        sites: one :class:`HookSite` per name of :func:`encoder_site_names`.
        forward: ``forward(tokens, token_type_ids, attention_mask, with_head)`` runs the model once
            (no grad is set up by the caller); returns the model's own head logits when ``with_head``
            and the model has a head (``[batch, n_classes]`` or ``[batch, pos, d_vocab]``), else None.
    """

    view: EncoderView
    sites: Mapping[str, HookSite]
    forward: Callable[[Tensor, Tensor | None, Tensor | None, bool], Tensor | None]


@dataclass(frozen=True)
class Backend:
    """One kind of model object that depass_tl can read.

    Attributes:
        name: the model class (or family) this backend reads, e.g. ``"HookedTransformer"``; it is also
            :attr:`depass_tl.model_view.ModelView.backend`.
        matches: ``matches(model)`` is True for the model objects this backend reads. It must not
            import anything heavy and must not fail (it is asked about arbitrary objects).
        read_view: reads a decoder model's config and weights into a :class:`ModelView` for the DePass
            replay, raising :class:`~depass_tl.errors.UnsupportedModelError` for what the replay does not
            handle; None for models the DePass replay does not run on (encoders).
        method: what :func:`depass_tl.run_with_depass` runs on these models: ``"depass"`` (capture and
            replay, reading the view) or ``"decompx"`` (:func:`depass_tl.decompx.run_decompx`, reading
            ``read_encoder``).
        classes: ``(module, class name)`` pairs that get ``model.run_with_depass`` when depass_tl is
            imported (skipped when the installed TransformerLens lacks them).
        priority: backends are asked in decreasing priority; a generic predicate (duck typing) gets a
            low one so the specific ones are asked first.
        read_encoder: for ``method="decompx"``: reads an encoder into an :class:`EncoderSource`,
            raising :class:`~depass_tl.errors.UnsupportedModelError` for what DecompX does not handle.
    """

    name: str
    matches: Callable[[Any], bool]
    read_view: Callable[[Any], ModelView] | None
    method: Method = "depass"
    classes: tuple[tuple[str, str], ...] = ()
    priority: int = 0
    read_encoder: Callable[[Any], EncoderSource] | None = None


def class_named(model: Any, name: str) -> bool:
    """True when ``name`` is the name of the model's class or one of its bases (no import of that class).

    Examples:
        >>> class TransformerBridge: ...
        >>> class Mine(TransformerBridge): ...
        >>> class_named(Mine(), "TransformerBridge"), class_named(3, "TransformerBridge")
        (True, False)
    """
    return any(cls.__name__ == name for cls in type(model).__mro__)
