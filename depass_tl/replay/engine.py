"""The decomposed forward pass (DePass): replay additive components through a frozen model.

DePass (Hong et al., "DePass: Unified Feature Attributing by Simple Decomposed Forward Pass",
NeurIPS 2025) splits a hidden state into additive components ``x = Σ_c x_c`` and pushes every
component through the rest of the model with the nonlinear coefficients frozen at their clean-run
values: norm scales (:mod:`~depass_tl.replay.norm`), attention patterns
(:mod:`~depass_tl.replay.attention`) and MLP activations (:mod:`~depass_tl.replay.mlp`). Given those,
every later activation is a sum over components, exactly: constant terms (biases, norm offsets) are
collected in an explicit ``bias`` component, so nothing is left over.

The engine is pure tensor code. It reads a :class:`~depass_tl.coefficients.FrozenRun` and an
:class:`InitialState` (components at a start hook) and returns a dict hook name -> ``[component, batch,
pos, d_model]`` for every hook at or after the start.
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
from depass_tl.replay.attention import attention
from depass_tl.replay.mlp import MLP_RULES, mlp
from depass_tl.replay.norm import apply_norm

__all__ = ["InitialState", "replay_components", "parse_start_hook", "FINAL_HOOK"]

FINAL_HOOK = "unembed.hook_in"
_START = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")


@dataclass(frozen=True)
class InitialState:
    """Components at the start of the replay.

    Attributes:
        start_hook: ``blocks.{l}.hook_resid_pre|mid|post``.
        components: ``[component, batch, pos, d_model]``, summing to the clean activation there.
        labels: one label per component.
        bias_index: the component that collects constant terms.
    """

    start_hook: str
    components: Tensor
    labels: tuple[str, ...]
    bias_index: int


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
    if where == "mid" and view.blocks[layer].mlp is None:
        raise DePassError(f"start hook {hook!r}: this model has no hook_resid_mid (attention-only blocks).")
    if where == "pre":
        return layer, "attn"
    if where == "mid":
        return layer, "mlp"
    return layer + 1, "attn"


def replay_components(
    run: FrozenRun,
    init: InitialState,
    *,
    mlp_rule: str = "softmax",
    temperature: float = 0.1,
    dtype: torch.dtype = torch.float32,
    keep: Callable[[str], bool] = lambda name: True,
) -> dict[str, Tensor]:
    """Propagate ``init.components`` block by block and return the decomposed activations.

    Args:
        run: the frozen clean run.
        init: components at the start hook.
        mlp_rule: ``softmax`` | ``ratio`` | ``max`` (see :mod:`depass_tl.replay.mlp`).
        temperature: softmax temperature.
        dtype: the dtype the components are accumulated in.
        keep: which hook names to store (``unembed.hook_in`` is always stored).

    Returns:
        hook name -> ``[component, batch, pos, d_model]``.
    """
    if mlp_rule not in MLP_RULES:
        raise DePassError(f"unknown mlp_rule {mlp_rule!r}; choose one of {', '.join(MLP_RULES)}.")
    if not temperature > 0:
        raise DePassError(f"temperature must be > 0, got {temperature}.")
    view = run.view
    layer0, stage0 = parse_start_hook(init.start_hook, view)
    acts = run.to(dtype)
    bias = init.bias_index
    w = _cast_view(view, dtype)
    out: dict[str, Tensor] = {}

    def store(name: str, value: Tensor) -> None:
        if name == FINAL_HOOK or keep(name):
            out[name] = value

    x = init.components.to(dtype)
    store(init.start_hook, x)
    for l in range(layer0, view.n_layers):
        block, p = w.blocks[l], f"blocks.{l}."
        if not (l == layer0 and stage0 == "mlp"):
            if l != layer0 or init.start_hook != p + "hook_resid_pre":
                store(p + "hook_resid_pre", x)
            x_ln = apply_norm(x, acts.get(p + "ln1.hook_scale"), block.ln1, bias)
            attn_out = attention(x_ln, acts[p + "attn.hook_pattern"], block.attn, bias)
            store(p + "hook_attn_out", attn_out)
            x = x + attn_out
            if block.mlp is None:
                store(p + "hook_resid_post", x)
                continue
            store(p + "hook_resid_mid", x)
        assert block.mlp is not None and block.ln2 is not None
        x_ln = apply_norm(x, acts.get(p + "ln2.hook_scale"), block.ln2, bias)
        mlp_out = mlp(
            x_ln,
            block.mlp,
            pre=acts[p + "mlp.hook_pre"],
            post=acts[p + "mlp.hook_post"],
            gate_act=acts.get(p + "mlp.gate_act"),
            rule=mlp_rule,
            temperature=temperature,
            bias_index=bias,
        )
        store(p + "hook_mlp_out", mlp_out)
        x = x + mlp_out
        store(p + "hook_resid_post", x)
    store(FINAL_HOOK, apply_norm(x, acts.get("ln_final.hook_scale"), w.ln_final, bias))
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
