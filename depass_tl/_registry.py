"""A small registry of named objects (MLP rules, backends): refuses duplicates, says what is registered."""

from __future__ import annotations

from typing import Generic, TypeVar

from depass_tl.errors import DePassError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one type by name, in registration order.

    Examples:
        >>> r = Registry("widget", int)
        >>> r.add("one", 1); r.names()
        ('one',)
        >>> r.add("one", 2)
        Traceback (most recent call last):
        ...
        depass_tl.errors.DePassError: widget 'one' is already registered; pass replace=True to replace it.
    """

    def __init__(self, kind: str, item_type: type[T]) -> None:
        self.kind = kind
        self.item_type = item_type
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> None:
        """Register ``item`` as ``name``.

        Raises:
            DePassError: the item has the wrong type, the name is empty, or it is taken and not ``replace``.
        """
        if not isinstance(item, self.item_type):
            raise DePassError(f"{self.kind}s must be {self.item_type.__name__} instances; got {type(item).__name__}.")
        if not name or not isinstance(name, str):
            raise DePassError(f"{self.kind}s need a non-empty string name; this {type(item).__name__} has {name!r}.")
        if name in self._items and not replace:
            raise DePassError(f"{self.kind} {name!r} is already registered; pass replace=True to replace it.")
        self._items[name] = item

    def remove(self, name: str) -> None:
        """Unregister ``name``.

        Raises:
            DePassError: nothing of that name is registered.
        """
        if name not in self._items:
            raise DePassError(f"no {self.kind} named {name!r} is registered; registered: {', '.join(self._items)}.")
        del self._items[name]

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def values(self) -> tuple[T, ...]:
        return tuple(self._items.values())
