"""Attributions of one scalar target, by a forward replay or by reverse mode (one backward pass).

Under a linear MLP rule (``ratio``) the replay is an affine map of the initial components, so each
component's share of a scalar target ``t = <d, f(x)[hook, pos]>`` (a logit, a logit difference, a
direction at a residual-stream hook) is ``<∇_x t, x_c>``: one backward pass gives every share
(:mod:`depass_tl.replay.reverse`). The numbers equal the forward replay's ``cache.logit_attrs(...)``
up to float rounding (tested to 1e-10 in float64 on every supported architecture) at a cost of about
three replays of two components instead of one replay of C components.

Reverse mode needs linearity: it is refused for ``softmax`` / ``max`` (whose shares depend on all
components together) and for :func:`depass_tl.sources` (whose components receive mass from others).
``mode="auto"`` picks reverse whenever it is allowed and cheaper, else the forward replay.

The result is a :class:`ScalarAttribution`: ``values [component, batch]`` with ``labels``, no
per-hook tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl._checks import checked
from depass_tl._types import COMPONENTS_HINT, TOKENS_HINT, Model, TextOrTokens
from depass_tl.capture import capture
from depass_tl.coefficients import FrozenRun
from depass_tl.components import ComponentSpec, TokenSpec
from depass_tl.errors import DePassError, DePassTypeError, DePassValueError
from depass_tl.foreign_hooks import check_edits
from depass_tl.guard import check_values, tolerance
from depass_tl.memory import parse_memory
from depass_tl.positions import per_prompt_positions
from depass_tl.replay.engine import replay_components
from depass_tl.replay.reverse import forward_cost, project, reverse_token_values, reverse_values
from depass_tl.replay.rules import DEFAULT_TEMPERATURE, MLPRule, RuleLike, get_rule, iter_rules
from depass_tl.replay.state import FINAL_HOOK, InitialState, parse_start_hook, stage_index, stored_hook_names
from depass_tl.tokenization import AnswerTokens, answer_ids

__all__ = ["ScalarTarget", "logit_target", "direction_target", "ScalarAttribution", "attribute", "attribute_run"]

Mode = Literal["auto", "forward", "reverse"]
TokenLike = AnswerTokens
REVERSE_COST = 4  # a reverse pass ≈ a forward of 2 components per group + a backward (≈ 2 forwards) of one


@dataclass(frozen=True)
class ScalarTarget:
    """A scalar per prompt: ``<direction, activation at hook, pos>`` (+ ``b_U`` terms for logits).

    Build one with :func:`logit_target` or :func:`direction_target`.
    """

    hook: str
    pos: int
    tokens: TokenLike | None = None
    incorrect_tokens: TokenLike | None = None
    direction: Tensor | None = None


def logit_target(tokens: TokenLike, incorrect_tokens: TokenLike | None = None, *, pos: int = -1) -> ScalarTarget:
    """The logit of ``tokens`` (minus that of ``incorrect_tokens``) at ``pos`` (-1: each prompt's last real token).

    Soft-capped models: the pre-cap logit, which is what sums exactly (as in ``DePassCache``).
    """
    return ScalarTarget(FINAL_HOOK, pos, tokens=tokens, incorrect_tokens=incorrect_tokens)


def direction_target(hook: str, direction: Tensor, *, pos: int = -1) -> ScalarTarget:
    """``<direction, activation>`` at a residual-stream hook (``blocks.{l}.hook_resid_post`` ...) and ``pos``.

    ``direction`` is ``[d_model]`` or one per prompt ``[batch, d_model]``.
    """
    if not isinstance(direction, Tensor) or direction.ndim not in (1, 2) or not direction.is_floating_point():
        raise DePassTypeError("direction must be a floating-point tensor [d_model] or [batch, d_model].")
    if not bool(torch.isfinite(direction).all()):
        raise DePassValueError("direction holds NaN or inf values; give a finite direction.")
    return ScalarTarget(hook, pos, direction=direction)


@dataclass(frozen=True)
class ScalarAttribution:
    """Each component's share of a scalar target, per prompt.

    Attributes:
        values: ``[component, batch]``; each group of ``group_size`` components sums to ``target``.
        labels: one per component (axis 0).
        target: ``[batch]`` the clean value of the target.
        group_size: components per group (each group is a full partition).
        mode: ``"forward"`` or ``"reverse"``: how the values were computed.
        mlp_rule: the MLP rule.
    """

    values: Tensor
    labels: tuple[str, ...]
    target: Tensor
    group_size: int
    mode: str
    mlp_rule: str

    def __getitem__(self, label: str) -> Tensor:
        """The ``[batch]`` attributions of the component with this label."""
        try:
            return self.values[self.labels.index(label)]
        except ValueError as e:
            raise DePassError(f"no component labelled {label!r}; labels are {list(self.labels)}.") from e

    def completeness_error(self, *, relative: bool = False) -> float:
        """Max over groups and prompts of ``|Σ_c values - target|``."""
        K = self.group_size
        total = self.values.reshape(-1, K, self.values.shape[1]).sum(1)
        err = float((total - self.target.to(total.dtype)).abs().max())
        return err / max(float(self.target.abs().max()), 1e-30) if relative else err

    def to_dataframe(self) -> Any:
        """A long ``pandas.DataFrame``: columns ``batch``, ``component``, ``label``, ``attribution``."""
        import pandas as pd

        return pd.DataFrame(
            [
                {"batch": b, "component": c, "label": label, "attribution": float(self.values[c, b])}
                for b in range(self.values.shape[1])
                for c, label in enumerate(self.labels)
            ]
        )


@dataclass(frozen=True)
class _Resolved:
    """A target made concrete: positions ``[batch]``, direction ``[batch, d_model]``, the ``b_U`` offset
    ``[batch]`` (logit targets) and the model's own logit (difference) ``[batch]`` (uncapped logit targets)."""

    pos: Tensor
    direction: Tensor
    offset: Tensor | None = None
    model_value: Tensor | None = None


def _resolve(
    run: FrozenRun, target: ScalarTarget, dtype: torch.dtype, to_single_token: Callable[[str], int] | None
) -> _Resolved:
    B = run.batch
    pos = per_prompt_positions(target.pos, run.last_real_positions, run.n_pos, "pos")  # negative: back from the last real token
    view = run.view
    if target.direction is not None:
        d = target.direction.to(dtype)
        if d.shape[-1] != view.d_model or (d.ndim == 2 and d.shape[0] not in (1, B)):
            raise DePassValueError(
                f"direction has shape {tuple(d.shape)}; expected [{view.d_model}] or [{B}, {view.d_model}]."
            )
        return _Resolved(pos, d.expand(B, view.d_model))
    assert target.tokens is not None
    ids = answer_ids(target.tokens, B, view.d_vocab, to_single_token)
    W_U = view.W_U
    direction = W_U[:, ids.to(W_U.device)].T.to(dtype)  # [batch, d_model]: only the requested columns
    offset = None if view.b_U is None else view.b_U[ids.to(W_U.device)].to(dtype)
    logits = run.logits[torch.arange(B, device=run.logits.device), pos.to(run.logits.device)].to(dtype)
    model_value = logits.gather(1, ids.to(logits.device)[:, None])[:, 0]
    if target.incorrect_tokens is not None:
        bad = answer_ids(target.incorrect_tokens, B, view.d_vocab, to_single_token)
        direction = direction - W_U[:, bad.to(W_U.device)].T.to(dtype)
        if view.b_U is not None:
            offset = offset - view.b_U[bad.to(W_U.device)].to(dtype)  # type: ignore[operator]
        model_value = model_value - logits.gather(1, bad.to(logits.device)[:, None])[:, 0]
    capped = view.output_logits_soft_cap is not None  # the shares are of the pre-cap logits
    return _Resolved(pos, direction, offset, None if capped else model_value)


def choose_mode(run: FrozenRun, init: InitialState, rule: MLPRule, mode: str) -> str:
    """``forward`` or ``reverse`` for ``mode``; raises when reverse is asked for but not exact."""
    if mode not in ("auto", "forward", "reverse"):
        raise DePassError(f"mode must be 'auto', 'forward' or 'reverse'; got {mode!r}.")
    why = None
    if not rule.linear:
        linear = ", ".join(repr(r.name) for r in iter_rules() if r.linear)
        why = f"mlp_rule={rule.name!r} is not linear in the components (linear rules: {linear})"
    elif init.sources is not None:
        why = "sources() moves mass between components, so a component's share is not <gradient, component>"
    if mode == "reverse" and why is not None:
        raise DePassError(f"mode='reverse' needs a linear replay: {why}. Use mode='forward' or mlp_rule='ratio'.")
    if mode != "auto":
        return mode
    if why is not None:
        return "forward"
    reverse_cost = REVERSE_COST * len(init.groups) * run.n_pos
    return "reverse" if reverse_cost < forward_cost(run, init) else "forward"


MODE_HINT = "mode must be 'auto', 'forward' or 'reverse'"


@checked(hints={"components": COMPONENTS_HINT, "mode": MODE_HINT})
def attribute_run(
    run: FrozenRun,
    target: ScalarTarget | TokenLike,
    components: ComponentSpec | None = None,
    *,
    mlp_rule: RuleLike = "ratio",
    temperature: float = DEFAULT_TEMPERATURE,
    mode: Mode = "auto",
    dtype: torch.dtype | None = None,
    to_single_token: Callable[[str], int] | None = None,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
) -> ScalarAttribution:
    """:func:`attribute` on a captured run (capture once, attribute many targets)."""
    to_single_token = run.to_single_token if to_single_token is None else to_single_token  # the capture's tokenizer
    spec = TokenSpec() if components is None else components
    rule = get_rule(mlp_rule, temperature=temperature)
    if not isinstance(target, ScalarTarget):
        target = logit_target(target)
    if dtype is None:
        dtype = torch.float64 if run.view.dtype == torch.float64 else torch.float32
    P = run.n_pos
    token_reverse_cheaper = REVERSE_COST * P < P * (P + 1) // 2 + P  # the forward cost of causal token chunks
    if _plain_tokens(spec) and rule.linear and (mode == "reverse" or (mode == "auto" and token_reverse_cheaper)):
        return _reverse_tokens(run, spec, target, dtype, to_single_token, rule)  # type: ignore[arg-type]
    spec.check_captured(run)
    init = spec.init(run, dtype)
    chosen = choose_mode(run, init, rule, mode)
    _check_target_hook(target, init.stored_hook_names(run.view))
    check_edits(run.edited_hooks, [g.start_hook for g in init.groups], run.view, rule, run.hook_aliases)
    r = _resolve(run, target, dtype, to_single_token)
    K = init.group_size
    budget = None if max_memory is None else parse_memory(max_memory)
    if chosen == "forward":
        acts = replay_components(
            run, init, mlp_rule=rule, dtype=dtype, keep=lambda n: n == target.hook, chunk_size=chunk_size,
            max_memory=budget,
        )
        values = project(acts[target.hook], r.pos, r.direction)
    else:
        values = reverse_values(run, init, target.hook, r.pos, r.direction, dtype, rule)
    return _checked_result(run, target, values, init.labels, K, chosen, rule, r, dtype)


def _check_target_hook(target: ScalarTarget, names: list[str]) -> None:
    if target.hook not in names:
        raise DePassValueError(
            f"target hook {target.hook!r} is not produced by this replay; use one of {names} "
            "(residual-stream hooks at or after the start hook)."
        )


def _checked_result(
    run: FrozenRun, target: ScalarTarget, values: Tensor, labels: tuple[str, ...], K: int, mode: str, rule: MLPRule,
    r: _Resolved, dtype: torch.dtype,
) -> ScalarAttribution:
    """The result, after the completeness guard (:mod:`depass_tl.guard`): each group of ``values`` sums to
    the clean target; for an uncapped logit target, to the model's own logit (difference)."""
    if r.offset is not None:
        values[K - 1 :: K] += r.offset.to(values.device)
    clean = project(run.get(target.hook).to(dtype)[None], r.pos, r.direction)[0]
    if r.offset is not None:
        clean = clean + r.offset.to(clean.device)
    check = clean if r.model_value is None else r.model_value
    rtol, how = tolerance(dtype, run.view.clean_run_dtype, of="shares")
    check_values(
        values.detach(), check.to(values.device), K, rtol=rtol, how=how, foreign_hooks=run.foreign_hooks,
        name=f"the target ({mode} mode, {target.hook})",
    )
    return ScalarAttribution(values.detach(), labels, clean, K, mode, rule.name)


def _plain_tokens(spec: ComponentSpec) -> bool:
    return type(spec) is TokenSpec and not spec.separate_pos_embed


def _reverse_tokens(
    run: FrozenRun, spec: TokenSpec, target: ScalarTarget, dtype: torch.dtype,
    to_single_token: Callable[[str], int] | None, rule: MLPRule,
) -> ScalarAttribution:
    """Reverse mode for :func:`depass_tl.tokens` without the dense start (:func:`reverse_token_values`)."""
    entry = stage_index(*parse_start_hook(spec.start, run.view))
    _check_target_hook(target, stored_hook_names(run.view, entry, entry, spec.start))
    check_edits(run.edited_hooks, [spec.start], run.view, rule, run.hook_aliases)
    r = _resolve(run, target, dtype, to_single_token)
    values = reverse_token_values(run, spec.start, target.hook, r.pos, r.direction, dtype, rule)
    labels = tuple(f"tok{p}" for p in range(run.n_pos)) + ("bias",)
    return _checked_result(run, target, values, labels, len(labels), "reverse", rule, r, dtype)


@checked(hints={
    "input": TOKENS_HINT, "components": COMPONENTS_HINT, "mode": MODE_HINT,
    "padding_side": "padding_side must be 'left' or 'right'",
})
def attribute(
    model: Model,
    input: TextOrTokens,
    *,
    target: ScalarTarget | TokenLike,
    components: ComponentSpec | None = None,
    mlp_rule: RuleLike = "ratio",
    temperature: float = DEFAULT_TEMPERATURE,
    mode: Mode = "auto",
    dtype: torch.dtype | None = None,
    prepend_bos: bool | None = None,
    attention_mask: Tensor | None = None,
    padding_side: Literal["left", "right"] | None = None,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
) -> ScalarAttribution:
    """Each component's share of one scalar target (a logit, a logit difference, a direction at a hook).

    Args:
        model: a ``transformer_lens.HookedTransformer``.
        input: as for :func:`depass_tl.run_with_depass`.
        target: a :class:`ScalarTarget` (:func:`logit_target`, :func:`direction_target`) or an answer
            token (string, id, or one per prompt): its logit at each prompt's last real token.
        components: what to attribute to (default: tokens).
        mlp_rule: ``ratio`` (default here: linear, so reverse mode applies), ``softmax`` or ``max``.
        mode: ``reverse`` (one backward pass through the frozen-linearised model; ``ratio`` only),
            ``forward`` (the decomposed replay, projected on the target) or ``auto`` (reverse when it is
            exact and cheaper).
        dtype, prepend_bos, attention_mask, padding_side, temperature: as for ``run_with_depass``.
        chunk_size, max_memory: for the forward replay (see ``run_with_depass``).

    Returns:
        A :class:`ScalarAttribution` (``values [component, batch]``, ``labels``, ``target``).

    Examples:
        >>> import torch
        >>> from depass_tl.reverse import attribute
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4,
        ...            d_mlp=32, d_vocab=50, act_fn="gelu_new", seed=0)
        >>> model = random_model(**cfg)
        >>> toks = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]])
        >>> att = attribute(model, toks, target=7)
        >>> att.mode, att.values.shape
        ('reverse', torch.Size([13, 1]))
        >>> att.completeness_error() < 1e-4
        True
    """
    spec = TokenSpec() if components is None else components
    n_layers = int(getattr(getattr(model, "cfg", None), "n_layers", 0))
    run = capture(
        model, input, prepend_bos=prepend_bos, extra_hooks=spec.required_hooks(n_layers), padding_side=padding_side,
        attention_mask=attention_mask,
    )
    return attribute_run(
        run, target, spec, mlp_rule=mlp_rule, temperature=temperature, mode=mode, dtype=dtype,
        chunk_size=chunk_size, max_memory=max_memory,
    )
