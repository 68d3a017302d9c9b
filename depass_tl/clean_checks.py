"""Checks of the clean run's own consistency: the sums and products its hooks report must be what the
replay assumes, or the model computes something its hooks do not show (a PyTorch hook on a module
between two hook points, or a model class whose hooks mean something else).

* :func:`check_residual_identity`: ``resid_pre + attn_out (+ mlp_out) = resid_post`` per layer.
* :func:`check_mlp_inputs`: each MLP's captured pre-activation is ``ln2(x) W_in + b_in`` (gated:
  ``ln2(x) W_gate`` and ``ln2(x) W_in``) of the stream ``x`` it reads, ``ln2`` at its captured scale. The
  ``softmax`` and ``max`` rules split the captured ``hook_post`` by these keys, so the shares sum to the
  clean output whatever the keys are: the completeness guard cannot see keys of another model.

A layer where the user's TransformerLens hooks edited one of the hooks involved is skipped: the edit
explains the gap, and whether a replay can follow it is decided per replay
(:func:`depass_tl.foreign_hooks.check_edits`). ``edited`` holds every name of an edited hook point (a
TransformerBridge registers some under several). Both checks compare in float32 (float64 for float64
models) and allow a few roundings of the model's dtype; each synchronises with the device once.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from depass_tl.errors import UnsupportedModelError
from depass_tl.model_view import MLPView, ModelView
from depass_tl.replay.norm import apply_norm

__all__ = ["check_residual_identity", "check_mlp_inputs"]

_ONE = torch.tensor([0])  # the bias row of a single component
_IDENTITY_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
_HOOK_HINT = (
    "Either a PyTorch hook on one of the model's modules (module.register_forward_hook) changes an output after "
    "TransformerLens's hook point saw it (remove it, or make the edit at a TransformerLens hook point, where "
    "depass_tl follows it or refuses it by name), or the model class's hooks mean something else (check its hook "
    "semantics)."
)


def _rel(view: ModelView) -> float:
    """The relative gap a few roundings of the model's dtype explain (one bfloat16 unit is 2**-7)."""
    return max(1e-3, 4 * torch.finfo(view.dtype).eps)


def _wide(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def check_residual_identity(acts: dict[str, Tensor], view: ModelView, edited: Iterable[str] = ()) -> None:
    """The clean cache must satisfy resid_pre + attn_out (+ mlp_out) = resid_post (TL issue #1639).

    The model adds the same terms in its own order and dtype (HF's GPT-NeoX: ``pre + (attn + mlp)``), so
    the gap allowed is a few roundings at the largest term's magnitude."""
    edited = set(edited)
    layers, gaps = [], []
    for l, block in enumerate(view.blocks):
        p = f"blocks.{l}."
        if any(p + h in edited for h in _IDENTITY_HOOKS):
            continue
        terms = [acts[p + "hook_resid_pre"], acts[p + "hook_attn_out"]]
        if block.mlp is not None:
            terms.append(acts[p + "hook_mlp_out"])
        ref = acts[p + "hook_resid_post"]
        wide = _wide(ref)  # our sum adds no rounding of the model's dtype
        total = sum(t.to(wide) for t in terms)
        size = torch.stack([t.abs().max().to(wide) for t in (*terms, ref)]).max()
        layers.append(l)
        gaps.append(torch.stack([(total - ref.to(wide)).abs().max(), size]).float().to(view.device))
    if not layers:
        return
    rel = _rel(view)
    for l, (err, size) in zip(layers, torch.stack(gaps).tolist()):  # one host sync for every layer
        if not err <= rel * max(1.0, size):
            raise UnsupportedModelError(
                f"layer {l}: hook_resid_pre + hook_attn_out (+ hook_mlp_out) differs from hook_resid_post by "
                f"{err:.3g}; the model's residual stream is not the sum its hooks report, so it cannot be "
                f"decomposed. {_HOOK_HINT}"
            )


def _edits_mlp_input(name: str, p: str) -> bool:
    """Whether an edit of hook ``name`` lies between block ``p``'s stream and its MLP's pre-activations: its
    norm (``ln2.*``; on a Bridge also ``ln2.hook_out``), ``hook_mlp_in``, and the MLP's own hooks up to the
    activation (a Bridge's ``mlp.hook_in``, ``mlp.in.*``, ``mlp.gate.*``; ``mlp.hook_pre``). The stream
    hooks themselves (``hook_resid_pre`` / ``hook_resid_mid``) are not: the check reads their edited value."""
    if name.startswith(p + "ln2.") or name == p + "hook_mlp_in":
        return True
    return name.startswith(p + "mlp.") and name not in (p + "mlp.hook_post", p + "mlp.hook_out") \
        and not name.startswith(p + "mlp.out.")


def check_mlp_inputs(acts: dict[str, Tensor], view: ModelView, edited: Iterable[str] = ()) -> None:
    """Each MLP's captured pre-activations must be its keys of the clean stream (see the module docstring).

    Compared elementwise against ``‖ln2(x)‖ ‖W_:j‖ + |b_j|``, at least the size a rounding error of the
    product can reach (``Σ_k |x_k| |W_kj|``; a dot product may cancel far below it); mixture-of-experts
    blocks are not checked."""
    edited = set(edited)
    found: list[tuple[int, str]] = []
    ratios: list[Tensor] = []
    for l, block in enumerate(view.blocks):
        mlp, p = block.mlp, f"blocks.{l}."
        if not isinstance(mlp, MLPView) or any(_edits_mlp_input(name, p) for name in edited):
            continue
        x = acts[p + ("hook_resid_pre" if block.parallel else "hook_resid_mid")]
        wide = _wide(x)
        x = x.to(wide)
        if block.ln2 is not None:  # the clean stream as one component holding the norm's bias
            scale = acts.get(p + "ln2.hook_scale")
            x = apply_norm(x[None], None if scale is None else scale.to(wide), block.ln2.to(wide), _ONE)[0]
        keys = [(mlp.W_in, mlp.b_in, "mlp.hook_pre")] if mlp.kind == "standard" else \
            [(mlp.W_gate, None, "mlp.hook_pre"), (mlp.W_in, None, "mlp.hook_pre_linear")]
        for W, b, name in keys:
            ref = acts.get(p + name)
            if ref is None or W is None:
                continue
            W = W.to(device=x.device, dtype=wide)
            # the size a rounding error of x_k W_kj can reach, Σ_k |x_k| |W_kj|, bounded by ‖x‖ ‖W_:j‖ (one
            # matrix product instead of two)
            got, size = x @ W, x.norm(dim=-1, keepdim=True) * W.norm(dim=0)
            if b is not None:
                got, size = got + b.to(got), size + b.abs().to(got)
            found.append((l, name))
            ratios.append(((got - ref.to(wide)).abs() / (size + torch.finfo(wide).tiny)).max().float().to(view.device))
    if not found:
        return
    rel = _rel(view)
    for (l, name), ratio in zip(found, torch.stack(ratios).tolist()):  # one host sync for every layer
        if not ratio <= rel:
            src = "hook_resid_pre" if view.blocks[l].parallel else "hook_resid_mid"
            raise UnsupportedModelError(
                f"layer {l}: the MLP's captured pre-activation blocks.{l}.{name} is not what ln2(blocks.{l}.{src}) "
                f"gives with the captured norm scale and the MLP's weights (off by {ratio:.3g} of the size of the "
                "product); the MLP reads something its hooks do not show, and the MLP rule's split of it would be "
                f"that of another model. {_HOOK_HINT}"
            )
