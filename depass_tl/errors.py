"""Exceptions raised by depass_tl.

Every error a user can trigger is a :class:`DePassError` (or a subclass) whose message says what was
seen and what to do. Where Python has a convention, the subclass also inherits the built-in
exception: a bad value is a ``ValueError`` (:class:`DePassValueError`), a wrong type a ``TypeError``
(:class:`DePassTypeError`), a missing hook a ``KeyError`` (:class:`HookNotFoundError`), so
``except ValueError`` works as it would with any other library. ``assert`` is used only for internal
invariants.

The subclasses a caller may want to catch apart:

* :class:`UnsupportedModelError`: the model (a config field, a module layout) is not replayed.
* :class:`ModelStateError`: the model is in a state a replay cannot be exact in (training mode,
  weights on the ``meta`` device, NaN/inf in the clean run).
* :class:`ForeignHookError`: hooks attached to the model before the call edit activations that the
  replay recomputes (see docs/reliability.md for which hooks are replayed exactly).
* :class:`CompletenessError`: after a replay, the components did not sum to the clean run within the
  tolerance of the dtypes used; nothing is returned.
"""

from __future__ import annotations

__all__ = [
    "DePassError", "DePassTypeError", "DePassValueError", "UnsupportedModelError", "HookNotFoundError",
    "ModelStateError", "ForeignHookError", "CompletenessError",
]


class DePassError(Exception):
    """Base class of every error raised by depass_tl on bad input or unsupported configurations."""


class DePassTypeError(DePassError, TypeError):
    """An argument of a public function does not have the type or shape its annotation says."""


class DePassValueError(DePassError, ValueError):
    """An argument has the right type but a value depass_tl cannot use (a bad option, an unknown token...)."""


class UnsupportedModelError(DePassError):
    """The model (or one of its config fields) is not supported by the replay engine."""


class HookNotFoundError(DePassError, KeyError):
    """A hook name that a cache does not hold (also a ``KeyError``, so ``in`` and ``.get`` work)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelStateError(DePassError, ValueError):
    """The model is in a state no exact replay is possible from (training mode, meta weights, NaN/inf)."""


class ForeignHookError(DePassError):
    """Hooks attached before the call edit activations the replay recomputes; the message names them."""


class CompletenessError(DePassError):
    """The replayed components do not sum to the clean run within the dtype's tolerance (nothing returned)."""
