"""Attach ``run_with_depass`` to ``HookedTransformer`` and ``HookedEncoder`` on import.

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
    import importlib

    patched = []
    tl = importlib.import_module("transformer_lens")
    for name in ("HookedTransformer", "HookedEncoder"):
        try:
            cls = getattr(tl, name)
        except (ImportError, AttributeError):  # TL 4 removed both (its __getattr__ raises ImportError)
            continue
        existing = getattr(cls, "run_with_depass", None)
        if existing is None or getattr(existing, "__depass_tl__", False):
            cls.run_with_depass = _run_with_depass_method
            patched.append(name)
    return patched
