"""A stand-in for the few ``pytest`` names the CUDA test subset uses, for a GPU machine without pytest.

Only :mod:`scripts.run_cuda_tests` puts this folder on ``sys.path``, and only when the real pytest (or
the ``hypothesis`` that ``tests/conftest.py`` needs) does not import. Marks are recorded on the
function (``parametrize``, ``skipif``, ``skip``); the runner passes ``tmp_path`` and ``monkeypatch``;
everything else is what the tests call directly.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any


class SkipTest(Exception):
    """Raised by :func:`skip`."""


def skip(reason: str = "") -> None:
    raise SkipTest(reason)


def importorskip(name: str, reason: str | None = None) -> Any:
    try:
        return __import__(name)
    except ImportError as e:
        raise SkipTest(reason or f"no module {name}: {e}") from None


class _Mark:
    def __init__(self, name: str, args: tuple, kwargs: dict) -> None:
        self.name, self.args, self.kwargs = name, args, kwargs

    def __call__(self, fn: Any) -> Any:
        if isinstance(fn, type) or callable(fn):
            fn.__dict__.setdefault("_marks", []).insert(0, self)
        return fn


class _MarkFactory:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: _Mark(name, args, kwargs)


mark = _MarkFactory()


class _Param:
    def __init__(self, *values: Any, id: str | None = None, marks: Any = ()) -> None:  # noqa: A002
        self.values, self.id = values, id
        self.marks = list(marks) if isinstance(marks, (list, tuple)) else [marks]


def param(*values: Any, id: str | None = None, marks: Any = ()) -> _Param:  # noqa: A002
    return _Param(*values, id=id, marks=marks)


def fixture(*args: Any, **kwargs: Any) -> Any:
    if args and callable(args[0]):
        return args[0]
    return lambda fn: fn


@contextmanager
def raises(exc: Any, match: str | None = None):  # type: ignore[no-untyped-def]
    import re

    try:
        yield
    except exc as e:
        if match is not None and not re.search(match, str(e)):
            raise AssertionError(f"{type(e).__name__}({e!s}) does not match {match!r}") from e
        return
    raise AssertionError(f"DID NOT RAISE {exc}")


class approx:  # noqa: N801
    def __init__(self, expected: float, rel: float = 1e-6, abs: float = 1e-12) -> None:  # noqa: A002
        self.expected, self.rel, self.abs = expected, rel, abs

    def __eq__(self, other: object) -> bool:
        return math.isclose(float(other), self.expected, rel_tol=self.rel, abs_tol=self.abs)  # type: ignore[arg-type]


class MonkeyPatch:
    """``setattr`` / ``setitem`` / ``setenv`` / ``delenv``, all undone by :meth:`undo` (the runner calls it)."""

    _MISSING = object()

    def __init__(self) -> None:
        self._undo: list[Any] = []

    def setattr(self, target: Any, name: str, value: Any, raising: bool = True) -> None:
        old = getattr(target, name, self._MISSING)
        if old is self._MISSING and raising:
            raise AttributeError(f"{target!r} has no attribute {name!r}")
        self._undo.append(lambda: delattr(target, name) if old is self._MISSING else setattr(target, name, old))
        setattr(target, name, value)

    def setitem(self, d: Any, key: Any, value: Any) -> None:
        old = d.get(key, self._MISSING)
        self._undo.append(lambda: d.pop(key, None) if old is self._MISSING else d.__setitem__(key, old))
        d[key] = value

    def setenv(self, name: str, value: str) -> None:
        import os

        self.setitem(os.environ, name, str(value))

    def delenv(self, name: str, raising: bool = True) -> None:
        import os

        if name not in os.environ:
            if raising:
                raise KeyError(name)
            return
        old = os.environ[name]
        self._undo.append(lambda: os.environ.__setitem__(name, old))
        del os.environ[name]

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


class Config:  # annotations only
    pass


class Item:  # annotations only
    pass
