"""Capture: run the model once under scoped hooks and freeze what the replay needs.

This is the only module that registers hooks. It uses ``model.run_with_cache`` (whose hooks live in a
``model.hooks(...)`` context and are removed in a ``finally``, also when the forward raises), keeps
only the hooks the replay needs, and never modifies the model. ``HookedTransformer`` and
``TransformerBridge`` are captured by the same code: the Bridge registers the HookedTransformer hook
names in both of its modes, and :func:`depass_tl.backends.read_model_view` absorbs the weight
differences. TL 2.x has no ``unembed.hook_in``; it is rebuilt from the frozen final norm scale.

Hooks the user attached before the call stay where they are and take part in the run; where they
change an activation, that is recorded (``FrozenRun.edited_hooks``) by a probe around each such hook
point, removed in a ``finally`` too (:mod:`depass_tl.foreign_hooks` says which edits a replay
follows). A capture holds the model's lock (:func:`depass_tl.model_state.model_lock`) from reading
the model to the end of the forward pass, so captures of one model from several threads never see
each other's hooks. The model is checked first (:mod:`depass_tl.model_state`: real, finite weights,
nothing random in training mode) and the clean run after (no NaN or inf).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl._checks import checked
from depass_tl._types import TOKENS_HINT, Model, TextOrTokens
from depass_tl.backends import backend_for, read_model_view
from depass_tl.clean_checks import check_mlp_inputs, check_residual_identity
from depass_tl.coefficients import FrozenRun
from depass_tl.errors import DePassError, UnsupportedModelError
from depass_tl.foreign_hooks import hook_position
from depass_tl.model_state import check_finite, check_model_state, check_real_weights, model_lock
from depass_tl.model_view import ModelView, MoEView
from depass_tl.replay.device import block_device, norm_device
from depass_tl.replay.norm import apply_norm
from depass_tl.tokenization import single_token_fn, to_tokens, tokens_and_mask

__all__ = ["capture", "to_tokens", "tokens_and_mask", "single_token_fn"]  # the last three: depass_tl.tokenization


def _needed_hooks(view: ModelView, hook_dict: dict[str, Any]) -> set[str]:
    names = {"hook_embed", "blocks.0.hook_resid_pre", "ln_final.hook_scale"}
    if view.has_pos_embed_in_resid:
        names.add("hook_pos_embed")
    if "unembed.hook_in" in hook_dict:
        names.add("unembed.hook_in")
    for l, block in enumerate(view.blocks):
        p = f"blocks.{l}."
        names |= {p + "hook_resid_pre", p + "hook_attn_out", p + "hook_resid_post", p + "attn.hook_pattern"}
        names.add(p + "ln1.hook_scale")
        if block.ln1_post is not None:
            names.add(p + "ln1_post.hook_scale")
        if block.attn.clip_qkv is not None:
            names.add(p + "attn.hook_v")  # TL clamps v after hook_v: this is the pre-clamp value
        if block.mlp is None:
            continue
        names |= {p + "hook_mlp_out", p + "ln2.hook_scale"}
        if not block.parallel:
            names.add(p + "hook_resid_mid")
        if block.ln2_post is not None:
            names.add(p + "ln2_post.hook_scale")
        if isinstance(block.mlp, MoEView):
            names |= {p + "mlp.hook_expert_weights", p + "mlp.hook_expert_indices"}
            for e in range(len(block.mlp.experts)):
                names |= {f"{p}mlp.experts.{e}.hook_gate", f"{p}mlp.experts.{e}.hook_post"}
            continue
        names |= {p + "mlp.hook_pre", p + "mlp.hook_post"}
        if block.mlp.kind == "gated":
            names.add(p + "mlp.hook_pre_linear")
        if block.mlp.ln is not None:
            names |= {p + "mlp.hook_mid", p + "mlp.ln.hook_scale"}
    return {n for n in names if n in hook_dict}


def _per_position_scale(acts: dict[str, Tensor], name: str) -> None:
    """``use_split_qkv_input`` / ``use_attn_in`` give ``ln1.hook_scale`` a head axis ``[batch, pos, head, 1]``.

    Every head normalises the same residual vector, so the scales agree; keep one ``[batch, pos, 1]``.
    """
    scale = acts.get(name)
    if scale is None or scale.ndim != 4:
        return
    if not bool((scale == scale[:, :, :1]).all()):
        raise UnsupportedModelError(
            f"{name} differs between heads (shape {tuple(scale.shape)}); per-head norm inputs are not replayed. "
            "Turn off cfg.use_split_qkv_input / cfg.use_attn_in, or do not edit the per-head inputs."
        )
    acts[name] = scale[:, :, 0]


def _moe_coefficients(acts: dict[str, Tensor], l: int, moe: MoEView, mlp: Any, batch_pos: int) -> None:
    """Freeze Mixtral routing exactly as TL's ``MoE.forward`` computes it.

    ``hook_expert_weights`` is the float32 softmax over all experts before top-k; the top-k weights of
    the chosen experts (``hook_expert_indices``) are renormalised when ``cfg.norm_topk_prob``. TL then
    visits, for expert e, the (slot, token) pairs of ``torch.where`` on the one-hot routing mask (slot
    first), which is the row order of ``experts.e.hook_gate`` / ``hook_post``.
    """
    p = f"blocks.{l}.mlp."
    probs = acts[p + "hook_expert_weights"]  # [batch*pos, n_experts]
    indices = acts[p + "hook_expert_indices"]  # [batch*pos, k]
    weights = probs.gather(-1, indices)
    if moe.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = weights.to(mlp.experts[0].W_in.weight.dtype)
    one_hot = torch.nn.functional.one_hot(indices, num_classes=len(moe.experts)).permute(2, 1, 0)
    for e in range(len(moe.experts)):
        slot, token = torch.where(one_hot[e])
        q = f"{p}experts.{e}."
        acts[q + "tokens"] = token  # flat index batch * n_pos + pos, in TL's row order
        acts[q + "route_weight"] = weights[token, slot]
        gate = acts.get(q + "hook_gate")
        if gate is None:  # an expert that no token chose: its hooks do not fire
            d_mlp = moe.experts[e].W_in.shape[1]
            gate = acts[q + "hook_gate"] = weights.new_zeros((0, d_mlp))
            acts[q + "hook_post"] = gate.clone()
        acts[q + "gate_act"] = mlp.experts[e].act_fn(gate).clone()
        assert gate.shape[0] == token.shape[0] and (token.numel() == 0 or int(token.max()) < batch_pos)


def _act_fn(mlp: Any, name: str, layer: int) -> Any:
    """The MLP's activation function: the module's own (HookedTransformer, gated MLP bridges), else TL's
    function named by ``cfg.act_fn`` (a non-gated ``MLPBridge`` has no ``act_fn``)."""
    fn = getattr(mlp, "act_fn", None)
    if callable(fn):
        return fn
    try:
        from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS
    except ImportError:  # TL 2.x keeps no table; its MLPs always carry act_fn
        SUPPORTED_ACTIVATIONS = {}
    if name in SUPPORTED_ACTIVATIONS:
        return SUPPORTED_ACTIVATIONS[name]
    raise UnsupportedModelError(
        f"blocks.{layer}.mlp has no act_fn and cfg.act_fn={name!r} is not a TransformerLens activation; "
        "cannot freeze the gate activation."
    )


def _unflatten_positions(acts: dict[str, Tensor], shape: torch.Size) -> None:
    """Give ``[batch * pos, d]`` hooks back their ``[batch, pos, d]`` shape.

    Some Hugging Face blocks behind a TransformerBridge (OPT) flatten batch and position before the
    MLP, so ``ln2.hook_scale``, ``mlp.hook_pre`` / ``hook_post`` and ``hook_mlp_out`` arrive as
    ``[batch * pos, d]``. Every per-position hook the replay reads has three or more axes, so a
    two-axis tensor with ``batch * pos`` rows is such a flattened one. MoE hooks are left alone: the
    router's ``hook_expert_weights`` / ``hook_expert_indices`` are ``[batch * pos, ...]`` by design and
    the experts' hooks have one row per routed token.
    """
    batch, pos = shape
    for name, value in acts.items():
        if value.ndim == 2 and value.shape[0] == batch * pos and "expert" not in name:
            acts[name] = value.reshape(batch, pos, value.shape[1])


def _frozen_coefficients(acts: dict[str, Tensor], view: ModelView, model: Any, tokens: Tensor) -> None:
    """Add the coefficients the replay needs that are functions of captured hooks (not TL hooks)."""
    for l, block in enumerate(view.blocks):
        p = f"blocks.{l}."
        _per_position_scale(acts, p + "ln1.hook_scale")
        if block.attn.clip_qkv is not None:
            v = acts[p + "attn.hook_v"]  # [batch, pos, kv_head, d_head], before the clamp
            c = block.attn.clip_qkv
            nonzero = v != 0
            ratio = v.clamp(-c, c) / torch.where(nonzero, v, torch.ones_like(v))
            acts[p + "attn.clip_ratio"] = torch.where(nonzero, ratio, torch.ones_like(v))
        mlp = block.mlp
        if isinstance(mlp, MoEView):
            _moe_coefficients(acts, l, mlp, model.blocks[l].mlp, tokens.numel())
        elif mlp is not None and mlp.kind == "gated":
            acts[p + "mlp.gate_act"] = _act_fn(model.blocks[l].mlp, mlp.act_fn, l)(acts[p + "mlp.hook_pre"]).clone()
        elif mlp is not None and mlp.solu:  # solu(pre) = pre * softmax(pre): freeze the softmax vector
            acts[p + "mlp.solu_softmax"] = torch.softmax(acts[p + "mlp.hook_pre"], dim=-1)


def _place_on_block_devices(acts: dict[str, Tensor], view: ModelView) -> None:
    """Move each frozen tensor to the device of the weights that read it (no-op on one device).

    A model split over devices (TL's ``n_devices``, an HF ``device_map``) records some hooks on the
    device of the previous block: a Bridge block's ``hook_resid_pre`` is its input, captured before
    accelerate moves it. Afterwards ``blocks.{l}.*`` lives on block l's device, the embeddings on
    block 0's, and ``unembed.hook_in`` / ``ln_final.hook_scale`` on the final norm's, so every
    component spec and the replay combine tensors of one device.
    """
    devices = [block_device(b) for b in view.blocks]
    final = norm_device(view.ln_final, devices[-1])
    for name, t in acts.items():
        if name.startswith("blocks."):
            dev = devices[int(name.split(".", 2)[1])]
        elif name in ("hook_embed", "hook_pos_embed"):
            dev = devices[0]
        elif name in ("unembed.hook_in", "ln_final.hook_scale"):
            dev = final
        else:
            continue
        if t.device != dev:
            acts[name] = t.to(dev)


@checked(hints={
    "input": TOKENS_HINT, "padding_side": "padding_side must be 'left' or 'right'",
    "attention_mask": "attention_mask must be an integer or bool tensor of 0/1 shaped like the tokens",
})
def capture(
    model: Model,
    input: TextOrTokens,
    *,
    prepend_bos: bool | None = None,
    extra_hooks: Iterable[str] = (),
    padding_side: Literal["left", "right"] | None = None,
    attention_mask: Tensor | None = None,
) -> FrozenRun:
    """Run ``model`` once on ``input`` and freeze the clean activations and coefficients.

    Args:
        model: a ``HookedTransformer`` or a ``TransformerBridge``.
        input: a string, a list of strings (padded when their lengths differ), or ``[batch, pos]``
            token ids.
        prepend_bos: passed to ``model.to_tokens`` for string input (None: the model's default).
        extra_hooks: further TL hook names to keep (e.g. ``blocks.3.attn.hook_z`` for head components).
        padding_side: ``"left"`` or ``"right"`` for prompts of different lengths (None: the
            tokenizer's ``padding_side``).
        attention_mask: ``[batch, pos]`` 0/1 (1 = real token) for padded token-id input; passed to
            the model's forward. Padded positions carry no attribution (see the replay engine).

    Returns:
        A :class:`~depass_tl.coefficients.FrozenRun`. No hook stays attached to the model.

    Raises:
        DePassError: bad input or an unsupported model.

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> run = depass_tl.capture(random_model(**cfg), torch.tensor([[1, 2, 3]]))
        >>> run.acts["blocks.0.attn.hook_pattern"].shape
        torch.Size([1, 2, 3, 3])
    """
    backend_for(model)  # an object some backend reads, before looking inside it
    with model_lock(model):
        check_real_weights(model)
        view = read_model_view(model)  # refuses what the replay does not handle, before the weights are scanned
        check_model_state(model)
        tokens, mask = tokens_and_mask(
            model, input, prepend_bos=prepend_bos, padding_side=padding_side, attention_mask=attention_mask
        )
        hook_dict = model.hook_dict
        names = _needed_hooks(view, hook_dict)
        extra = set(extra_hooks)
        unknown = sorted(extra - set(hook_dict))
        if unknown:
            raise DePassError(f"unknown hook name(s) {unknown}; see model.hook_dict for the hooks this model has.")
        names |= extra
        kwargs: dict[str, Any] = {} if mask is None else {"attention_mask": mask}
        foreign = _foreign_hook_points(hook_dict)
        with torch.no_grad(), _edit_probes(foreign) as edited:
            logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, **kwargs)
        acts: dict[str, Tensor] = {name: cache[name].detach().clone() for name in names if name in cache}
        str_tokens = None
        if getattr(model, "tokenizer", None) is not None:
            str_tokens = [model.to_str_tokens(row) for row in tokens]
    _unflatten_positions(acts, tokens.shape)
    check_finite(logits, acts, sorted(acts, key=_forward_order), model)
    _place_on_block_devices(acts, view)
    every_name = {alias for name in edited for alias in foreign[name][1]}  # a Bridge's hook points have several
    check_residual_identity(acts, view, every_name)
    check_mlp_inputs(acts, view, every_name)
    with torch.no_grad():
        _frozen_coefficients(acts, view, model, tokens)
    if "unembed.hook_in" not in acts:  # TL 2.x has no unembed hooks: rebuild from the frozen final scale
        final = acts[f"blocks.{view.n_layers - 1}.hook_resid_post"]
        acts["unembed.hook_in"] = apply_norm(final[None], acts.get("ln_final.hook_scale"), view.ln_final,
                                             torch.tensor([0]))[0]  # the clean stream as one component
    return FrozenRun.build(
        tokens=tokens, logits=logits.detach(), acts=acts, view=view, str_tokens=str_tokens, attention_mask=mask,
        foreign_hooks=tuple(foreign), edited_hooks=tuple(n for n in foreign if n in edited),
        hook_aliases={name: tuple(names) for name, (_, names) in foreign.items()},
        to_single_token=single_token_fn(model),
    )


def _forward_order(name: str) -> tuple[int, str]:
    position = hook_position(name)
    return (1 << 30 if position is None else position, name)


def _display_name(names: list[str]) -> str:
    """One name for a hook point registered under several (the Bridge's aliases): TransformerLens's
    ``HookedTransformer`` name (``hook_mlp_out``, not ``mlp.hook_out``) where there is one."""
    def rank(name: str) -> tuple[bool, int]:
        last = name.rsplit(".", 1)[-1]
        return (last in ("hook_in", "hook_out") or not last.startswith("hook_"), names.index(name))

    return min(names, key=rank)


def _foreign_hook_points(hook_dict: dict[str, Any]) -> dict[str, tuple[Any, list[str]]]:
    """Hook points holding forward hooks when depass_tl starts (the user's): display name -> (point, names)."""
    aliases: dict[int, tuple[Any, list[str]]] = {}
    for name, point in hook_dict.items():
        aliases.setdefault(id(point), (point, []))[1].append(name)
    return {
        _display_name(names): (point, names)
        for point, names in aliases.values()
        if getattr(point, "_forward_hooks", None) or getattr(point, "_forward_pre_hooks", None)
    }


@contextmanager
def _edit_probes(points: dict[str, tuple[Any, list[str]]]) -> Iterator[set[str]]:
    """Record which of ``points`` (hook points with the user's hooks) change the activation in the run.

    Around each point, a forward pre-hook placed before every other keeps a copy of the input, and a
    forward hook placed after the user's compares it with the output. The probes are removed on exit,
    also when the forward raises. Yields the set of names (filled during the run).
    """
    edited: set[str] = set()
    handles = []

    def probes(name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        seen: list[Tensor | None] = []

        def before(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            seen.append(x.detach().clone() if isinstance(x, Tensor) else None)

        def after(module: Any, args: tuple[Any, ...], output: Any) -> None:
            x = seen.pop() if seen else None
            same = isinstance(x, Tensor) and isinstance(output, Tensor) and x.shape == output.shape
            if not (same and torch.equal(x, output)):
                edited.add(name)

        return before, after

    try:
        for name, (point, _) in points.items():
            before, after = probes(name)
            handles.append(point.register_forward_pre_hook(before, prepend=True))
            handles.append(point.register_forward_hook(after))
        yield edited
    finally:
        for handle in handles:
            handle.remove()
