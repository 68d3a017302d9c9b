"""Attach ``run_with_depass`` to the TransformerLens model classes on import.

Classes: those the registered backends name (:func:`depass_tl.backends.install_targets`), i.e.
``HookedTransformer`` and ``HookedEncoder`` (TL 2.x / 3.x) and ``TransformerBridge`` (TL 3.x / 4.x).
The method is a thin forwarder to :func:`depass_tl.run_with_depass`; all logic lives in the free
function. A class that already defines its own ``run_with_depass`` is left alone, and a
class missing from the installed TL (``HookedTransformer`` on TL 4, the Bridge on TL 2) is skipped,
so importing depass_tl never fails.
"""

from __future__ import annotations

import importlib
from typing import Any

from depass_tl.backends import install_targets

__all__ = ["install_methods"]

#: (module, attribute) of each class that gets the method, in this order; None: the backends' classes.
_TARGETS: tuple[tuple[str, str], ...] | None = None


def _run_with_depass_method(self: Any, input: Any, **kwargs: Any) -> Any:
    """``depass_tl.run_with_depass(self, input, **kwargs)``; see that function."""
    from depass_tl.api import run_with_depass

    return run_with_depass(self, input, **kwargs)


_run_with_depass_method.__depass_tl__ = True  # type: ignore[attr-defined]


def _find_class(module: str, name: str) -> type | None:
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # TL 4 removed HT/HookedEncoder (__getattr__ raises ImportError)
        return None
    return cls if isinstance(cls, type) else None


def install_methods() -> list[str]:
    """Add ``run_with_depass`` to the TL model classes present; returns the class names patched."""
    patched = []
    for module, name in install_targets() if _TARGETS is None else _TARGETS:
        cls = _find_class(module, name)
        if cls is None:
            continue
        existing = cls.__dict__.get("run_with_depass", getattr(cls, "run_with_depass", None))
        if existing is None or getattr(existing, "__depass_tl__", False):
            cls.run_with_depass = _run_with_depass_method  # type: ignore[attr-defined]
            patched.append(name)
    return patched
