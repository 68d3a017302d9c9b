"""The component-spec base class and helpers shared by every spec."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch
from torch import Tensor

from depass_tl.coefficients import FrozenRun
from depass_tl.errors import DePassError, DePassTypeError, DePassValueError
from depass_tl.replay.state import Group, InitialState

__all__ = [
    "ComponentSpec", "BIAS", "REST", "group_with_bias", "layers_arg", "layer_spec", "whole_numbers", "check_labels",
]

BIAS = "bias"
REST = "rest"


class ComponentSpec:
    """Base class of component specs: frozen dataclasses that build an initial state from a run.

    Subclasses implement :meth:`init` and, when they read hooks beyond the standard capture,
    :meth:`required_hooks`.
    """

    def required_hooks(self, n_layers: int) -> set[str]:
        """TL hooks beyond the standard capture that ``init`` reads (e.g. ``attn.hook_z``)."""
        return set()

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:  # pragma: no cover - interface
        raise NotImplementedError

    def check_captured(self, run: FrozenRun) -> None:
        """Raise a :class:`~depass_tl.errors.DePassValueError` if ``run`` lacks a hook ``init`` reads."""
        missing = sorted(self.required_hooks(run.view.n_layers) - set(run.acts))
        if missing:
            raise DePassValueError(
                f"this run was captured without {missing}, which these components read. Capture with "
                "depass_tl.capture(model, input, extra_hooks=components.required_hooks(model.cfg.n_layers)) "
                "(run_with_depass does this for you)."
            )


def group_with_bias(x: Tensor, labels: list[str], start_hook: str, bias: Tensor | None = None, *,
                    bias_label: str = BIAS) -> Group:
    """One group: components ``x`` ``[K-1, batch, pos, d_model]`` plus a bias component.

    The bias component starts at zero, or at ``bias`` (``[d_model]`` or ``[batch, pos, d_model]``,
    the constants already in the residual stream at ``start_hook``).
    """
    b = torch.zeros_like(x[:1]) if bias is None else bias.to(x).expand_as(x[0])[None].clone()
    return Group(start_hook, torch.cat([x, b], dim=0), tuple(labels) + (bias_label,))


def check_labels(labels: tuple[str, ...]) -> None:
    if BIAS in labels:
        raise DePassError(f"the label {BIAS!r} is reserved for the bias component; rename that component.")
    if len(set(labels)) != len(labels):
        raise DePassError(f"component labels must be unique; got {list(labels)}.")


def _whole(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def whole_numbers(values: object, what: str) -> tuple[int, ...]:
    """``values`` (an iterable of whole numbers, not bools or floats) as a tuple of ints.

    Raises:
        DePassTypeError: something else, named in the message with ``what``.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise DePassTypeError(f"{what} must be a list of whole numbers; got {values!r}.")
    out = tuple(values)
    bad = [v for v in out if not _whole(v)]
    if bad:
        raise DePassTypeError(f"{what} must be whole numbers; got {bad[0]!r} ({type(bad[0]).__name__}) in {list(out)!r}.")
    return tuple(int(v) for v in out)


def layer_spec(layer: object, what: str) -> int | tuple[int, ...] | None:
    """A factory's ``layer`` argument checked and frozen: None, an int, or a tuple of ints.

    Raises:
        DePassTypeError: a float, a bool, a string, or a list holding one.
    """
    if layer is None:
        return None
    if _whole(layer):
        return int(layer)  # type: ignore[call-overload]
    return whole_numbers(layer, f"{what}: layer")


def layers_arg(layer: int | Iterable[int] | None, n_layers: int, what: str) -> tuple[int, ...]:
    """Normalise a ``layer`` argument (an int, several, or None for all) to sorted layer indices."""
    if layer is None:
        layers = tuple(range(n_layers))
    elif isinstance(layer, int):
        layers = (layer,)
    else:
        layers = tuple(int(l) for l in layer)
    if not layers:
        raise DePassError(f"{what}: give at least one layer.")
    out = []
    for l in layers:
        if not -n_layers <= l < n_layers:
            raise DePassError(f"{what}: layer {l} is out of range for a model with {n_layers} layers.")
        out.append(l % n_layers)
    if len(set(out)) != len(out):
        raise DePassError(f"{what}: layers must be distinct, got {list(layers)}.")
    return tuple(sorted(out))


def multi_labels(labels: list[str], layer: int, several: bool) -> list[str]:
    """Prefix the shared labels (``rest`` ...) with the layer when several groups are replayed."""
    return [f"L{layer}.{lab}" if several and not lab.startswith(f"L{layer}") else lab for lab in labels]
