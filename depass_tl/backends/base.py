"""What a backend is: a predicate on model objects and what to do with the models it accepts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from depass_tl.model_view import ModelView

__all__ = ["Backend", "Method", "class_named"]

Method = Literal["depass", "decompx"]


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
            replay, reading the view) or ``"decompx"`` (:func:`depass_tl.decompx.run_decompx`).
        classes: ``(module, class name)`` pairs that get ``model.run_with_depass`` when depass_tl is
            imported (skipped when the installed TransformerLens lacks them).
        priority: backends are asked in decreasing priority; a generic predicate (duck typing) gets a
            low one so the specific ones are asked first.
    """

    name: str
    matches: Callable[[Any], bool]
    read_view: Callable[[Any], ModelView] | None
    method: Method = "depass"
    classes: tuple[tuple[str, str], ...] = ()
    priority: int = 0


def class_named(model: Any, name: str) -> bool:
    """True when ``name`` is the name of the model's class or one of its bases (no import of that class).

    Examples:
        >>> class TransformerBridge: ...
        >>> class Mine(TransformerBridge): ...
        >>> class_named(Mine(), "TransformerBridge"), class_named(3, "TransformerBridge")
        (True, False)
    """
    return any(cls.__name__ == name for cls in type(model).__mro__)
