"""Head, module and neuron components: what one layer writes, split, plus the rest of the stream.

Each spec starts right after the layer it splits, with the clean outputs as components, so the
components at the start are exactly TransformerLens's per-head results (``hook_result``), module
outputs or neuron writes; the replay then carries each of them through every later layer, so its
logit attribution includes its indirect effect. Output biases (``b_O``, ``b_out``) start in the bias
component. Several layers in one call replay one group per layer in a single pass (see
:mod:`depass_tl.replay.engine`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from depass_tl.coefficients import FrozenRun
from depass_tl.components.base import (
    REST, ComponentSpec, group_with_bias, layer_spec, layers_arg, multi_labels, whole_numbers,
)
from depass_tl.components.custom_spec import check_complete
from depass_tl.errors import DePassError
from depass_tl.model_view import NormView
from depass_tl.positions import per_prompt_positions
from depass_tl.replay.state import Group, InitialState
from depass_tl.replay.norm import apply_norm

__all__ = ["HeadSpec", "ModuleSpec", "NeuronSpec", "heads", "modules", "neurons"]

_RTOL = 1e-4


def _zeros_or(t: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if t is None else t.to(like)


def _refuse_post_norm_bias(norm: NormView | None, bias: Tensor | None, layer: int, what: str) -> None:
    """A post-norm over a sublayer with a bias would mix the bias into every component's share."""
    if norm is not None and (bias is not None or norm.b is not None):
        raise DePassError(
            f"{what}: layer {layer} normalises a sublayer output that includes a bias (post-norm), so the "
            "bias cannot be kept apart from the outputs it splits. Use tokens(), sources() or custom()."
        )


def _bias_label(layer: int, several: bool) -> str:
    return f"L{layer}.bias" if several else "bias"


def head_results(run: FrozenRun, layer: int, dtype: torch.dtype, what: str) -> Tensor:
    """What each head of ``layer`` adds to the residual stream, ``[head, batch, pos, d_model]``: ``z_h W_O[h]``
    (``b_V`` included, ``b_O`` not), through a post-attention norm (Gemma-2/3) with its frozen scale."""
    block = run.view.blocks[layer]
    z = run.get(f"blocks.{layer}.attn.hook_z").to(dtype)  # [batch, pos, head, d_head]
    results = torch.einsum("bphe,hed->hbpd", z, block.attn.W_O.to(device=z.device, dtype=dtype))
    if block.ln1_post is not None:  # what is added is ln1_post(Σ_h result_h + b_O), linear at the frozen scale
        _refuse_post_norm_bias(block.ln1_post, block.attn.b_O, layer, what)
        scale = run.get(f"blocks.{layer}.ln1_post.hook_scale").to(dtype)
        results = apply_norm(results, scale, block.ln1_post.to(dtype), torch.tensor([], dtype=torch.long))
    return results


def attn_start(run: FrozenRun, layer: int) -> str:
    """The first hook after attention's output is added: ``hook_resid_mid``, or ``hook_resid_post`` in an
    attention-only block or a parallel one (GPT-J, NeoX: its MLP reads ``hook_resid_pre``, not attention's output)."""
    block = run.view.blocks[layer]
    return f"blocks.{layer}.hook_resid_{'post' if block.mlp is None or block.parallel else 'mid'}"


@dataclass(frozen=True)
class HeadSpec(ComponentSpec):
    """Each head of the chosen layer(s) + the rest of the residual stream (+ bias = ``b_O``)."""

    layer: int | tuple[int, ...] | None

    def _layers(self, n_layers: int) -> tuple[int, ...]:
        return layers_arg(self.layer, n_layers, "heads()")

    def required_hooks(self, n_layers: int) -> set[str]:
        return {f"blocks.{l}.attn.hook_z" for l in self._layers(n_layers)}

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:
        layers = self._layers(run.view.n_layers)
        several = len(layers) > 1
        groups = []
        for l in layers:
            p, block = f"blocks.{l}.", run.view.blocks[l]
            results = head_results(run, l, dtype, "heads()")  # [head, batch, pos, d_model]
            start = attn_start(run, l)
            clean = run.get(start).to(dtype)
            b_O = _zeros_or(block.attn.b_O, clean[0, 0])
            # the heads must make up hook_attn_out (unless the user's hooks edit it after them: the rest holds that)
            after = [h for h in (p + "hook_attn_out", p + "attn.hook_result", p + "ln1_post.hook_normalized")
                     if h in run.edited_hooks]
            if not after:
                check_complete(torch.cat([results, b_O.expand_as(clean)[None]]), run.get(p + "hook_attn_out").to(dtype),
                               p + "hook_attn_out", _RTOL, "head outputs + b_O", model_dtype=run.view.dtype)
            # the rest: what the start holds besides the heads: resid_pre (parallel blocks: + the MLP's output, which
            # does not read the heads); where the user's hooks edited the run, whatever the start holds besides them
            if run.edited_hooks:
                rest = clean - results.sum(0) - b_O
            else:
                rest = run.get(p + "hook_resid_pre").to(dtype)
                if block.mlp is not None and block.parallel:
                    rest = rest + run.get(p + "hook_mlp_out").to(dtype)
            x = torch.cat([results, rest[None]])
            labels = [f"L{l}H{h}" for h in range(results.shape[0])] + multi_labels([REST], l, several)
            groups.append(group_with_bias(x, labels, start, b_O, bias_label=_bias_label(l, several)))
        return InitialState(tuple(groups))


def heads(layer: int | Iterable[int] | None = None) -> HeadSpec:
    """One component per attention head of ``layer`` (None: every layer), + ``rest`` + ``bias``.

    ``L{l}H{h}`` starts as the head's output ``z_h W_O[h]`` (TL's ``hook_result``; ``b_V`` rides with
    the head) at ``blocks.{l}.hook_resid_mid``; ``rest`` is the residual stream before the layer and
    ``bias`` starts as ``b_O``. In parallel blocks (GPT-J, NeoX) the start is ``hook_resid_post`` and
    ``rest`` also holds the MLP output, which does not read the heads. Several layers give one group per layer (labels ``L{l}.rest``,
    ``L{l}.bias``), replayed in one pass; the cache then holds the hooks from the last group's start.

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]),
        ...                                   components=depass_tl.heads(layer=1))
        >>> dc.labels
        ('L1H0', 'L1H1', 'rest', 'bias')
    """
    return HeadSpec(layer_spec(layer, "heads()"))


@dataclass(frozen=True)
class ModuleSpec(ComponentSpec):
    """Attention output and MLP output of the chosen layer(s) + the rest (+ bias = ``b_O + b_out``)."""

    layer: int | tuple[int, ...] | None

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:
        layers = layers_arg(self.layer, run.view.n_layers, "modules()")
        several = len(layers) > 1
        groups = []
        for l in layers:
            p, block = f"blocks.{l}.", run.view.blocks[l]
            _refuse_post_norm_bias(block.ln1_post, block.attn.b_O, l, "modules()")
            _refuse_post_norm_bias(block.ln2_post, getattr(block.mlp, "b_out", None), l, "modules()")
            clean = run.get(p + "hook_resid_post").to(dtype)
            bias = _zeros_or(block.attn.b_O, clean[0, 0])
            comps = [run.get(p + "hook_attn_out").to(dtype) - bias]
            labels = [f"L{l}.attn"]
            if block.mlp is not None:
                b_out = _zeros_or(getattr(block.mlp, "b_out", None), clean[0, 0])
                comps.append(run.get(p + "hook_mlp_out").to(dtype) - b_out)
                labels.append(f"L{l}.mlp")
                bias = bias + b_out
            # the rest: resid_pre; where the user's hooks edited the run, whatever resid_post holds besides the modules
            rest = clean - sum(comps) - bias if run.edited_hooks else run.get(p + "hook_resid_pre").to(dtype)
            x = torch.stack(comps + [rest])
            labels += multi_labels([REST], l, several)
            groups.append(group_with_bias(x, labels, p + "hook_resid_post", bias, bias_label=_bias_label(l, several)))
        return InitialState(tuple(groups))


def modules(layer: int | Iterable[int] | None = None) -> ModuleSpec:
    """The attention output ``L{l}.attn`` and MLP output ``L{l}.mlp`` of ``layer``, + ``rest`` + ``bias``.

    Starts at ``blocks.{l}.hook_resid_post``; the output biases start in ``bias``.

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]),
        ...                                   components=depass_tl.modules(layer=0))
        >>> dc.labels
        ('L0.attn', 'L0.mlp', 'rest', 'bias')
    """
    return ModuleSpec(layer_spec(layer, "modules()"))


@dataclass(frozen=True)
class NeuronSpec(ComponentSpec):
    """Chosen MLP neurons' writes + the rest of the MLP + the rest of the stream (+ bias = ``b_out``)."""

    layer: int | tuple[int, ...] | None
    idx: tuple[int, ...] | None
    top_k: int | None
    pos: int

    def _neurons(self, run: FrozenRun, l: int, d_mlp: int, W_out: Tensor) -> list[int]:
        if self.idx is not None:
            bad = [n for n in self.idx if not 0 <= n < d_mlp]
            if bad:
                raise DePassError(f"neurons(): indices {bad} are out of range for d_mlp={d_mlp}.")
            return list(self.idx)
        assert self.top_k is not None
        post = run.get(f"blocks.{l}.mlp.hook_post")  # [batch, pos, d_mlp]
        # size of each neuron's write at `pos` (negative: back from each prompt's last real token), summed over the batch
        at = post[torch.arange(post.shape[0], device=post.device),
                  per_prompt_positions(self.pos, run.last_real_positions.to(post.device), run.n_pos, "neurons(): pos")]
        score = at.abs().sum(0) * W_out.norm(dim=-1)
        return sorted(torch.topk(score, min(self.top_k, d_mlp)).indices.tolist())

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:
        layers = layers_arg(self.layer, run.view.n_layers, "neurons()")
        several = len(layers) > 1
        groups: list[Group] = []
        for l in layers:
            p, mlp = f"blocks.{l}.", run.view.blocks[l].mlp
            if mlp is None:
                raise DePassError(f"neurons(): layer {l} has no MLP (attention-only model).")
            if not hasattr(mlp, "W_out"):
                raise DePassError(f"neurons(): layer {l} is a mixture of experts; its neurons belong to experts. "
                                  "Use modules() or tokens() on this model.")
            W_out = mlp.W_out.to(dtype)
            chosen = self._neurons(run, l, W_out.shape[0], W_out)
            post = run.get(p + "mlp.hook_post").to(dtype)
            writes = post[..., chosen].permute(2, 0, 1)[..., None] * W_out[chosen][:, None, None]  # [n, batch, pos, d]
            b_out = _zeros_or(mlp.b_out, W_out[0])
            post_norm = run.view.blocks[l].ln2_post
            if post_norm is not None:  # Gemma-2/3: what is added is ln2_post(Σ_n write_n + b_out)
                _refuse_post_norm_bias(post_norm, mlp.b_out, l, "neurons()")
                scale = run.get(p + "ln2_post.hook_scale").to(dtype)
                writes = apply_norm(writes, scale, post_norm.to(dtype), torch.tensor([], dtype=torch.long))
            mlp_rest = run.get(p + "hook_mlp_out").to(dtype) - b_out - writes.sum(0)
            before_mlp = run.get(p + "hook_resid_post").to(dtype) - run.get(p + "hook_mlp_out").to(dtype)
            x = torch.cat([writes, mlp_rest[None], before_mlp[None]])  # rest: resid_mid (parallel: pre + attn)
            labels = [f"L{l}N{n}" for n in chosen] + [f"L{l}.mlp_rest"] + multi_labels([REST], l, several)
            groups.append(group_with_bias(x, labels, p + "hook_resid_post", b_out, bias_label=_bias_label(l, several)))
        if len({len(g.labels) for g in groups}) > 1:
            raise DePassError("neurons(): every layer must contribute the same number of neurons in one call.")
        return InitialState(tuple(groups))


def neurons(
    layer: int | Iterable[int] | None = None,
    *,
    idx: Sequence[int] | None = None,
    top_k: int | None = None,
    pos: int = -1,
) -> NeuronSpec:
    """Chosen MLP neurons of ``layer`` as components: ``L{l}N{n}`` = ``post_n · W_out[n]``.

    Give either ``idx`` (neuron indices) or ``top_k`` (the k neurons with the largest write
    ``|post_n| · ‖W_out[n]‖`` at position ``pos``, summed over the batch; negative positions count back from
    each prompt's last real token in a padded batch, :mod:`depass_tl.positions`). The rest of the MLP output
    is ``L{l}.mlp_rest``, the residual before the MLP is ``rest``, and ``b_out`` starts in ``bias``;
    the replay starts at ``blocks.{l}.hook_resid_post``.

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]),
        ...                                   components=depass_tl.neurons(0, idx=[3, 7]))
        >>> dc.labels
        ('L0N3', 'L0N7', 'L0.mlp_rest', 'rest', 'bias')
    """
    if (idx is None) == (top_k is None):
        raise DePassError("neurons(): give exactly one of idx=[...] or top_k=k.")
    if top_k is not None:
        (top_k,) = whole_numbers([top_k], "neurons(): top_k")
        if top_k < 1:
            raise DePassError(f"neurons(): top_k must be >= 1, got {top_k}.")
    if idx is not None:
        idx = whole_numbers(idx, "neurons(): idx")
        if not idx or len(set(idx)) != len(idx):
            raise DePassError(f"neurons(): idx must be non-empty and distinct, got {list(idx)}.")
    (pos,) = whole_numbers([pos], "neurons(): pos")
    return NeuronSpec(layer_spec(layer, "neurons()"), idx, top_k, pos)
