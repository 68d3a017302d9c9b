"""Attach ``run_with_depass`` as a method of TransformerLens model classes on import.

The method is a thin forwarder to :func:`depass_tl.run_with_depass`; all logic lives in the free
function. A class that already defines its own ``run_with_depass`` is left alone, and a missing TL
class (e.g. ``HookedTransformer`` on TL 4) is skipped, so importing depass_tl never fails.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install_methods"]


def _run_with_depass_method(self: Any, input: Any, **kwargs: Any) -> Any:
    """``depass_tl.run_with_depass(self, input, **kwargs)``; see that function."""
    from depass_tl.api import run_with_depass

    return run_with_depass(self, input, **kwargs)


_run_with_depass_method.__depass_tl__ = True  # type: ignore[attr-defined]


def install_methods() -> list[str]:
    """Add ``run_with_depass`` to the TL model classes present; returns the class names patched."""
    patched = []
    try:
        from transformer_lens import HookedTransformer
    except ImportError:  # TL 4 removed it; nothing to attach to
        return patched
    existing = getattr(HookedTransformer, "run_with_depass", None)
    if existing is None or getattr(existing, "__depass_tl__", False):
        HookedTransformer.run_with_depass = _run_with_depass_method  # type: ignore[attr-defined]
        patched.append("HookedTransformer")
    return patched
