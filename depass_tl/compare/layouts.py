"""DePass on the axes of ``transformer_lens.patching``, without running any patching.

For each patching cell, the component that the patch would overwrite is split off the residual
stream (with ``custom`` specs) and replayed through one frozen run; its contribution to a logit or
logit difference is the cell's value. See :mod:`depass_tl.compare` for the method and for when
this equals the patching effect. Layouts (keys of :data:`LAYOUTS`):

* ``resid_pre`` / ``resid_mid`` ``[n_layers, pos]``: position p of ``blocks.L.hook_resid_pre``
  (``hook_resid_mid``), one component per position.
* ``attn_out`` ``[n_layers, pos]``: ``hook_attn_out − b_O`` at position p, split off
  ``blocks.L.hook_resid_mid`` (``hook_resid_post`` for attention-only and parallel blocks: GPT-J, NeoX).
* ``mlp_out`` ``[n_layers, pos]``: ``hook_mlp_out − b_out`` at position p, split off
  ``blocks.L.hook_resid_post``.
* ``attn_head_out_by_pos`` ``[n_layers, pos, n_heads]``: ``z_h W_O[h]`` at position p, ``z`` from
  ``blocks.L.attn.hook_z`` (the hook TL patches), so ``b_V`` rides with the head (through a
  post-attention norm at its frozen scale: Gemma-2/3); split off the residual as for ``attn_out``. ``attn_head_out_all_pos`` ``[n_layers, n_heads]``: at every position.

Each replay (one per layer) also carries ``rest`` (the residual at the start hook minus the cells;
it holds ``b_O`` / ``b_out`` and everything written earlier) and the ``bias`` component (constants
added downstream). Cells + rest + bias = the metric, exactly, for every layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from depass_tl.api import replay
from depass_tl.coefficients import FrozenRun
from depass_tl.components import custom
from depass_tl.components.module_specs import attn_start, head_results
from depass_tl.errors import DePassError
from depass_tl.replay.rules import DEFAULT_TEMPERATURE, RuleLike

__all__ = ["LAYOUTS", "depass_layout", "layout_hooks", "layout_shape"]


@dataclass(frozen=True)
class _Layout:
    tl_function: str  # in transformer_lens.patching
    axis_names: tuple[str, ...]
    tl_act: str  # TL short activation name that is patched
    needs_mlp: bool


LAYOUTS: Mapping[str, _Layout] = MappingProxyType(
    {
        "resid_pre": _Layout("get_act_patch_resid_pre", ("layer", "pos"), "resid_pre", False),
        "resid_mid": _Layout("get_act_patch_resid_mid", ("layer", "pos"), "resid_mid", True),
        "attn_out": _Layout("get_act_patch_attn_out", ("layer", "pos"), "attn_out", False),
        "mlp_out": _Layout("get_act_patch_mlp_out", ("layer", "pos"), "mlp_out", True),
        "attn_head_out_by_pos": _Layout("get_act_patch_attn_head_out_by_pos", ("layer", "pos", "head"), "z", False),
        "attn_head_out_all_pos": _Layout("get_act_patch_attn_head_out_all_pos", ("layer", "head"), "z", False),
    }
)
"""Layout name -> the ``transformer_lens.patching`` function it mirrors, its axes and patched hook."""


def _check_layout(layout: str, run: FrozenRun) -> _Layout:
    if layout not in LAYOUTS:
        raise DePassError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}.")
    lay = LAYOUTS[layout]
    if lay.needs_mlp and run.view.attn_only:
        raise DePassError(f"layout {layout!r} needs MLP blocks, but this model is attention-only (cfg.attn_only=True).")
    if layout == "resid_mid" and any(b.parallel for b in run.view.blocks):
        raise DePassError(
            "layout 'resid_mid' needs hook_resid_mid, which parallel blocks (GPT-J, NeoX: attention and MLP both "
            "read hook_resid_pre) do not have; use 'resid_pre', 'attn_out' or 'mlp_out'."
        )
    return lay


def layout_hooks(layout: str, n_layers: int) -> list[str]:
    """The TL hooks a layout reads (and patching patches), e.g. ``blocks.L.attn.hook_z``.

    Pass them to ``depass_tl.capture(model, tokens, extra_hooks=...)`` before :func:`depass_layout`.
    """
    if layout not in LAYOUTS:
        raise DePassError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}.")
    from depass_tl.backends import get_act_name

    return [get_act_name(LAYOUTS[layout].tl_act, layer) for layer in range(n_layers)]


def layout_shape(layout: str, run: FrozenRun) -> tuple[int, ...]:
    """The shape TL's patching function returns for this layout on this run's input."""
    lay = _check_layout(layout, run)
    sizes = {"layer": run.view.n_layers, "pos": run.n_pos, "head": int(run.view.blocks[0].attn.W_O.shape[0])}
    return tuple(sizes[a] for a in lay.axis_names)


def _by_pos(x: Tensor) -> Tensor:
    """``[..., batch, pos, d_model]`` -> ``[pos, ..., batch, pos, d_model]``: slice p keeps position p only."""
    P = x.shape[-2]
    eye = torch.eye(P, dtype=x.dtype, device=x.device)  # [component=pos, pos]
    mask = eye.reshape(P, *([1] * (x.ndim - 2)), P, 1)
    return mask * x[None]


def _act(run: FrozenRun, name: str) -> Tensor:
    if name not in run.acts:
        raise DePassError(
            f"{name!r} was not captured; capture with depass_tl.capture(model, tokens, "
            "extra_hooks=depass_tl.compare.layout_hooks(layout, model.cfg.n_layers))."
        )
    return run.acts[name]


def _head_outputs(run: FrozenRun, layer: int, dtype: torch.dtype) -> Tensor:
    """Per-head outputs ``[head, batch, pos, d_model]`` as :func:`~depass_tl.heads` starts them: ``z_h W_O[h]``
    (``b_V`` included, ``b_O`` not), through a post-attention norm (Gemma-2/3) at its frozen scale."""
    _act(run, f"blocks.{layer}.attn.hook_z")  # captured? (else: how to capture it)
    return head_results(run, layer, dtype, f"compare (layer {layer}'s heads)")


def _layer_components(run: FrozenRun, layout: str, layer: int, dtype: torch.dtype) -> tuple[str, Tensor, list[str]]:
    """The start hook, the cell components ``[cells, batch, pos, d_model]`` and their labels."""
    p = f"blocks.{layer}."
    P = run.n_pos
    if layout in ("resid_pre", "resid_mid"):
        hook = p + "hook_" + layout
        return hook, _by_pos(_act(run, hook).to(dtype)), [f"L{layer}P{q}" for q in range(P)]
    if layout == "attn_out":
        out = _act(run, p + "hook_attn_out").to(dtype)
        b_O = run.view.blocks[layer].attn.b_O
        out = out if b_O is None else out - b_O.to(out)
        return attn_start(run, layer), _by_pos(out), [f"L{layer}P{q}.attn" for q in range(P)]
    if layout == "mlp_out":
        out = _act(run, p + "hook_mlp_out").to(dtype)
        mlp = run.view.blocks[layer].mlp
        assert mlp is not None
        out = out if mlp.b_out is None else out - mlp.b_out.to(out)
        return p + "hook_resid_post", _by_pos(out), [f"L{layer}P{q}.mlp" for q in range(P)]
    heads = _head_outputs(run, layer, dtype)  # [head, batch, pos, d_model]
    H = heads.shape[0]
    if layout == "attn_head_out_by_pos":
        comps = _by_pos(heads).flatten(0, 1)  # [(pos, head), batch, pos, d_model], pos-major like TL's axes
        return attn_start(run, layer), comps, [f"L{layer}H{h}P{q}" for q in range(P) for h in range(H)]
    assert layout == "attn_head_out_all_pos"
    return attn_start(run, layer), heads, [f"L{layer}H{h}" for h in range(H)]


def depass_layout(
    run: FrozenRun,
    layout: str,
    answer_tokens: Any,
    incorrect_tokens: Any = None,
    *,
    pos: int = -1,
    mlp_rule: RuleLike = "softmax",
    temperature: float = DEFAULT_TEMPERATURE,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """DePass contributions to a logit (difference) on a patching layout's axes, for one run.

    Args:
        run: from ``depass_tl.capture(model, tokens, extra_hooks=layout_hooks(layout, n_layers))``.
        layout: a key of :data:`LAYOUTS`.
        answer_tokens: an id or ``[batch]`` ids (as :meth:`DePassCache.logit_attrs`).
        incorrect_tokens: ids subtracted for a logit difference, or None.
        pos: the position whose logits are read.
        mlp_rule, temperature, dtype: as :func:`depass_tl.replay`.

    Returns:
        ``(cells, rest)``: ``cells`` of :func:`layout_shape` and ``rest`` ``[n_layers]`` (the ``rest``
        plus ``bias`` components of each layer's replay), both batch means, float64 on the CPU.
        ``cells[L].sum() + rest[L]`` is the metric for every layer L.

    Raises:
        DePassError: unknown layout, a layout the model lacks, a hook that was not captured.

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.compare import depass_layout, layout_hooks
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_vocab=20, attn_only=True, seed=0)
        >>> model = random_model(**cfg)
        >>> run = depass_tl.capture(model, torch.tensor([[1, 2, 3]]),
        ...                         extra_hooks=layout_hooks("attn_head_out_by_pos", 2))
        >>> cells, rest = depass_layout(run, "attn_head_out_by_pos", 4, 7)
        >>> cells.shape, rest.shape
        (torch.Size([2, 3, 2]), torch.Size([2]))
    """
    _check_layout(layout, run)
    shape = layout_shape(layout, run)
    if dtype is None:  # as depass_tl.replay: float32, float64 for float64 models
        dtype = torch.float64 if run.view.dtype == torch.float64 else torch.float32
    cells, rests = [], []
    for layer in range(run.view.n_layers):
        hook, comps, labels = _layer_components(run, layout, layer, dtype)
        rest = run.acts[hook].to(dtype) - comps.sum(0)
        spec = custom(hook, torch.cat([comps, rest[None]]), labels + ["rest"])
        dc = replay(run, spec, mlp_rule=mlp_rule, temperature=temperature, names_filter=[], dtype=dtype)
        attrs = dc.logit_attrs(answer_tokens, incorrect_tokens=incorrect_tokens, pos=pos).mean(1)  # [component]
        n = comps.shape[0]
        cells.append(attrs[:n])
        rests.append(attrs[n:].sum())  # rest + bias
    return (
        torch.stack(cells).reshape(shape).detach().double().cpu(),
        torch.stack(rests).detach().double().cpu(),
    )
