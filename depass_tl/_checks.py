"""Runtime checks of the public entry points' annotations (jaxtyping shapes, beartype types).

:func:`checked` wraps a public function so that, on every call, each argument is checked against its
annotation (beartype's :func:`~beartype.door.is_bearable`; jaxtyping shapes such as
``Int[Tensor, "batch pos"]`` bind their dimensions across all arguments and the return value of one
call), before the function runs. A wrong argument raises :class:`~depass_tl.errors.DePassTypeError`
(a :class:`~depass_tl.errors.DePassError` and a ``TypeError``) naming the parameter, what was passed
and what is expected; ``hints`` give parameters a house-style message of their own. A return value
that does not match its annotation is a bug in depass_tl and raises ``TypeError``.

Only the entry points are checked (``run_with_depass``, ``replay``, ``capture``, ``attribute``,
``attribute_run``, ``compare``): about 0.1 ms per call (130 µs for ``run_with_depass``'s 15
arguments, measured on a busy 2-core machine), against 50 ms for the smallest ``run_with_depass``
(2 layers, 4 tokens) and seconds for real ones; the replay's inner kernels, called per block and per
chunk, are not checked.
"""

from __future__ import annotations

import functools
import inspect
import random
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from beartype import BeartypeConf
from beartype.door import is_bearable
from jaxtyping import jaxtyped

from depass_tl.errors import DePassTypeError, DePassValueError

__all__ = ["checked", "describe", "check_device"]

F = TypeVar("F", bound=Callable[..., Any])
_CONF = BeartypeConf(is_pep484_tower=True)  # an int is accepted where a float is expected


def describe(value: Any) -> str:
    """A short description of a value for error messages: type, and dtype/shape for tensors.

    Examples:
        >>> import torch
        >>> describe(torch.zeros(2, 3)), describe("abc"), describe(None)
        ('a torch.float32 tensor of shape (2, 3)', "str 'abc'", 'None')
    """
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"a {dtype} tensor of shape {tuple(shape)}"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return f"str {value[:40]!r}"
    return type(value).__name__


def _readable(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if isinstance(hint, type) else None
    return text or str(hint).replace("typing.", "").replace("collections.abc.", "").replace("torch.", "")


def _bearable(value: Any, hint: Any) -> bool:
    """``is_bearable`` without touching Python's global ``random`` state: beartype checks one item of a
    container drawn with ``random.getrandbits``, which would shift a caller's seeded sequence."""
    state = random.getstate()
    try:
        return is_bearable(value, hint, conf=_CONF)
    finally:
        random.setstate(state)


def checked(*, hints: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Check a public function's arguments (and return value) against its annotations on every call.

    Args:
        hints: per parameter, the start of the message for a wrong value (``"; got <what>."`` follows).

    Examples:
        >>> import torch
        >>> from jaxtyping import Int
        >>> from torch import Tensor
        >>> @checked(hints={"k": "k must be a whole number of components"})
        ... def pick(tokens: Int[Tensor, "batch pos"], k: int) -> Int[Tensor, "batch"]:
        ...     return tokens[:, k]
        >>> pick(torch.zeros(2, 3, dtype=torch.long), 1).shape
        torch.Size([2])
        >>> pick(torch.zeros(2, 3), 1)
        Traceback (most recent call last):
        ...
        depass_tl.errors.DePassTypeError: pick(): tokens must be Int[Tensor, 'batch pos']; got a torch.float32 tensor of shape (2, 3).
        >>> pick(torch.zeros(2, 3, dtype=torch.long), "1")
        Traceback (most recent call last):
        ...
        depass_tl.errors.DePassTypeError: k must be a whole number of components; got str '1'.
    """
    messages = dict(hints or {})

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        unknown = set(messages) - set(signature.parameters)
        assert not unknown, f"hints for parameters {fn.__name__} does not have: {unknown}"
        resolved: list[dict[str, Any]] = []

        def annotations() -> dict[str, Any]:
            if not resolved:  # resolve the (string) annotations once, at the first call
                hints = typing.get_type_hints(fn)
                hints.setdefault("return", Any)
                resolved.append(hints)  # complete before another thread can see it
            return resolved[0]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            types = annotations()
            bound = signature.bind(*args, **kwargs)  # a wrong number of arguments: Python's TypeError
            with jaxtyped("context"):  # type: ignore[arg-type]  # one dimension memo per call
                for name, value in bound.arguments.items():
                    hint = types.get(name, Any)
                    kind = signature.parameters[name].kind
                    if hint is Any or kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                        continue
                    if not _bearable(value, hint):
                        start = messages.get(name, f"{fn.__name__}(): {name} must be {_readable(hint)}")
                        raise DePassTypeError(f"{start}; got {describe(value)}.")
                result = fn(*args, **kwargs)
                if types["return"] is not Any and not _bearable(result, types["return"]):
                    raise TypeError(
                        f"depass_tl bug: {fn.__name__}() returned {describe(result)}, not {_readable(types['return'])}."
                    )
            return result

        return typing.cast(F, wrapper)

    return decorate


def check_device(device: Any) -> Any:
    """A ``torch.device`` for ``device`` (a string or device) that exists on this machine.

    Raises:
        DePassTypeError: not a string or ``torch.device``.
        DePassValueError: not a device name, or a device this machine does not have.

    Examples:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("bogus")
        Traceback (most recent call last):
        ...
        depass_tl.errors.DePassValueError: 'bogus' is not a torch device; use e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'.
    """
    import torch

    if not isinstance(device, (str, torch.device)):
        raise DePassTypeError(f"a device must be a string such as 'cpu' or 'cuda', or a torch.device; got {describe(device)}.")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DePassValueError(f"{device!r} is not a torch device; use e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DePassValueError(
                f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); use 'cpu'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DePassValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1})."
            )
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DePassValueError(f"device {device!r}: MPS is not available on this machine; use 'cpu'.")
    elif dev.type == "meta":
        raise DePassValueError("the 'meta' device holds no values; use 'cpu' or a GPU.")
    elif dev.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as e:
            raise DePassValueError(f"device {device!r} is not usable here ({type(e).__name__}: {e}).") from None
    return dev
