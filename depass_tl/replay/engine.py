"""The decomposed forward pass (DePass): replay additive components through a frozen model.

DePass (Hong et al., "DePass: Unified Feature Attributing by Simple Decomposed Forward Pass",
NeurIPS 2025) splits a hidden state into additive components ``x = Σ_c x_c`` and pushes every
component through the rest of the model with the nonlinear coefficients frozen at their clean-run
values: norm scales (:mod:`~depass_tl.replay.norm`), attention patterns
(:mod:`~depass_tl.replay.attention`) and MLP activations (:mod:`~depass_tl.replay.mlp`). Given those,
every later activation is a sum over components, exactly: constant terms (biases, norm offsets) are
collected in an explicit ``bias`` component, so nothing is left over.

The engine is pure tensor code. It reads a :class:`~depass_tl.coefficients.FrozenRun` and an
:class:`~depass_tl.replay.state.InitialState` and returns a dict hook name -> ``[component, batch, pos,
d_model]``. It only drives the replay: the order of the sublayers (:func:`~depass_tl.replay.state.schedule`),
the chunks (:mod:`~depass_tl.replay.plan`), the device of each block; the per-block step lives in
:mod:`~depass_tl.replay.block` and the MLP allocation rules in :mod:`~depass_tl.replay.rules`.

**Groups.** An initial state is one or more *groups* of ``K`` components; each group is a complete
partition of the residual stream (its last component is its own ``bias``) and may start at its own
hook (e.g. the heads of layer 3 and the heads of layer 7, in one replay). Groups never interact:
MLP allocation (softmax / max) competes within a group only, and constants go to every group's bias
component. Hooks are stored from the last group's start onwards, where every group is present.

**Sources.** With a :class:`~depass_tl.replay.state.SourcesPlan`, each module is credited with what it writes from the
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

**Chunks, causal skipping, devices.** The components are processed in chunks (consecutive components
of one group, :mod:`~depass_tl.replay.plan`), all chunks through a sublayer before the next. The
competitive MLP rules (``softmax`` / ``max``), whose shares span every component of a group, take two
passes per MLP layer: the first folds each chunk's keys into per-group statistics (max and sum of
exponentials, or the best key and its index; :class:`~depass_tl.replay.rules.RuleStats`), the second
allocates; padding moves are summed per group and settled after each sublayer. So chunking never
changes the numbers beyond float rounding, and a memory budget (``max_memory``) only decides the
chunk sizes. A chunk whose components are exactly zero before position ``lo`` (token components) is
held and computed from ``lo`` on while the attention patterns are causal (checked per layer; a
non-causal pattern widens every chunk back to all positions). Each block runs on the device of its
weights (:mod:`~depass_tl.replay.device`), and its weights are laid out once per replay
(:class:`~depass_tl.replay.attention.PreparedAttn`).

Block variants (parallel attention/MLP, Gemma-2/3 post-norms, SoLU, MoE) live in
:mod:`~depass_tl.replay.block`; pattern-only features (rotary, ALiBi, shortformer, sliding windows,
soft-capped scores, qk-norm, attention sinks' extra softmax column) need nothing: the pattern is frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from depass_tl.coefficients import FrozenRun
from depass_tl.errors import DePassError
from depass_tl.model_view import MoEView
from depass_tl.replay.attention import PreparedAttn
from depass_tl.replay.block import BlockStep, Chunk, Outputs, attn_step, mlp_step, pad_to_bias
from depass_tl.replay.device import block_device, block_tensors, norm_device
from depass_tl.replay.norm import apply_norm
from depass_tl.replay.plan import plan_chunks, row_starts
from depass_tl.replay.rules import DEFAULT_TEMPERATURE, RuleLike, get_rule
from depass_tl.replay.shard import Shard
from depass_tl.replay.state import FINAL_HOOK, InitialState, schedule, stage_index

__all__ = ["replay_components"]


def replay_components(
    run: FrozenRun,
    init: InitialState,
    *,
    mlp_rule: RuleLike = "softmax",
    temperature: float = DEFAULT_TEMPERATURE,
    dtype: torch.dtype = torch.float32,
    keep: Callable[[str], bool] = lambda name: True,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    causal_skip: bool = True,
    shard: Shard | None = None,
) -> dict[str, Tensor]:
    """Propagate the initial components block by block and return the decomposed activations.

    The components are processed in chunks (consecutive components of one group), all chunks through
    a sublayer before the next; a competitive MLP rule's shares, which span every component of a
    group, take two passes over the chunks (:func:`~depass_tl.replay.block.mlp_step`). Chunking never
    changes the result beyond float rounding. With ``causal_skip`` a chunk whose components are exactly
    zero before position ``lo`` (token components) is only computed from ``lo`` on, as long as the
    attention patterns are causal (checked per layer). Each block runs on its weights' device.

    Args:
        run: the frozen clean run.
        init: the initial groups of components.
        mlp_rule: a rule object or a registered name (:mod:`depass_tl.replay.rules`).
        temperature: softmax temperature, for a rule given by name.
        dtype: the dtype the components are accumulated in.
        keep: which hook names to store (``unembed.hook_in`` is always stored).
        chunk_size: at most this many components per chunk (the bias components get their own).
        max_memory: bytes the replay may allocate (see :mod:`depass_tl.replay.plan`); chunks are sized
            to fit, or a :class:`DePassError` says what to drop.
        causal_skip: skip the positions a chunk cannot reach (exact; off only for testing).
        shard: replay only this rank's chunks and reduce the rule statistics and padding moves across
            ranks (:mod:`~depass_tl.replay.shard`); every stored hook then holds this rank's rows and
            zeros elsewhere. None: one process.

    Returns:
        hook name -> ``[component, batch, pos, d_model]`` (components of all groups, in order).
    """
    rule = get_rule(mlp_rule, temperature=temperature)
    view = run.view
    K, G = init.group_size, len(init.groups)
    B, P, D = run.batch, run.n_pos, view.d_model
    entries = init.entry_stages(view)
    if entries != sorted(entries):
        raise DePassError("groups must be given in the order of their start hooks.")
    first, last_entry = entries[0], entries[-1]
    has_moe = any(isinstance(b.mlp, MoEView) for b in view.blocks)
    splittable = init.sources is None and not (has_moe and not rule.linear)
    why_not = "sources() credits module outputs across components" if init.sources is not None else (
        f"mixture-of-experts layers under the competitive rule {rule.name!r}"
    )
    comps: list[Tensor | None] = [
        pad_to_bias(g.components.to(dtype), None if run.pad is None else run.pad.to(g.components.device), K)
        for g in init.groups
    ]
    causal = causal_skip and init.sources is None and not has_moe
    starts = [row_starts(c, causal) for c in comps if c is not None]
    names = [n for n in init.stored_hook_names(view) if n == FINAL_HOOK or keep(n)]
    if shard is not None and splittable and chunk_size is None and max_memory is None:
        chunk_size = shard.chunk_rows(K - 1)
    plan = plan_chunks(
        view, starts, batch=B, n_pos=P, itemsize=torch.finfo(dtype).bits // 8, rule=rule,
        n_stored=len(names), chunk_size=chunk_size, max_memory=max_memory, splittable=splittable, why_not=why_not,
    )
    owned = [True] * len(plan.chunks) if shard is None else shard.owns(plan.chunks, P)
    mine = {c for c, own in zip(plan.chunks, owned) if own}
    dev = init.groups[0].components.device  # then each block's (a split model's blocks may differ)
    out = Outputs(set(names), (K * G, B, P, D), G, run.pad, dtype=dtype, device=dev)
    active: list[Chunk] = []
    pending = list(range(G))

    def enter(stage: int) -> None:
        """Start the groups that enter at ``stage`` (as chunks); store the last group's start hook."""
        while pending and entries[pending[0]] == stage:
            g = pending.pop(0)
            x = comps[g]
            assert x is not None
            for a, b, lo in plan.of_group(g):
                if (g, a, b, lo) not in mine:
                    continue
                active.append(Chunk(g, a, b, lo, K, x[a:b, :, lo:].to(dev, copy=True)))
            comps[g] = None
            if not pending:
                out.store_state(init.groups[g].start_hook, active)

    step: BlockStep | None = None
    for l, stage in schedule(view, first):
        s, block = stage_index(l, stage), view.blocks[l]
        dev = block_device(block)
        if step is None or step.layer != l:
            w = _cast_view(block, dtype)
            step = BlockStep(l, w, PreparedAttn.build(w.attn), block_tensors(run.acts, f"blocks.{l}.", dtype, dev),
                             rule, plan.cache_keys, K, init.sources, shard)
            out.to(dev)
        for ch in active:  # to this block's device before new groups join (their state is stored with them)
            ch.x = ch.x.to(dev)
        enter(s)
        if stage == "attn":
            causal = attn_step(active, step, out, causal, store_pre=s > last_entry, store_after=s >= last_entry)
        else:
            mlp_step(active, step, out, store_after=s >= last_entry)
    if pending:  # groups that start after the last block: nothing to replay but the final norm
        enter(2 * view.n_layers)
    out.acts[FINAL_HOOK] = _final_norm(run, active, (K * G, B, P, D), dtype, dev)
    return out.acts


def _final_norm(run: FrozenRun, chunks: list[Chunk], shape: tuple[int, int, int, int], dtype: torch.dtype,
                device: torch.device) -> Tensor:
    """``ln_final`` with its frozen scale on every chunk: the decomposed ``unembed.hook_in``."""
    dev = norm_device(run.view.ln_final, chunks[0].x.device if chunks else device)
    ln_final = _cast_view(run.view.ln_final, dtype)
    scale = run.acts.get("ln_final.hook_scale")
    scale = None if scale is None else scale.to(device=dev, dtype=dtype)
    final = None if chunks else torch.zeros(shape, dtype=dtype, device=dev)  # a rank holding no chunk
    for ch in chunks:
        y = apply_norm(ch.x.to(dev), scale if not ch.lo or scale is None else scale[:, ch.lo:], ln_final,
                       ch.bias_local.to(dev))
        if final is None:
            final = y.new_zeros(shape)
        final[ch.rows, :, ch.lo:] = y
        ch.x = y  # drop the state
    assert final is not None
    return final


def _cast_view(view: Any, dtype: torch.dtype) -> Any:
    """A view (model, block or norm) with every floating tensor in ``dtype`` (no copy when it already is)."""
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
