"""Exceptions raised by depass_tl.

Every error a user can trigger is a :class:`DePassError` (or a subclass) whose message says what was
seen and what to do. ``assert`` is used only for internal invariants.
"""

from __future__ import annotations

__all__ = ["DePassError", "UnsupportedModelError"]


class DePassError(Exception):
    """Base class of every error raised by depass_tl on bad input or unsupported configurations."""


class UnsupportedModelError(DePassError):
    """The model (or one of its config fields) is not supported by the replay engine."""
