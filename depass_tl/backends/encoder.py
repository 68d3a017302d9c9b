"""``HookedEncoder`` (BERT, TL 2.x / 3.x): decomposed by DecompX, not by the decoder replay.

:func:`depass_tl.run_with_depass` on a ``HookedEncoder`` runs :func:`depass_tl.decompx.run_decompx`
(it reads the encoder itself, so this backend has no :class:`~depass_tl.model_view.ModelView`).
TransformerLens 4 removed ``HookedEncoder``; a ``TransformerBridge`` wrapping an encoder is refused by
the Bridge backend with a message that says so.
"""

from __future__ import annotations

from typing import Any

from depass_tl.backends.base import Backend, class_named

__all__ = ["BACKEND", "is_hooked_encoder"]


def is_hooked_encoder(model: Any) -> bool:
    """True for a ``transformer_lens.HookedEncoder`` (or subclass), matched by class name (no TL import)."""
    return class_named(model, "HookedEncoder")


BACKEND = Backend(
    name="HookedEncoder",
    matches=is_hooked_encoder,
    read_view=None,
    method="decompx",
    classes=(("transformer_lens", "HookedEncoder"),),
    priority=10,
)
