"""What a replay starts from and where it goes: groups, initial states, the schedule, stored hooks.

These are the engine's public seams. A component spec (:mod:`depass_tl.components`) builds an
:class:`InitialState` of one or more :class:`Group` s; the engine (:mod:`~depass_tl.replay.engine`)
replays it sublayer by sublayer in the order of :func:`schedule` and stores the hooks of
:func:`stored_hook_names`. Reverse mode (:mod:`~depass_tl.replay.reverse`) and the public
:func:`depass_tl.attribute` read the same functions, so the three agree on what a replay produces.

**Stages.** Every block has an attention stage and (unless it is attention-only, or its MLP runs in
parallel with attention) an MLP stage. Stage ``s`` of the model is ``2 * layer`` (attention) or
``2 * layer + 1`` (MLP): :func:`stage_index`. A group starting at ``blocks.l.hook_resid_pre`` enters
at stage ``2l``, at ``hook_resid_mid`` at ``2l + 1``, at ``hook_resid_post`` at ``2(l + 1)``
(:func:`parse_start_hook`).

Examples:
    >>> from depass_tl.replay.state import stage_index
    >>> stage_index(3, "attn"), stage_index(3, "mlp")
    (6, 7)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from depass_tl.errors import DePassError, DePassValueError
from depass_tl.model_view import ModelView

__all__ = [
    "FINAL_HOOK", "Stage", "Group", "DiagonalComponents", "SourcesPlan", "InitialState", "parse_start_hook", "stage_index", "schedule",
    "stored_hook_names",
]

FINAL_HOOK = "unembed.hook_in"
"""The last hook every replay stores: the final norm's output, which the unembedding reads."""

Stage = Literal["attn", "mlp"]
_START = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")


@dataclass(frozen=True)
class DiagonalComponents:
    """Components that each hold one position, stored without the dense ``[K, batch, pos, d_model]`` tensor.

    Component ``p < n_pos`` holds ``diag[:, p]`` at position ``p`` and zeros elsewhere (token components);
    the ``extra`` components ``[E, batch, pos, d_model]`` follow (e.g. a positional-embedding component and
    the bias component, last). The engine builds each chunk's rows from this directly
    (:meth:`rows_into`), so a token-level replay never holds the ``pos``-times larger dense tensor.
    """

    diag: Tensor  # [batch, pos, d_model]
    extra: Tensor  # [E, batch, pos, d_model], the bias component last

    @property
    def shape(self) -> tuple[int, int, int, int]:
        B, P, D = self.diag.shape
        return (P + self.extra.shape[0], B, P, D)

    @property
    def dtype(self) -> torch.dtype:
        return self.diag.dtype

    @property
    def nbytes(self) -> int:
        return self.diag.numel() * self.diag.element_size() + self.extra.numel() * self.extra.element_size()

    def to(self, dtype: torch.dtype) -> DiagonalComponents:
        return self if dtype == self.dtype else DiagonalComponents(self.diag.to(dtype), self.extra.to(dtype))

    def dense(self) -> Tensor:
        """The dense ``[K, batch, pos, d_model]`` tensor (``pos`` times the memory of this form)."""
        B, P, D = self.diag.shape
        eye = torch.eye(P, dtype=self.diag.dtype, device=self.diag.device)
        return torch.cat([eye[:, None, :, None] * self.diag[None], self.extra])

    def pad_to_bias(self, pad: Tensor | None) -> DiagonalComponents:
        """:func:`~depass_tl.replay.block.pad_to_bias` on this form: everything at padded positions to the bias."""
        if pad is None:
            return self
        at = pad[:, :, None].to(self.diag.device)
        total = self.diag + self.extra.sum(0)
        extra = torch.where(at[None], torch.zeros_like(self.extra), self.extra)
        extra[-1] = torch.where(at, total, extra[-1])
        return DiagonalComponents(torch.where(at, torch.zeros_like(self.diag), self.diag), extra)

    def starts(self) -> list[int]:
        """Per component, its first position with a nonzero value (``pos - 1`` for an all-zero one; bias 0)."""
        B, P, D = self.diag.shape
        nz = (self.diag != 0).any(2).any(0)  # [pos]
        extra = (self.extra[:-1] != 0).any(3).any(1)  # [E - 1, pos]
        first = torch.where(extra.any(1), extra.to(torch.int8).argmax(1), torch.full_like(extra[:, 0], P - 1, dtype=torch.long))
        diag = torch.where(nz, torch.arange(P, device=nz.device), torch.full((P,), P - 1, device=nz.device))
        return [int(v) for v in torch.cat([diag, first.long()]).tolist()] + [0]

    def rows_into(self, out: Tensor, a: int, lo: int) -> None:
        """Write components ``a ..`` (as many as ``out`` holds) from position ``lo`` on into zeroed ``out``."""
        n = out.shape[0]
        P = self.diag.shape[1]
        if max(a, lo) < min(a + n, P):
            k = torch.arange(max(a, lo), min(a + n, P), device=out.device)
            out[k - a, :, k - lo] = self.diag[:, k].transpose(0, 1).to(out.device)
        e0 = max(a, P)
        if e0 < a + n:
            out[e0 - a :] = self.extra[e0 - P : a + n - P, :, lo:].to(out.device)


class Group:
    """Components ``[K, batch, pos, d_model]`` at ``start_hook``; the last one is the group's bias.

    ``components`` may be given dense (a tensor) or as :class:`DiagonalComponents`; the attribute
    :attr:`components` is always the dense tensor (built on demand for the compact form), while the
    engine reads :attr:`source` without building it.
    """

    __slots__ = ("start_hook", "source", "labels")

    def __init__(self, start_hook: str, components: Tensor | DiagonalComponents, labels: tuple[str, ...]) -> None:
        object.__setattr__(self, "start_hook", start_hook)
        object.__setattr__(self, "source", components)
        object.__setattr__(self, "labels", tuple(labels))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Group is immutable")

    def __repr__(self) -> str:
        return f"Group({self.start_hook!r}, {type(self.source).__name__}{tuple(self.shape)}, {len(self.labels)} labels)"

    @property
    def components(self) -> Tensor:
        """The dense components ``[K, batch, pos, d_model]``."""
        return self.source.dense() if isinstance(self.source, DiagonalComponents) else self.source

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape)


@dataclass(frozen=True)
class SourcesPlan:
    """Where module outputs of the source components are credited (see :mod:`~depass_tl.replay.engine`).

    Attributes:
        source_rows: components whose module outputs are moved to the module (embeddings, bias).
        head_rows: ``head_rows[l][h]`` is the component of head h of layer l.
        mlp_rows: ``mlp_rows[l]`` is the component of the MLP of layer l (None for attn-only).
    """

    source_rows: tuple[int, ...]
    head_rows: tuple[tuple[int, ...], ...]
    mlp_rows: tuple[int | None, ...]


@dataclass(frozen=True)
class InitialState:
    """One or more groups of equal size, optionally with a sources plan (single group only)."""

    groups: tuple[Group, ...]
    sources: SourcesPlan | None = None

    def __post_init__(self) -> None:
        sizes = {len(g.labels) for g in self.groups}
        assert len(sizes) == 1, "all groups must have the same number of components"
        assert all(g.shape[0] == len(g.labels) for g in self.groups)
        assert self.sources is None or len(self.groups) == 1

    @property
    def group_size(self) -> int:
        return len(self.groups[0].labels)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for g in self.groups for label in g.labels)

    @property
    def bias_index(self) -> int:
        """The bias component of the first group (the only one for single-group specs)."""
        return self.group_size - 1

    def entry_stages(self, view: ModelView) -> list[int]:
        """Per group, the stage index where it enters the replay (:func:`stage_index`)."""
        return [stage_index(*parse_start_hook(g.start_hook, view)) for g in self.groups]

    def stored_hook_names(self, view: ModelView) -> list[str]:
        """Every hook a replay of this state can store, in order (``unembed.hook_in`` last)."""
        entries = self.entry_stages(view)
        return stored_hook_names(view, min(entries), max(entries), self.groups[-1].start_hook)


def parse_start_hook(hook: str, view: ModelView) -> tuple[int, Stage]:
    """``(layer, stage)`` where the replay starts; stage is ``attn`` or ``mlp``.

    Raises:
        DePassError: not a residual-stream hook of this model.
    """
    m = _START.match(hook)
    if m is None:
        raise DePassValueError(
            f"start hook {hook!r} is not a residual-stream hook; use 'blocks.{{l}}.hook_resid_pre', "
            "'blocks.{l}.hook_resid_mid' or 'blocks.{l}.hook_resid_post'."
        )
    layer, where = int(m.group(1)), m.group(2)
    if layer >= view.n_layers:
        raise DePassValueError(f"start hook {hook!r}: the model has {view.n_layers} layers (0..{view.n_layers - 1}).")
    if where == "mid" and (view.blocks[layer].mlp is None or view.blocks[layer].parallel):
        raise DePassValueError(
            f"start hook {hook!r}: this model has no hook_resid_mid (attention-only blocks, or attention and "
            "MLP in parallel); start at hook_resid_pre or hook_resid_post."
        )
    if where == "pre":
        return layer, "attn"
    if where == "mid":
        return layer, "mlp"
    return layer + 1, "attn"


def stage_index(layer: int, stage: Stage) -> int:
    """The position of a sublayer in the model: ``2 * layer`` (attention) or ``2 * layer + 1`` (MLP)."""
    return 2 * layer + (1 if stage == "mlp" else 0)


def schedule(view: ModelView, first: int) -> list[tuple[int, Stage]]:
    """The ``(layer, stage)`` sublayers replayed from stage index ``first`` on.

    A block without an MLP, or whose MLP runs in parallel with attention, has one stage (``attn``).
    """
    out: list[tuple[int, Stage]] = []
    for l in range(first // 2, view.n_layers):
        block = view.blocks[l]
        stages: tuple[Stage, ...] = ("attn", "mlp")
        for stage in stages:
            if stage_index(l, stage) < first or (stage == "mlp" and (block.mlp is None or block.parallel)):
                continue
            out.append((l, stage))
    return out


def stored_hook_names(view: ModelView, first: int, last_entry: int, last_start: str) -> list[str]:
    """Every hook name the replay can store, in order (``unembed.hook_in`` last).

    Args:
        view: the model's weights view.
        first: the stage index where the first group enters.
        last_entry: the stage index where the last group enters (hooks are stored from there on).
        last_start: the last group's start hook.
    """
    names = [last_start] if last_entry < 2 * view.n_layers else []
    for l, stage in schedule(view, first):
        s, p, block = stage_index(l, stage), f"blocks.{l}.", view.blocks[l]
        if s < last_entry:
            continue
        if stage == "attn":
            if s > last_entry:
                names.append(p + "hook_resid_pre")
            names.append(p + "hook_attn_out")
            if block.parallel:
                names += [p + "hook_mlp_out", p + "hook_resid_post"]
            else:
                names.append(p + ("hook_resid_post" if block.mlp is None else "hook_resid_mid"))
        else:
            names += [p + "hook_mlp_out", p + "hook_resid_post"]
    if last_entry == 2 * view.n_layers:
        names.append(last_start)
    return names + [FINAL_HOOK]
