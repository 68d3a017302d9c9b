"""Backends: how depass_tl reads each kind of model, behind one registry.

A backend (:class:`Backend`) pairs a predicate on model objects with what to do with a matching model:
a reader of its config and weights into a :class:`~depass_tl.model_view.ModelView` for the DePass
replay, the method :func:`depass_tl.run_with_depass` runs on it, and the TransformerLens classes that
get ``model.run_with_depass``. :func:`backend_for` asks the registered backends in decreasing
priority; :func:`read_model_view` (used by :func:`depass_tl.capture`), :func:`depass_tl.run_with_depass`
and :mod:`depass_tl.install` all go through it.

Built in, one module each: :mod:`~depass_tl.backends.bridge` (``TransformerBridge``, TL 3.x / 4.x, raw
or in compatibility mode), :mod:`~depass_tl.backends.hooked` (``HookedTransformer``, TL 2.x / 3.x), and
for DecompX (:func:`read_encoder`): :mod:`~depass_tl.backends.encoder` (``HookedEncoder``, TL 2.x /
3.x), :mod:`~depass_tl.backends.hf_bert` (transformers' BERT, any TL) and
:mod:`~depass_tl.backends.bert_bridge` (a ``TransformerBridge`` wrapping a BERT). Everything
downstream of the view (capture's hook names, the replay) is shared: the Bridge registers the
HookedTransformer hook names in both of its modes.

**A new backend is one file** in this package that defines a module-level ``BACKEND = Backend(...)``;
every module here is imported once, on first use, and its ``BACKEND`` registered (modules without
one, such as :mod:`~depass_tl.backends.common`, are helpers). At run time,
:func:`register_backend` adds one from anywhere. No backend imports a TransformerLens model class at
import time, so importing depass_tl never fails because a class is missing from the installed TL.

Examples:
    >>> from depass_tl.backends import backends
    >>> [b.name for b in backends()]
    ['TransformerBridge (BERT)', 'TransformerBridge', 'HookedEncoder', 'transformers', 'HookedTransformer']
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Any

from depass_tl._registry import Registry
from depass_tl.backends.base import Backend, EncoderSource, Method, class_named
from depass_tl.errors import DePassError, UnsupportedModelError
from depass_tl.model_view import ModelView

__all__ = [
    "Backend", "EncoderSource", "Method", "backends", "backend_for", "read_model_view", "read_encoder",
    "register_backend", "unregister_backend", "install_targets", "class_named", "get_act_name", "tl_version",
]

_REGISTRY: Registry[Backend] = Registry("backend", Backend)
_discovered = False
_DISCOVERY = threading.RLock()


def _discover() -> None:
    """Import every module of this package once and register its ``BACKEND`` (once, also from several threads)."""
    global _discovered
    if _discovered:
        return
    with _DISCOVERY:
        if _discovered:
            return
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            module = importlib.import_module(f"{__name__}.{info.name}")
            backend = getattr(module, "BACKEND", None)
            if isinstance(backend, Backend) and _REGISTRY.get(backend.name) is None:
                _REGISTRY.add(backend.name, backend)
        _discovered = True  # only now: another thread must not see a half-filled registry


def register_backend(backend: Backend, *, replace: bool = False) -> None:
    """Add a backend to the registry (``replace=True`` to replace one of the same name).

    Raises:
        DePassError: not a :class:`Backend`, or the name is taken.
    """
    _discover()
    _REGISTRY.add(getattr(backend, "name", ""), backend, replace=replace)


def unregister_backend(name: str) -> None:
    """Remove a registered backend.

    Raises:
        DePassError: no backend of that name.
    """
    _discover()
    _REGISTRY.remove(name)


def backends() -> tuple[Backend, ...]:
    """The registered backends, in the order they are asked (decreasing priority, then name)."""
    _discover()
    return tuple(sorted(_REGISTRY.values(), key=lambda b: (-b.priority, b.name)))


def backend_for(model: Any) -> Backend:
    """The backend that reads ``model``.

    Raises:
        DePassError: no backend accepts the object (names the supported model classes).
    """
    for backend in backends():
        if backend.matches(model):
            return backend
    raise DePassError(
        f"expected a transformer_lens.HookedTransformer, got {type(model).__name__} (a TransformerBridge "
        "works too). Load one with HookedTransformer.from_pretrained(...) (TL < 4) or "
        "TransformerBridge.boot_transformers(...) (TL >= 3), or build it from a HookedTransformerConfig."
    )


def read_model_view(model: Any) -> ModelView:
    """Read a model's config and weights into a :class:`~depass_tl.model_view.ModelView`.

    Args:
        model: a ``transformer_lens.HookedTransformer`` (TL 2.x / 3.x) or a
            ``transformer_lens.model_bridge.TransformerBridge`` (TL 3.x / 4.x, with or without
            ``enable_compatibility_mode()``), or a model of another registered backend.

    Returns:
        The view; its tensors share storage with the model (nothing is modified).

    Raises:
        DePassError: no backend reads the object, or its backend has no view for the DePass replay.
        UnsupportedModelError: a config feature the replay does not handle.
    """
    backend = backend_for(model)
    if backend.read_view is None:
        raise DePassError(
            f"a {backend.name} is not replayed by DePass's decoder replay (it runs {backend.method}); call "
            "depass_tl.run_with_depass on it, which dispatches to that method."
        )
    return backend.read_view(model)


def read_encoder(model: Any) -> EncoderSource:
    """Read an encoder for DecompX: weights, where its clean tensors are, how to run it.

    Args:
        model: transformers' ``BertForSequenceClassification`` / ``BertForMaskedLM``, a
            ``TransformerBridge`` wrapping a BERT, a ``transformer_lens.HookedEncoder``, or a model of
            another registered encoder backend.

    Raises:
        UnsupportedModelError: no encoder backend reads the object, or its backend refuses it (the
            message names what is supported).
    """
    backend = next((b for b in backends() if b.matches(model)), None)
    if backend is None or backend.read_encoder is None:
        raise UnsupportedModelError(
            "DecompX needs a BERT encoder: transformers' BertForSequenceClassification / BertForMaskedLM, a "
            "TransformerBridge wrapping a BertForMaskedLM, or a transformer_lens.HookedEncoder (TL < 4); got "
            f"{type(model).__name__} (installed TransformerLens: {tl_version()}). For decoder models use "
            "depass_tl.run_with_depass."
        )
    return backend.read_encoder(model)


def install_targets() -> tuple[tuple[str, str], ...]:
    """The ``(module, class)`` pairs that get ``run_with_depass``, from the least to the most specific backend."""
    return tuple(target for b in reversed(backends()) for target in b.classes)


def tl_version() -> str:
    """The installed TransformerLens version string (``"not installed"`` if it is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("transformer-lens", "transformer_lens"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "not installed"


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """TL's ``get_act_name`` (``("resid_post", 3)`` -> ``blocks.3.hook_resid_post``) on every TL version.

    It is ``transformer_lens.utilities.get_act_name`` on TL 3.x / 4.x (TL 4 removed ``transformer_lens.utils``)
    and ``transformer_lens.utils.get_act_name`` on TL 2.x.
    """
    try:
        from transformer_lens.utilities import get_act_name as tl_get_act_name
    except ImportError:  # TL 2.x
        from transformer_lens.utils import get_act_name as tl_get_act_name  # type: ignore[no-redef]
    return tl_get_act_name(name, layer, layer_type)
