"""The decomposed forward pass (DePass): replay additive components through a frozen model.

DePass (Hong et al., "DePass: Unified Feature Attributing by Simple Decomposed Forward Pass",
NeurIPS 2025) splits a hidden state into additive components ``x = Σ_c x_c`` and pushes every
component through the rest of the model with the nonlinear coefficients frozen at their clean-run
values: norm scales (:mod:`~depass_tl.replay.norm`), attention patterns
(:mod:`~depass_tl.replay.attention`) and MLP activations (:mod:`~depass_tl.replay.mlp`). Given those,
every later activation is a sum over components, exactly: constant terms (biases, norm offsets) are
collected in an explicit ``bias`` component, so nothing is left over.

The engine is pure tensor code. It reads a :class:`~depass_tl.coefficients.FrozenRun` and an
:class:`InitialState` and returns a dict hook name -> ``[component, batch, pos, d_model]``.

**Groups.** An initial state is one or more *groups* of ``K`` components; each group is a complete
partition of the residual stream (its last component is its own ``bias``) and may start at its own
hook (e.g. the heads of layer 3 and the heads of layer 7, in one replay). Groups never interact:
MLP allocation (softmax / max) competes within a group only, and constants go to every group's bias
component. Hooks are stored from the last group's start onwards, where every group is present.

**Sources.** With a :class:`SourcesPlan`, each module is credited with what it writes from the
*source* components (embeddings and constants): at every attention layer the source components'
output is moved, head by head, to that head's component, and at every MLP to the MLP's component,
while the output of earlier heads/MLPs stays with them (their indirect effect). Each path from the
input to the logits is thereby credited to the first head or MLP on it (or to its source if it
passes through none), so the components still sum exactly to the clean activations.

**Padding.** When the run has an attention mask, everything at a padded position is held by each
group's bias component (:func:`~depass_tl.replay.block.pad_to_bias`, applied to the initial
components and to every sublayer output): token components, including the pad tokens' own, are
exactly zero there, and since real positions never attend padded keys, pad tokens carry no
attribution anywhere. Completeness holds at every position.

Block variants (parallel attention/MLP, Gemma-2/3 post-norms, SoLU, MoE) live in
:mod:`~depass_tl.replay.block`; pattern-only features (rotary, ALiBi, shortformer, sliding windows,
soft-capped scores, qk-norm, attention sinks' extra softmax column) need nothing: the pattern is frozen.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from depass_tl.coefficients import FrozenRun
from depass_tl.errors import DePassError
from depass_tl.model_view import ModelView
from depass_tl.replay.block import attn_sublayer, mlp_sublayer, pad_to_bias
from depass_tl.replay.mlp import MLP_RULES
from depass_tl.replay.norm import apply_norm

__all__ = ["Group", "SourcesPlan", "InitialState", "replay_components", "parse_start_hook", "FINAL_HOOK"]

FINAL_HOOK = "unembed.hook_in"
_START = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")


@dataclass(frozen=True)
class Group:
    """Components ``[K, batch, pos, d_model]`` at ``start_hook``; the last one is the group's bias."""

    start_hook: str
    components: Tensor
    labels: tuple[str, ...]


@dataclass(frozen=True)
class SourcesPlan:
    """Where module outputs of the source components are credited (see the module docstring).

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
        assert all(g.components.shape[0] == len(g.labels) for g in self.groups)
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


def parse_start_hook(hook: str, view: ModelView) -> tuple[int, str]:
    """``(layer, stage)`` where the replay starts; stage is ``attn`` or ``mlp``.

    Raises:
        DePassError: not a residual-stream hook of this model.
    """
    m = _START.match(hook)
    if m is None:
        raise DePassError(
            f"start hook {hook!r} is not a residual-stream hook; use 'blocks.{{l}}.hook_resid_pre', "
            "'blocks.{l}.hook_resid_mid' or 'blocks.{l}.hook_resid_post'."
        )
    layer, where = int(m.group(1)), m.group(2)
    if layer >= view.n_layers:
        raise DePassError(f"start hook {hook!r}: the model has {view.n_layers} layers (0..{view.n_layers - 1}).")
    if where == "mid" and (view.blocks[layer].mlp is None or view.blocks[layer].parallel):
        raise DePassError(
            f"start hook {hook!r}: this model has no hook_resid_mid (attention-only blocks, or attention and "
            "MLP in parallel); start at hook_resid_pre or hook_resid_post."
        )
    if where == "pre":
        return layer, "attn"
    if where == "mid":
        return layer, "mlp"
    return layer + 1, "attn"


def _stage_index(layer: int, stage: str) -> int:
    return 2 * layer + (1 if stage == "mlp" else 0)


def replay_components(
    run: FrozenRun,
    init: InitialState,
    *,
    mlp_rule: str = "softmax",
    temperature: float = 0.1,
    dtype: torch.dtype = torch.float32,
    keep: Callable[[str], bool] = lambda name: True,
) -> dict[str, Tensor]:
    """Propagate the initial components block by block and return the decomposed activations.

    Args:
        run: the frozen clean run.
        init: the initial groups of components.
        mlp_rule: ``softmax`` | ``ratio`` | ``max`` (see :mod:`depass_tl.replay.mlp`).
        temperature: softmax temperature.
        dtype: the dtype the components are accumulated in.
        keep: which hook names to store (``unembed.hook_in`` is always stored).

    Returns:
        hook name -> ``[component, batch, pos, d_model]`` (components of all groups, in order).
    """
    if mlp_rule not in MLP_RULES:
        raise DePassError(f"unknown mlp_rule {mlp_rule!r}; choose one of {', '.join(MLP_RULES)}.")
    if not temperature > 0:
        raise DePassError(f"temperature must be > 0, got {temperature}.")
    view = run.view
    acts = run.to(dtype)
    w = _cast_view(view, dtype)
    K = init.group_size
    entries = sorted(
        ((_stage_index(*parse_start_hook(g.start_hook, view)), i) for i, g in enumerate(init.groups)),
    )
    if [i for _, i in entries] != list(range(len(init.groups))):
        raise DePassError("groups must be given in the order of their start hooks.")
    last_entry = entries[-1][0]
    out: dict[str, Tensor] = {}
    x: Tensor | None = None
    pending = list(init.groups)

    def store(name: str, value: Tensor) -> None:
        if name == FINAL_HOOK or keep(name):
            out[name] = value

    pad = run.pad

    def enter(stage_idx: int, x: Tensor | None) -> Tensor | None:
        while pending and _stage_index(*parse_start_hook(pending[0].start_hook, view)) == stage_idx:
            g = pending.pop(0)
            comps = pad_to_bias(g.components.to(dtype), pad, K)
            x = comps if x is None else torch.cat([x, comps], dim=0)
            if not pending:
                store(g.start_hook, x)
        return x

    first = entries[0][0]
    for l in range(first // 2, view.n_layers):
        block, p = w.blocks[l], f"blocks.{l}."
        for stage in ("attn", "mlp"):
            s = _stage_index(l, stage)
            if s < first or (stage == "mlp" and (block.mlp is None or block.parallel)):
                continue
            x = enter(s, x)
            assert x is not None
            bias_rows = torch.arange(K - 1, x.shape[0], K, device=x.device)
            plan = init.sources
            mlp_credit = None
            if plan is not None and plan.mlp_rows[l] is not None:
                mlp_credit = (plan.source_rows, plan.mlp_rows[l])
            mlp_kwargs = dict(rule=mlp_rule, temperature=temperature, bias_rows=bias_rows, group_size=K, credit=mlp_credit)
            if stage == "attn":
                if s > last_entry:  # at the entry stage the start hook itself was stored by enter()
                    store(p + "hook_resid_pre", x)
                credit = None if plan is None else (plan.source_rows, plan.head_rows[l])
                attn_out = pad_to_bias(attn_sublayer(x, block, acts, p, bias_rows, credit), pad, K)
                if block.parallel:  # the MLP reads resid_pre too; no resid_mid
                    mlp_out = pad_to_bias(mlp_sublayer(x, block, acts, p, **mlp_kwargs), pad, K)  # type: ignore[arg-type]
                    x = x + attn_out + mlp_out
                    if s >= last_entry:
                        store(p + "hook_attn_out", attn_out)
                        store(p + "hook_mlp_out", mlp_out)
                        store(p + "hook_resid_post", x)
                    continue
                x = x + attn_out
                if s >= last_entry:
                    store(p + "hook_attn_out", attn_out)
                    store(p + ("hook_resid_post" if block.mlp is None else "hook_resid_mid"), x)
            else:
                mlp_out = pad_to_bias(mlp_sublayer(x, block, acts, p, **mlp_kwargs), pad, K)  # type: ignore[arg-type]
                x = x + mlp_out
                if s >= last_entry:
                    store(p + "hook_mlp_out", mlp_out)
                    store(p + "hook_resid_post", x)
    if x is None or pending:  # every group starts after the last block: nothing to replay but the final norm
        x = enter(2 * view.n_layers, x)
    assert x is not None
    bias_rows = torch.arange(K - 1, x.shape[0], K, device=x.device)
    store(FINAL_HOOK, apply_norm(x, acts.get("ln_final.hook_scale"), w.ln_final, bias_rows))
    return out


def _cast_view(view: ModelView, dtype: torch.dtype) -> ModelView:
    """The view with every floating tensor in ``dtype`` (no copy when it already is)."""
    from dataclasses import fields, is_dataclass, replace

    def cast(obj):  # type: ignore[no-untyped-def]
        if isinstance(obj, Tensor):
            return obj.to(dtype) if obj.is_floating_point() else obj
        if isinstance(obj, tuple):
            return tuple(cast(o) for o in obj)
        if is_dataclass(obj) and not isinstance(obj, type):
            return replace(obj, **{f.name: cast(getattr(obj, f.name)) for f in fields(obj) if f.name != "dtype"})
        return obj

    return cast(view)
