"""What a model must be for an exact capture, and the lock that serialises captures of one model.

Checked before any work (:func:`check_model_state`): real weights (not on the ``meta`` device), all
finite (the scan is skipped while no parameter has changed since the last one found them finite:
PyTorch counts in-place changes in each tensor's version), and no module that behaves randomly in
training mode. Checked after the clean forward pass (:func:`check_finite`): no NaN or inf in the
logits or a captured activation (an overflow, or a hook that writes them).

**Training mode.** A module left in training mode is refused when it can make the clean run random:
a dropout module with ``p > 0``, or any module whose class is not TransformerLens's or a plain
``torch.nn`` layer (Hugging Face modules behind a ``TransformerBridge`` apply dropout in training
mode inside their ``forward``). ``HookedTransformer`` and TL's native Bridge have no dropout: built
from a config they start in training mode and compute exactly what they compute after
``model.eval()``, so they are accepted.

**Threads.** The replay is pure tensor code, but a capture runs the model with hooks attached, and
hooks are shared by every thread calling that model. :func:`model_lock` gives one re-entrant lock per
model object; :func:`depass_tl.capture` holds it while it reads the model, tokenises and runs the
forward pass, so concurrent calls on one model capture one after the other and replay in parallel.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import ModelStateError

__all__ = ["model_lock", "check_real_weights", "check_model_state", "check_finite"]

_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_SHARED_LOCK = threading.RLock()  # for model objects that cannot be weakly referenced
_FINITE: "weakref.WeakKeyDictionary[Any, tuple[tuple[int, int], ...]]" = weakref.WeakKeyDictionary()


def model_lock(model: Any) -> threading.RLock:
    """The re-entrant lock of ``model`` (one per model object, created on first use)."""
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(model)
            if lock is None:
                lock = _LOCKS[model] = threading.RLock()
        except TypeError:  # not hashable or not weakly referenceable
            lock = _SHARED_LOCK
    return lock


def _random_in_training(module: torch.nn.Module) -> str | None:
    """Why ``module`` (in training mode) can compute randomly, or None if it cannot."""
    if isinstance(module, torch.nn.modules.dropout._DropoutNd):
        return f"a {type(module).__name__} with p={module.p}" if module.p > 0 else None
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return f"a {type(module).__name__} (updates its statistics in training mode)"
    origin = type(module).__module__
    if origin.startswith(("transformer_lens.", "torch.nn.")) or origin == "transformer_lens":
        return None
    return f"a {type(module).__name__} from {origin.split('.')[0]}, whose forward may apply dropout in training mode"


def check_real_weights(model: Any) -> None:
    """Refuse a model with weights on the ``meta`` device (before anything reads them).

    Raises:
        ModelStateError: names a parameter, and says how to load weights.
    """
    if not isinstance(model, torch.nn.Module):
        return
    for name, p in model.named_parameters():
        if p.is_meta:
            raise ModelStateError(
                f"the model's weights are on the 'meta' device (e.g. {name}): they hold no values, so there is "
                "nothing to run. Load real weights first, e.g. model.to_empty(device='cpu') then "
                "model.load_state_dict(...), or build the model with from_pretrained / boot_transformers."
            )


def check_model_state(model: Any) -> None:
    """Refuse a model with NaN or inf weights, or a module that is random in training mode (after
    :func:`check_real_weights`).

    Raises:
        ModelStateError: says which parameter or module, and what to do.
    """
    if not isinstance(model, torch.nn.Module):
        return
    _check_finite_weights(model)
    for name, module in model.named_modules():
        if not module.training:
            continue
        why = _random_in_training(module)
        if why is not None:
            where = f"'{name}'" if name else "the model"
            raise ModelStateError(
                f"the model is in training mode: {where} is {why}, so the clean run is random and no decomposition "
                "can sum to it. Call model.eval() first."
            )


def _non_finite(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """The names of the floating tensors holding NaN or inf: one host sync for all of them when they are
    finite (:func:`all_finite`), one per tensor only to name the culprits."""
    named = [(name, t) for name, t in named if t.is_floating_point() and t.numel()]
    if all_finite([t for _, t in named]):
        return []
    return [name for name, t in named if not bool(torch.isfinite(t).all())]


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of every (floating, non-empty) tensor is finite.

    The largest magnitude of each tensor (NaN propagates), a few fused kernels per device and dtype
    (``torch._foreach_norm``), then one host sync per device: on a GPU, checking a model's hundred
    captured activations no longer costs a hundred synchronisations.
    """
    flags: dict[torch.device, list[Tensor]] = {}
    for _, norms in largest_magnitudes(t for t in tensors if t.is_floating_point() and t.numel()):
        flags.setdefault(norms.device, []).append(torch.isfinite(norms).all())
    return all(bool(torch.stack(fs).all()) for fs in flags.values())


def largest_magnitudes(tensors: Iterable[Tensor]) -> list[tuple[list[Tensor], Tensor]]:
    """``max |t|`` of every (non-empty, floating) tensor, NaN where it holds one, without a host sync:
    per device and dtype, the group's tensors and their maxima stacked on that device, a few fused
    kernels each (``torch._foreach_norm``). The batched checks (:func:`all_finite`, the zero-bias check
    of :func:`depass_tl.backends.common.zero_biases_known`) then synchronise once per group or device."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t.detach())
    return [(ts, torch.stack(torch._foreach_norm(ts, float("inf")))) for ts in groups.values()]


#: Parameters a model allocates but its forward never reads, per ``cfg.positional_embedding_type``:
#: TransformerLens's ``HookedTransformer`` allocates ``pos_embed.W_pos`` with ``torch.empty`` also for
#: rotary and ALiBi models (BLOOM), so it can hold NaN or inf garbage that means nothing.
_UNUSED_WHEN: dict[str, tuple[str, ...]] = {"rotary": ("pos_embed.W_pos",), "alibi": ("pos_embed.W_pos",)}


def _used_parameters(model: torch.nn.Module) -> list[tuple[str, Tensor]]:
    pos_type = getattr(getattr(model, "cfg", None), "positional_embedding_type", None)
    unused = _UNUSED_WHEN.get(pos_type, ()) if isinstance(pos_type, str) else ()
    return [(name, p) for name, p in model.named_parameters() if name not in unused]


def _check_finite_weights(model: torch.nn.Module) -> None:
    """Refuse NaN or inf in a parameter the forward reads; remember the parameters' versions once they are
    found finite."""
    params = _used_parameters(model)
    versions = tuple((p.data_ptr(), p._version) for _, p in params)
    try:
        with _LOCKS_GUARD:
            if _FINITE.get(model) == versions:
                return
    except TypeError:  # not weakly referenceable: scan every time
        pass
    bad = _non_finite(params)
    if bad:
        raise ModelStateError(
            f"the model's weights hold NaN or inf values (non-finite parameters: {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}); a decomposition of them means nothing. Fix or reload the weights "
            "(torch.isfinite(p).all() for p in model.parameters())."
        )
    try:
        with _LOCKS_GUARD:
            _FINITE[model] = versions
    except TypeError:
        pass


def check_finite(logits: Tensor, acts: dict[str, Tensor], order: list[str], model: torch.nn.Module | None = None) -> None:
    """Refuse a clean run with NaN or inf in its logits or any captured activation.

    Args:
        logits: the clean logits.
        acts: the captured activations.
        order: hook names in forward order (the message names the first non-finite one).
        model: the model that ran: its weights are scanned again before the run is blamed (a write through
            ``p.data`` does not change the version the weight check remembers).

    Raises:
        ModelStateError: names the non-finite parameters, or the first non-finite hook.
    """
    if all_finite([logits, *acts.values()]):
        return
    if model is not None:
        try:
            with _LOCKS_GUARD:
                _FINITE.pop(model, None)
        except TypeError:
            pass
        _check_finite_weights(model)
    bad = _non_finite((name, acts[name]) for name in order if name in acts)
    first = f"first at {bad[0]}" if bad else "in the logits"
    raise ModelStateError(
        f"the model's clean run has NaN or inf values ({first}) although its weights are finite: an activation "
        "overflowed (half precision? run the model in float32) or a hook wrote them (remove it). A decomposition "
        "of non-finite numbers means nothing."
    )
