"""The completeness guard: every replay's components sum to the clean run, or the user is told.

After each replay, :func:`check_replay` sums the components of every group at every stored hook and
at the logits (each prompt's last real position, whole vocabulary) and compares the sums with what
the model computed in the clean run. A sum that misses by more than the tolerance raises a
:class:`~depass_tl.errors.CompletenessError` naming the hook, the size of the miss and the likely
cause; nothing is returned. The errors it measured are kept on the result
(:attr:`depass_tl.DePassCache.completeness`).

**Tolerance.** The error is measured relative to the largest clean magnitude at that hook
(``max |Σ_group components − clean| / max |clean|``), and the tolerance depends only on the dtypes
involved and the precision mode, in one place, :func:`completeness_rtol`: the largest of the entries of
:data:`RTOL_BY_DTYPE` for the accumulation dtype and for the model's dtype (a half-precision model's
clean run carries its own rounding, which no replay reproduces), and of :data:`RTOL_BY_PRECISION` for
the precision mode. Each entry is 6x (half precision) to 60x (float32) the largest error seen on valid
12-layer runs (docs/reliability.md lists the measurements), and far below what a wrong replay misses
by (a foreign hook, dropout, a wrong frozen coefficient: 0.09 to 1 relative).

**Cost.** One pass over the stored tensors (a sum over components) plus ``[batch, d_model] x
[d_model, d_vocab]`` for the logits: 1.2 to 1.7 % of the replay for the GPT-2-small shape at 128
tokens with every hook stored, 0.07 % with only ``unembed.hook_in`` (docs/reliability.md).

Examples:
    >>> import torch
    >>> completeness_rtol(torch.float32, torch.float32), completeness_rtol(torch.float32, torch.bfloat16)
    (0.0001, 0.08)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor

from depass_tl.errors import CompletenessError, DePassValueError

__all__ = [
    "RTOL_BY_DTYPE", "RTOL_BY_PRECISION", "Completeness", "completeness_rtol", "tolerance", "group_error",
    "check_replay", "check_values", "likely_causes",
]

#: Relative tolerance per dtype (the accumulation dtype and the model's dtype both count).
RTOL_BY_DTYPE: dict[torch.dtype, float] = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 8e-2,
}

#: Extra relative tolerance per precision mode (``"exact"``: none). A mode that computes in reduced
#: precision (TF32 / bf16 matmuls) adds its entry here.
#: ``"fast"``: TF32 matmul inputs (2**-11 relative rounding per product; measured about 3e-4 relative at
#: 1024 tokens of a GPT-2-small shape on an H200, see :mod:`depass_tl.precision`).
#: ``"tf32x3"``: none either; its replays are as accurate as IEEE float32 ones (each elementwise product
#: within ``5 * 2**-22`` of itself, :mod:`depass_tl.replay.matmul`).
RTOL_BY_PRECISION: dict[str, float] = {"exact": 0.0, "tf32x3": 0.0, "fast": 1e-2}


def completeness_rtol(dtype: torch.dtype, model_dtype: torch.dtype, precision: str = "exact") -> float:
    """The relative tolerance of the completeness guard for components accumulated in ``dtype``.

    Args:
        dtype: the accumulation dtype of the replay.
        model_dtype: the dtype the model ran the clean forward pass in.
        precision: the precision mode (a key of :data:`RTOL_BY_PRECISION`).

    Raises:
        DePassValueError: an unknown precision mode, or a dtype without an entry (not floating point).
    """
    if precision not in RTOL_BY_PRECISION:
        raise DePassValueError(f"precision must be one of {', '.join(map(repr, RTOL_BY_PRECISION))}; got {precision!r}.")
    missing = [d for d in (dtype, model_dtype) if d not in RTOL_BY_DTYPE]
    if missing:
        raise DePassValueError(
            f"no completeness tolerance for {missing[0]}; use one of {', '.join(map(str, RTOL_BY_DTYPE))}."
        )
    return max(RTOL_BY_DTYPE[dtype], RTOL_BY_DTYPE[model_dtype], RTOL_BY_PRECISION[precision])


def tolerance(dtype: torch.dtype, model_dtype: torch.dtype, precision: str = "exact", *,
              of: str = "components") -> tuple[float, str]:
    """``(rtol, what it is for)``: :func:`completeness_rtol` and the phrase error messages show, e.g.
    ``"float32 components of a bfloat16 model"``."""
    names = [str(d).replace("torch.", "") for d in (dtype, model_dtype)]
    mode = "" if precision == "exact" else f", precision={precision!r}"
    return completeness_rtol(dtype, model_dtype, precision), f"{names[0]} {of} of a {names[1]} model{mode}"


@dataclass(frozen=True)
class Completeness:
    """What the guard measured after a replay.

    Attributes:
        errors: per stored hook, and ``"logits"``, ``max |Σ_group components − clean| / max |clean|``.
        rtol: the tolerance every entry was checked against (:func:`completeness_rtol`).
    """

    errors: Mapping[str, float] = field(default_factory=dict)
    rtol: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "errors", MappingProxyType(dict(self.errors)))

    @property
    def worst(self) -> tuple[str, float]:
        """``(hook, relative error)`` of the largest error (``("", 0.0)`` when nothing was checked)."""
        return max(self.errors.items(), key=lambda kv: kv[1], default=("", 0.0))

    def __repr__(self) -> str:
        hook, err = self.worst
        return f"Completeness(worst {err:.2e} at {hook!r}, rtol {self.rtol:.0e}, {len(self.errors)} checks)"


def group_error(components: Tensor, clean: Tensor, group_size: int) -> tuple[float, float]:
    """``(max |Σ_group components − clean|, max |clean|)``; components ``[group * group_size, *clean.shape]``.

    Each consecutive run of ``group_size`` components is one full partition and is summed on its own.
    NaN anywhere gives a NaN error.
    """
    K = group_size
    total = components.reshape(components.shape[0] // K, K, *components.shape[1:]).sum(1)
    miss = (total - clean.to(device=total.device, dtype=total.dtype)).abs().amax()
    if bool(torch.isnan(total).any()):
        miss = miss.new_tensor(float("nan"))
    scale = clean.abs().amax() if clean.numel() else clean.new_zeros(())
    return float(miss), float(scale)


def likely_causes(foreign_hooks: Sequence[str]) -> str:
    """The likely causes of a completeness violation, most likely first, for the error message."""
    causes = []
    if foreign_hooks:
        shown = ", ".join(foreign_hooks[:4]) + (" ..." if len(foreign_hooks) > 4 else "")
        causes.append(
            f"hooks attached to the model before the call ({shown}) change what the clean run computes in a way "
            "the replay does not follow: remove them (model.reset_hooks()) or see docs/reliability.md"
        )
    causes.append(
        "a PyTorch hook on one of the model's modules (module.register_forward_hook) changes an output outside "
        "TransformerLens's hook points: remove it"
    )
    causes.append(
        "nondeterminism: the model does not compute the same thing twice (dropout in a module left in training "
        "mode, a random or stateful custom module, a nondeterministic kernel)"
    )
    causes.append(
        "a model whose hooks do not mean what TransformerLens's names say (a custom module or TransformerLens "
        "version depass_tl does not know): please report it with the model's config"
    )
    return "; or ".join(causes)


def _verdict(
    errors: dict[str, tuple[float, float]], rtol: float, where: str, foreign_hooks: Sequence[str], how: str,
    scale_name: str = "max |clean|",
) -> Completeness:
    relative = {}
    for name, (miss, scale) in errors.items():
        relative[name] = miss / scale if scale > 0 else miss
    bad = [name for name, err in relative.items() if not err <= rtol]  # NaN is bad
    if bad:
        name = max(bad, key=lambda n: (relative[n] != relative[n], relative[n]))  # NaN first, then the largest
        miss, scale = errors[name]
        raise CompletenessError(
            f"the {where} does not sum to the clean run: at {name} the components miss by {miss:.3g} "
            f"({relative[name]:.2g} of {scale_name} = {scale:.3g}; the tolerance is {rtol:.0e} for {how}). "
            f"{len(bad)} of {len(errors)} checks fail. Likely cause: {likely_causes(foreign_hooks)}. "
            "Nothing was returned."
        )
    return Completeness(relative, rtol)


def check_replay(
    acts: Mapping[str, Tensor],
    clean: Mapping[str, Tensor],
    group_size: int,
    *,
    logits: tuple[Tensor, Tensor] | None,
    rtol: float,
    how: str,
    foreign_hooks: Sequence[str] = (),
) -> Completeness:
    """Check every stored hook (and the logits) of a forward replay; raise if a sum misses.

    Args:
        acts: hook name -> ``[component, batch, pos, d_model]``.
        clean: hook name -> the clean ``[batch, pos, d_model]`` (same keys).
        group_size: components per group.
        logits: ``(Σ_group logits [group, batch, d_vocab], clean logits [batch, d_vocab])`` or None.
        rtol: the relative tolerance (:func:`completeness_rtol`).
        how: what the tolerance is for, for the message (e.g. ``"float32 components of a float32 model"``).
        foreign_hooks: hooks the user had attached (named as a likely cause).

    Returns:
        The measured :class:`Completeness`.

    Raises:
        CompletenessError: a sum misses by more than ``rtol`` relative, or is NaN.
    """
    errors = {name: group_error(v, clean[name], group_size) for name, v in acts.items()}
    if logits is not None:
        summed, target = logits
        errors["logits"] = group_error(summed, target, 1)
    return _verdict(errors, rtol, "decomposition", foreign_hooks, how)


def check_values(
    values: Tensor, target: Tensor, group_size: int, *, rtol: float, how: str, foreign_hooks: Sequence[str] = (),
    name: str = "target",
) -> Completeness:
    """Check scalar attributions ``values [component, batch, ...]`` against ``target [batch, ...]``.

    The scale is the largest sum of absolute shares of one group and prompt (the size of the numbers
    being added up), so a target near zero made of large opposite shares is judged by the shares' size.

    Raises:
        CompletenessError: a group's sum misses by more than ``rtol`` of that scale, or is NaN.
    """
    K = group_size
    grouped = values.reshape(values.shape[0] // K, K, *values.shape[1:])
    miss, _ = group_error(values, target, K)
    scale = float(torch.maximum(grouped.abs().sum(1), target.abs().to(grouped.dtype)).amax()) if values.numel() else 0.0
    return _verdict({name: (miss, scale)}, rtol, "attribution", foreign_hooks, how, "the size of the shares")
