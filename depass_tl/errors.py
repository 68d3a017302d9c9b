"""Exceptions raised by depass_tl.

Every error a user can trigger is a :class:`DePassError` (or a subclass) whose message says what was
seen and what to do. ``assert`` is used only for internal invariants.
"""

from __future__ import annotations

__all__ = ["DePassError", "DePassTypeError", "UnsupportedModelError", "HookNotFoundError"]


class DePassError(Exception):
    """Base class of every error raised by depass_tl on bad input or unsupported configurations."""


class DePassTypeError(DePassError, TypeError):
    """An argument of a public function does not have the type or shape its annotation says."""


class UnsupportedModelError(DePassError):
    """The model (or one of its config fields) is not supported by the replay engine."""


class HookNotFoundError(DePassError, KeyError):
    """A hook name that a cache does not hold (also a ``KeyError``, so ``in`` and ``.get`` work)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
