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

**Chunks, units, causal skipping, devices.** The components are cut into chunks (consecutive
components of one group, :mod:`~depass_tl.replay.plan`) kept in one flat state
(:mod:`~depass_tl.replay.layout`); every sublayer runs over all chunks before the next, its matrix
products over many chunks at once. A chunk whose components are exactly zero before position ``lo``
(token components) is held and computed from ``lo`` on when the attention patterns are causal
(checked once per replay; a non-causal pattern turns skipping off); with causal patterns long chunks also
mix each block of queries with the keys up to its end only. The MLP splits *units*: every
component of a group at a block of positions, so the competitive rules (``softmax`` / ``max``), whose
shares span every component of a group, see complete statistics in one pass
(:class:`~depass_tl.replay.rules.RuleStats`); padding moves are summed per group and settled after each
sublayer. So chunking never changes the numbers beyond float rounding, and a memory budget
(``max_memory``) only decides the chunk and pass sizes. Each block runs on the device of its weights
(:mod:`~depass_tl.replay.device`), and its weights are laid out once per block with the norms folded in
(:mod:`~depass_tl.replay.weights`).

**Sharding.** With a :class:`~depass_tl.replay.shard.Shard` (``distributed=True``) every rank plans the
same chunks, holds only those it owns, cuts the MLP units from the whole plan and reduces each unit's
statistics and every sublayer's padding moves across the ranks (:mod:`~depass_tl.replay.shard`).

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
from depass_tl.replay.block import BlockStep, Outputs, Reducer, attn_step, mlp_step, pad_to_bias
from depass_tl.replay.device import block_device, block_tensors, norm_device
from depass_tl.replay.layout import State, attn_passes
from depass_tl.replay.matmul import require_tensor_cores, splitting
from depass_tl.replay.norm import apply_norm
from depass_tl.replay.plan import plan_chunks, row_starts
from depass_tl.replay.rules import DEFAULT_TEMPERATURE, RuleLike, get_rule
from depass_tl.replay.shard import Shard
from depass_tl.replay.state import FINAL_HOOK, DiagonalComponents, InitialState, schedule, stage_index
from depass_tl.replay.weights import PreparedBlock

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
    held_bytes: int = 0,
    reducer: Reducer | None = None,
    shard: Shard | None = None,
) -> dict[str, Tensor]:
    """Propagate the initial components block by block and return the decomposed activations.

    The components are cut into chunks (consecutive components of one group) that share one flat
    state; every sublayer runs over all of them (:mod:`~depass_tl.replay.block`). Chunking never
    changes the result beyond float rounding. With ``causal_skip`` a chunk whose components are exactly
    zero before position ``lo`` (token components) is only computed from ``lo`` on, as long as the
    attention patterns of the replayed layers are causal (checked once). Each block runs on its
    weights' device.

    Args:
        run: the frozen clean run.
        init: the initial groups of components.
        mlp_rule: a rule object or a registered name (:mod:`depass_tl.replay.rules`).
        temperature: softmax temperature, for a rule given by name.
        dtype: the dtype the components are accumulated in.
        keep: which hook names to store (``unembed.hook_in`` is always stored).
        chunk_size: at most this many components per chunk (the bias components get their own).
        max_memory: bytes the call may allocate (see :mod:`depass_tl.replay.plan`); passes are sized
            to fit, or a :class:`DePassError` says what to drop.
        causal_skip: skip the positions a chunk cannot reach, and the keys after each block of queries
            when mixing values (:func:`~depass_tl.replay.block.query_blocks`); exact, off only for testing.
        held_bytes: memory the caller already holds for this call (the captured run), counted
            against ``max_memory``.
        reducer: called with each MLP unit's statistics under a competitive rule once they are complete
            (:mod:`~depass_tl.replay.block`; e.g. to merge them across processes).
        shard: replay only this rank's chunks, reduce every MLP unit's rule statistics
            (:meth:`~depass_tl.replay.shard.Shard.reduce_one`, the reducer) and the padding moves across
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
    sources: list[Any] = [_padded(g.source, dtype, run.pad, K) for g in init.groups]
    layers = sorted({l for l, _ in schedule(view, first)})
    pattern_causal = causal_skip and _causal(run, layers)
    causal = pattern_causal and init.sources is None and not has_moe
    starts = [_starts(src, causal) for src in sources]
    names = [n for n in init.stored_hook_names(view) if n == FINAL_HOOK or keep(n)]
    dev0 = block_device(view.blocks[layers[0]]) if layers else view.device
    for dev in {torch.device(block_device(view.blocks[layer])) for layer in layers}:
        if splitting(dtype, dev):  # precision="tf32x3" on CUDA
            require_tensor_cores(dev)
    if shard is not None and splittable and chunk_size is None and max_memory is None:
        chunk_size = shard.chunk_rows(K - 1)
    plan = plan_chunks(
        view, starts, batch=B, n_pos=P, itemsize=torch.finfo(dtype).bits // 8, rule=rule,
        n_stored=len(names), chunk_size=chunk_size, max_memory=max_memory, splittable=splittable, why_not=why_not,
        device_type=torch.device(dev0).type, held_bytes=held_bytes, init_bytes=sum(_nbytes(s) for s in sources),
        split_operands=splitting(dtype, dev0),
    )
    mine, every = plan.chunks, None
    if shard is not None:  # this rank's chunks; the MLP units are cut from the whole plan
        mine = tuple(c for c, own in zip(plan.chunks, shard.owns(plan.chunks, P)) if own)
        every, reducer = plan.chunks, shard.reduce_one
    state = State(mine, K, (B, P, D), dtype, dev0, plan.attn_rows, plan.mlp_rows, every)
    out = Outputs(set(names), (K * G, B, P, D), G, run.pad, dtype=dtype, device=dev0)
    pending = list(range(G))

    def enter(stage: int) -> None:
        """Start the groups that enter at ``stage``; store the last group's start hook."""
        while pending and entries[pending[0]] == stage:
            g = pending.pop(0)
            src = sources[g]
            for ch in state.enter(g):
                x = state.view(ch)  # a fresh view: writing a source that requires grad makes X require it
                if isinstance(src, DiagonalComponents):
                    src.rows_into(x, ch.a, ch.lo)
                else:
                    x.copy_(src[ch.a : ch.b, :, ch.lo :].to(x.device))
            state.refresh()
            sources[g] = None
            if not pending:
                out.store_state(init.groups[g].start_hook, state.active)

    step: BlockStep | None = None
    for l, stage in schedule(view, first):
        s, block = stage_index(l, stage), view.blocks[l]
        dev = block_device(block)
        if step is None or step.layer != l:
            step = None  # the previous block's cast, prepared and split weights go first: one block's at a time
            w = _cast_view(block, dtype)
            step = BlockStep(l, w, PreparedBlock.build(w, rule.gated_keys), block_tensors(run.acts, f"blocks.{l}.", dtype, dev),
                             rule, K, init.sources, reducer, shard, pattern_causal)
            del w
            out.to(dev)
            state.to(dev)
        enter(s)
        if stage == "attn":
            attn_step(state, step, out, store_pre=s > last_entry, store_after=s >= last_entry)
        else:
            mlp_step(state, step, out, store_after=s >= last_entry)
    if pending:  # groups that start after the last block: nothing to replay but the final norm
        enter(2 * view.n_layers)
    del step  # the last block's prepared (and split) matrices: the final norm's budget holds no weights
    out.acts[FINAL_HOOK] = _final_norm(run, state, (K * G, B, P, D), dtype, plan.final_rows)
    return out.acts


def _padded(src: Any, dtype: torch.dtype, pad: Tensor | None, K: int) -> Any:
    if isinstance(src, DiagonalComponents):
        return src.to(dtype).pad_to_bias(pad)  # moves the mask to its own device
    # a split model's captured mask may sit on another device than the components
    return pad_to_bias(src.to(dtype), None if pad is None else pad.to(src.device), K)


def _nbytes(src: Any) -> int:
    if isinstance(src, DiagonalComponents):
        return src.nbytes
    return src.numel() * src.element_size()


def _starts(src: Any, causal: bool) -> list[int]:
    if isinstance(src, DiagonalComponents):
        return src.starts() if causal else [0] * src.shape[0]
    return row_starts(src, causal)


def _causal(run: FrozenRun, layers: list[int]) -> bool:
    """Whether every replayed layer's frozen pattern is causal (one check up front)."""
    flags = []
    for l in layers:
        pattern = run.acts.get(f"blocks.{l}.attn.hook_pattern")
        if pattern is not None:
            flags.append(torch.triu(pattern, diagonal=1).ne(0).any().to(run.tokens.device))
    return not (flags and bool(torch.stack(flags).any()))  # one device sync


def _final_norm(run: FrozenRun, state: State, shape: tuple[int, int, int, int], dtype: torch.dtype,
                max_rows: int) -> Tensor:
    """``ln_final`` with its frozen scale on every chunk: the decomposed ``unembed.hook_in``.

    Over row ranges of the flat state of at most ``max_rows`` rows (whole chunks, or slices of
    components of one chunk): the norm's weight scales each row and its bias goes to the bias
    components; each range is then copied into the dense output."""
    dev = norm_device(run.view.ln_final, state.X.device)
    state.to(dev)
    norm = _cast_view(run.view.ln_final, dtype)
    scale = run.acts.get("ln_final.hook_scale")
    inv = None if scale is None else scale.to(device=dev, dtype=dtype).reshape(-1).reciprocal()
    final = state.X.new_zeros(shape)
    B, D = state.B, state.D
    for i, j in attn_passes(state.active, max_rows):
        chunks = state.chunks[i:j]
        per = max(1, max_rows // (B * (state.P - chunks[0].lo))) if j == i + 1 else None
        pieces = [(ch, 0, ch.n_rows) for ch in chunks] if per is None else [
            (chunks[0], a, min(a + per, chunks[0].n_rows)) for a in range(0, chunks[0].n_rows, per)]
        r0 = pieces[0][0].off + pieces[0][1] * B * (state.P - pieces[0][0].lo)
        r1 = pieces[-1][0].off + pieces[-1][2] * B * (state.P - pieces[-1][0].lo)
        y = state.X[r0:r1]
        if norm.kind in ("LN", "LNPre"):
            y = y - y.mean(-1, keepdim=True)
        if norm.kind != "none":
            assert inv is not None, "a norm needs its captured scale"
            y = y * inv.index_select(0, state.pos[r0:r1])[:, None]
            if norm.w is not None:
                y.mul_(norm.w)  # y is a new tensor here
        for ch, a, b in pieces:
            w = state.P - ch.lo
            start = ch.off + a * B * w - r0
            final[ch.rows.start + a : ch.rows.start + b, :, ch.lo :] = y[start : start + (b - a) * B * w].view(b - a, B, w, D)
            if ch.has_bias and b == ch.n_rows and norm.b is not None:
                final[ch.rows.stop - 1] += norm.b
        del y
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
