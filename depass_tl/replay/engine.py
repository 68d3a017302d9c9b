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

**Chunks, causal skipping, devices.** The components are processed in chunks (consecutive components
of one group, :mod:`~depass_tl.replay.plan`), all chunks through a sublayer before the next. The
``softmax`` / ``max`` MLP rules, whose shares span every component of a group, take two passes per MLP
layer: the first folds each chunk's keys into per-group running statistics (max and sum of
exponentials, or the best key and its index; :class:`~depass_tl.replay.mlp.Allocator`), the second
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

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depass_tl.coefficients import FrozenRun
from depass_tl.errors import DePassError
from depass_tl.model_view import BlockView, MLPView, ModelView, MoEView
from depass_tl.replay.attention import PreparedAttn, attention_prepared
from depass_tl.replay.block import pad_to_bias
from depass_tl.replay.device import block_device, block_tensors, norm_device
from depass_tl.replay.mlp import MLP_RULES, Allocator, mlp_chunk, mlp_keys
from depass_tl.replay.moe import moe
from depass_tl.replay.norm import apply_norm
from depass_tl.replay.plan import plan_chunks, row_starts

__all__ = [
    "Group", "SourcesPlan", "InitialState", "replay_components", "parse_start_hook", "stored_hook_names", "FINAL_HOOK",
]

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


def _schedule(view: ModelView, first: int) -> list[tuple[int, str]]:
    """The ``(layer, stage)`` sublayers replayed from stage index ``first`` on."""
    out = []
    for l in range(first // 2, view.n_layers):
        block = view.blocks[l]
        for stage in ("attn", "mlp"):
            if _stage_index(l, stage) < first or (stage == "mlp" and (block.mlp is None or block.parallel)):
                continue
            out.append((l, stage))
    return out


def stored_hook_names(view: ModelView, first: int, last_entry: int, last_start: str) -> list[str]:
    """Every hook name the replay can store, in order (``unembed.hook_in`` last)."""
    names = [last_start] if last_entry < 2 * view.n_layers else []
    for l, stage in _schedule(view, first):
        s, p, block = _stage_index(l, stage), f"blocks.{l}.", view.blocks[l]
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


class _Chunk:
    """Consecutive components ``[a, b)`` of group ``g``, held from position ``lo`` on."""

    def __init__(self, g: int, a: int, b: int, lo: int, K: int, x: Tensor) -> None:
        self.g, self.a, self.b, self.lo = g, a, b, lo
        self.rows = slice(g * K + a, g * K + b)  # in the concatenated component axis
        self.has_bias = b == K
        self.x: Tensor = x  # [chunk, batch, pos - lo, d_model]
        self.keys: tuple[Tensor, Tensor] | None = None  # softmax: the first pass's exponentials

    @property
    def bias_local(self) -> Tensor:
        return torch.tensor([self.b - self.a - 1] if self.has_bias else [], dtype=torch.long, device=self.x.device)

    def widen(self) -> None:
        """Hold every position again (``lo`` = 0), padding the state with exact zeros."""
        if self.lo:
            C, B, _, D = self.x.shape
            self.x = torch.cat([self.x.new_zeros(C, B, self.lo, D), self.x], dim=2)
            self.lo = 0


def _sl(t: Tensor | None, lo: int) -> Tensor | None:
    """A clean ``[batch, pos, ...]`` tensor from position ``lo`` on."""
    return None if t is None or lo == 0 else t[:, lo:]


def _add(x: Tensor, t: Tensor) -> Tensor:
    """``x + t``, in place unless autograd is recording through either."""
    if torch.is_grad_enabled() and (x.requires_grad or t.requires_grad):
        return x + t
    return x.add_(t)


def replay_components(
    run: FrozenRun,
    init: InitialState,
    *,
    mlp_rule: str = "softmax",
    temperature: float = 0.1,
    dtype: torch.dtype = torch.float32,
    keep: Callable[[str], bool] = lambda name: True,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    causal_skip: bool = True,
) -> dict[str, Tensor]:
    """Propagate the initial components block by block and return the decomposed activations.

    The components are processed in chunks (consecutive components of one group), all chunks through
    a sublayer before the next; ``softmax`` / ``max`` MLP shares, which span every component of a
    group, take two passes over the chunks (:class:`~depass_tl.replay.mlp.Allocator`). Chunking never
    changes the result beyond float rounding. With ``causal_skip`` a chunk whose components are exactly
    zero before position ``lo`` (token components) is only computed from ``lo`` on, as long as the
    attention patterns are causal (checked per layer). Each block runs on its weights' device.

    Args:
        run: the frozen clean run.
        init: the initial groups of components.
        mlp_rule: ``softmax`` | ``ratio`` | ``max`` (see :mod:`depass_tl.replay.mlp`).
        temperature: softmax temperature.
        dtype: the dtype the components are accumulated in.
        keep: which hook names to store (``unembed.hook_in`` is always stored).
        chunk_size: at most this many components per chunk (the bias components get their own).
        max_memory: bytes the replay may allocate (see :mod:`depass_tl.replay.plan`); chunks are sized
            to fit, or a :class:`DePassError` says what to drop.
        causal_skip: skip the positions a chunk cannot reach (exact; off only for testing).

    Returns:
        hook name -> ``[component, batch, pos, d_model]`` (components of all groups, in order).
    """
    if mlp_rule not in MLP_RULES:
        raise DePassError(f"unknown mlp_rule {mlp_rule!r}; choose one of {', '.join(MLP_RULES)}.")
    if not temperature > 0:
        raise DePassError(f"temperature must be > 0, got {temperature}.")
    view = run.view
    K, G = init.group_size, len(init.groups)
    C = K * G
    B, P, D = run.batch, run.n_pos, view.d_model
    entries = sorted(
        ((_stage_index(*parse_start_hook(g.start_hook, view)), i) for i, g in enumerate(init.groups)),
    )
    if [i for _, i in entries] != list(range(G)):
        raise DePassError("groups must be given in the order of their start hooks.")
    first, last_entry = entries[0][0], entries[-1][0]
    pad = run.pad
    has_moe = any(isinstance(b.mlp, MoEView) for b in view.blocks)
    splittable = init.sources is None and not (has_moe and mlp_rule != "ratio")
    why_not = "sources() credits module outputs across components" if init.sources is not None else (
        "mixture-of-experts layers under the softmax/max rules"
    )
    comps: list[Tensor | None] = [pad_to_bias(g.components.to(dtype), pad, K) for g in init.groups]
    causal = causal_skip and init.sources is None and not has_moe
    starts = [row_starts(c, causal) for c in comps if c is not None]
    names = [n for n in stored_hook_names(view, first, last_entry, init.groups[-1].start_hook) if n == FINAL_HOOK or keep(n)]
    plan = plan_chunks(
        view, starts, batch=B, n_pos=P, itemsize=torch.finfo(dtype).bits // 8, rule=mlp_rule,
        n_stored=len(names), chunk_size=chunk_size, max_memory=max_memory, splittable=splittable, why_not=why_not,
    )
    cache_keys = plan.cache_keys
    wanted = set(names)
    out: dict[str, Tensor] = {}
    active: list[_Chunk] = []
    pending = list(range(G))
    entry_of = {i: s for s, i in entries}

    def store_x(name: str) -> None:
        if name in wanted:
            buf = active[0].x.new_zeros(C, B, P, D)
            for ch in active:
                buf[ch.rows, :, ch.lo:] = ch.x
            out[name] = buf

    def enter(stage_idx: int) -> None:
        while pending and entry_of[pending[0]] == stage_idx:
            g = pending.pop(0)
            x = comps[g]
            assert x is not None
            for a, b, lo in plan.of_group(g):
                active.append(_Chunk(g, a, b, lo, K, x[a:b, :, lo:].clone()))
            comps[g] = None
            if not pending:
                store_x(init.groups[g].start_hook)

    def emit(name: str, t: Tensor, ch: _Chunk, totals: dict[str, Tensor]) -> Tensor:
        """Padding (everything at padded positions to the bias), then store ``t``; returns it."""
        if pad is not None:
            moved = t * pad_d[:, ch.lo:, None].to(t.dtype)
            if ch.has_bias:
                moved = moved.index_fill(0, ch.bias_local, 0.0)
            t = t - moved
            tot = totals.setdefault(name, t.new_zeros(G, B, P, D))
            tot[ch.g, :, ch.lo:] += moved.sum(0)
        if name in wanted:
            if name not in out:
                out[name] = t.new_zeros(C, B, P, D)
            out[name][ch.rows, :, ch.lo:] = t
        return t

    def settle(totals: dict[str, Tensor]) -> None:
        """Padding: hand each group's moved totals to its bias component (state and stored output)."""
        for name, tot in totals.items():
            for ch in active:
                if ch.has_bias:
                    i = ch.b - ch.a - 1
                    ch.x[i] = ch.x[i] + tot[ch.g, :, ch.lo:]
                    if name in wanted:
                        out[name][ch.rows.stop - 1] += tot[ch.g]

    pad_d = pad
    for l, stage in _schedule(view, first):
        s, p = _stage_index(l, stage), f"blocks.{l}."
        block = view.blocks[l]
        dev = block_device(block)
        if stage == "attn" or s == first:
            w = _cast_view(block, dtype)
            pa = PreparedAttn.build(w.attn)
            acts = block_tensors(run.acts, p, dtype, dev)
            pad_d = None if pad is None else pad.to(dev)
        enter(s)
        for ch in active:
            ch.x = ch.x.to(dev)
        plan_src = init.sources
        credit_mlp = None
        if plan_src is not None and plan_src.mlp_rows[l] is not None:
            credit_mlp = (plan_src.source_rows, plan_src.mlp_rows[l])
        totals: dict[str, Tensor] = {}
        if stage == "attn":
            if s > last_entry:
                store_x(p + "hook_resid_pre")
            pattern = acts[p + "attn.hook_pattern"]
            if causal and any(ch.lo for ch in active) and bool(torch.triu(pattern, diagonal=1).any()):
                causal = False  # a non-causal pattern: every component may reach every position
                for ch in active:
                    ch.widen()
            credit_attn = None if plan_src is None else (plan_src.source_rows, plan_src.head_rows[l])
            allocs = _mlp_stats(active, w, acts, p, mlp_rule, temperature, cache_keys, B, P) if block.parallel else {}
            for ch in active:
                a_out = _attn_chunk(ch, w, pa, acts, p, pattern, credit_attn)
                m_out = _mlp_chunk(ch, w, acts, p, mlp_rule, temperature, allocs, credit_mlp, K) if block.parallel else None
                ch.x = _add(ch.x, emit(p + "hook_attn_out", a_out, ch, totals))
                del a_out
                if m_out is not None:
                    ch.x = _add(ch.x, emit(p + "hook_mlp_out", m_out, ch, totals))
            settle(totals)
            if s >= last_entry:
                store_x(p + ("hook_resid_mid" if block.mlp is not None and not block.parallel else "hook_resid_post"))
        else:
            allocs = _mlp_stats(active, w, acts, p, mlp_rule, temperature, cache_keys, B, P)
            for ch in active:
                m_out = _mlp_chunk(ch, w, acts, p, mlp_rule, temperature, allocs, credit_mlp, K)
                ch.x = _add(ch.x, emit(p + "hook_mlp_out", m_out, ch, totals))
            settle(totals)
            if s >= last_entry:
                store_x(p + "hook_resid_post")
    if pending:  # groups that start after the last block: nothing to replay but the final norm
        enter(2 * view.n_layers)
    dev = norm_device(view.ln_final, active[0].x.device)
    ln_final = _cast_view(view.ln_final, dtype)
    scale = run.acts.get("ln_final.hook_scale")
    scale = None if scale is None else scale.to(device=dev, dtype=dtype)
    final = None
    for ch in active:
        y = apply_norm(ch.x.to(dev), _sl(scale, ch.lo) if ch.lo else scale, ln_final, ch.bias_local.to(dev))
        if final is None:
            final = y.new_zeros(C, B, P, D)
        final[ch.rows, :, ch.lo:] = y
        ch.x = y  # drop the state
    assert final is not None
    out[FINAL_HOOK] = final
    return out


def _attn_chunk(ch: _Chunk, w: BlockView, pa: PreparedAttn, acts: dict[str, Tensor], p: str, pattern: Tensor,
                credit: tuple[tuple[int, ...], tuple[int, ...]] | None) -> Tensor:
    lo, bias = ch.lo, ch.bias_local
    scale = acts.get(p + "ln1.hook_scale")
    x_ln = apply_norm(ch.x, _sl(scale, lo) if lo else scale, w.ln1, bias)
    pat = pattern[:, :, lo:, lo:] if lo else pattern
    clip = acts.get(p + "attn.clip_ratio")
    out = attention_prepared(x_ln, pat, pa, bias, credit=credit, clip_ratio=_sl(clip, lo) if lo else clip)
    del x_ln
    if w.ln1_post is not None:
        post_scale = acts.get(p + "ln1_post.hook_scale")
        out = apply_norm(out, _sl(post_scale, lo) if lo else post_scale, w.ln1_post, bias)
    return out


def _mlp_stats(active: list[_Chunk], w: BlockView, acts: dict[str, Tensor], p: str, rule: str, temperature: float,
               cache_keys: bool, B: int, P: int) -> dict[int, Allocator]:
    """First pass over the chunks for ``softmax`` / ``max``: per group, the statistics of every key."""
    if rule == "ratio" or not isinstance(w.mlp, MLPView):
        return {}
    assert w.ln2 is not None
    allocs: dict[int, Allocator] = {}
    F = w.mlp.W_out.shape[0]
    scale = acts.get(p + "ln2.hook_scale")
    per_group = {}
    for ch in active:
        per_group[ch.g] = per_group.get(ch.g, 0) + 1
    for ch in active:
        if ch.g not in allocs:
            allocs[ch.g] = Allocator(rule, temperature, (B, P, F), ch.x.dtype, ch.x.device)
        x_ln = apply_norm(ch.x, _sl(scale, ch.lo) if ch.lo else scale, w.ln2, ch.bias_local)
        keys = mlp_keys(x_ln, w.mlp, ch.bias_local)
        del x_ln
        keep = rule == "softmax" and (cache_keys or per_group[ch.g] == 1)
        ch.keys = allocs[ch.g].update(keys, ch.a, ch.lo, keep=keep)
    return allocs


def _mlp_chunk(ch: _Chunk, w: BlockView, acts: dict[str, Tensor], p: str, rule: str, temperature: float,
               allocs: dict[int, Allocator], credit: tuple[tuple[int, ...], int] | None, K: int) -> Tensor:
    assert w.mlp is not None and w.ln2 is not None
    lo, bias = ch.lo, ch.bias_local
    scale = acts.get(p + "ln2.hook_scale")
    q = p + "mlp."
    keys, ch.keys = ch.keys, None
    # max (and softmax with cached keys) split the clean post without reading the chunk's input again
    needs_input = rule == "ratio" or not isinstance(w.mlp, MLPView) or (keys is None and rule == "softmax")
    x_ln = apply_norm(ch.x, _sl(scale, lo) if lo else scale, w.ln2, bias) if needs_input else None
    if isinstance(w.mlp, MoEView):
        assert lo == 0 and x_ln is not None
        out = moe(x_ln, w.mlp, coeffs=acts, prefix=q, rule=rule, temperature=temperature, bias_rows=bias,
                  group_size=K, credit=credit)
    else:
        def c(name: str) -> Tensor | None:
            t = acts.get(q + name)
            return _sl(t, lo) if lo else t

        pre, post = c("hook_pre"), c("hook_post")
        assert pre is not None and post is not None
        out = mlp_chunk(
            x_ln, w.mlp, n_rows=ch.b - ch.a, pre=pre, post=post, gate_act=c("gate_act"), rule=rule, bias_rows=bias,
            allocator=allocs.get(ch.g), keys=keys, row0=ch.a, lo=lo, credit=credit, solu_softmax=c("solu_softmax"),
            mid=c("hook_mid"), inner_scale=c("ln.hook_scale"),
        )
    del x_ln
    if w.ln2_post is not None:
        post_scale = acts.get(p + "ln2_post.hook_scale")
        out = apply_norm(out, _sl(post_scale, lo) if lo else post_scale, w.ln2_post, bias)
    return out


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
