"""Public entry points: ``run_with_depass`` (capture + replay) and ``replay``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from depass_tl._checks import checked
from depass_tl._types import COMPONENTS_HINT, TOKENS_HINT, ClassLogits, Logits, Model, TextOrTokens
from depass_tl.backends import backend_for
from depass_tl.cache import DePassCache
from depass_tl.capture import capture
from depass_tl.coefficients import FrozenRun
from depass_tl.components import ComponentSpec, TokenSpec
from depass_tl.components.base import REST
from depass_tl.decompx.heads import MLMHead, SequenceClassificationHead
from depass_tl.decompx.result import DecompXResult
from depass_tl.distributed import ComponentShard, ShardedDePassCache, check_same_run, gather_activations, ranks
from depass_tl.errors import DePassError, DePassValueError, HookNotFoundError
from depass_tl.foreign_hooks import check_edits
from depass_tl.guard import Completeness, check_replay, tolerance
from depass_tl.memory import parse_memory, storage_bytes
from depass_tl.precision import all_on_cpu, check_precision, matmul_precision
from depass_tl.replay.engine import replay_components
from depass_tl.replay.rules import DEFAULT_RULE, DEFAULT_TEMPERATURE, MLPRule, RuleLike, get_rule, official_key_edits
from depass_tl.replay.state import FINAL_HOOK, InitialState

__all__ = ["run_with_depass", "replay"]

NamesFilter = Callable[[str], bool] | Sequence[str] | str | None


def _keep_fn(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, str):
        wanted = {names_filter}
    else:
        wanted = set(names_filter)
    return lambda name: name in wanted


def _check_names(keep_names: NamesFilter, stored: Sequence[str]) -> None:
    """Before the replay: every name a names_filter list asks for is a hook this replay stores."""
    if not names_filter_is_list(keep_names):
        return
    asked = [keep_names] if isinstance(keep_names, str) else list(keep_names)  # type: ignore[arg-type]
    missing = [name for name in asked if name not in stored]
    if missing:
        import difflib

        guesses = {name: difflib.get_close_matches(name, stored, n=1) for name in missing}
        hints = "".join(f" ({name!r}: did you mean {g[0]!r}?)" for name, g in guesses.items() if g)
        raise HookNotFoundError(
            f"names_filter asked for hooks this replay does not produce: {missing}{hints}. It produces "
            f"{stored[0]} ... {stored[-1]} ({len(stored)} hooks: blocks.{{l}}.hook_resid_pre|resid_mid|attn_out|"
            "mlp_out|resid_post at or after the start hook, and unembed.hook_in)."
        )


def names_filter_is_list(f: NamesFilter) -> bool:
    return f is not None and not callable(f)


def _official_edits(rule: MLPRule, spec: ComponentSpec, init: InitialState, run: FrozenRun, *,
                    ignore_special_token: bool, official_position0: bool) -> MLPRule:
    """The rule with the official DePass code's key edits on its "component 0" (``tok0``, else ``rest``)."""
    if not (ignore_special_token or official_position0):
        return rule
    if ignore_special_token and not isinstance(spec, TokenSpec):
        raise DePassValueError(
            f"ignore_special_token=True applies to token components (tokens()), as in the official DePass code, "
            f"whose module, head, neuron and subspace paths never set it; got {type(spec).__name__}. For the official "
            "position-0 convention of those paths pass official_position0=True instead."
        )
    if run.pad is not None and bool(run.pad[:, 0].any()):
        raise DePassValueError(
            "ignore_special_token= / official_position0= act on position 0, which is padding in a left-padded "
            "row here; pad on the right (padding_side='right') or run the prompts one at a time."
        )
    labels = init.groups[0].labels
    rest = [i for i, label in enumerate(labels) if label == REST or label.endswith("." + REST)]
    row = rest[0] if rest else 0  # the official layouts put the rest of the residual first
    return official_key_edits(rule, row, ignore_special_token=ignore_special_token,
                              official_position0=official_position0)


def _run_on_cuda(run: FrozenRun) -> bool:
    """Whether the captured run (so its replay) may compute off the CPU (on a CUDA device), wholly or in part:
    its tensors and the weights the replay multiplies with."""
    weights = [run.view.W_U, *(b.attn.W_O for b in run.view.blocks)]
    return not all_on_cpu([run.logits, *weights, *run.acts.values()])


def _default_dtype(model_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if model_dtype == torch.float64 else torch.float32


@checked(hints={"components": COMPONENTS_HINT})
def replay(
    run: FrozenRun,
    components: ComponentSpec | None = None,
    *,
    mlp_rule: RuleLike = "softmax",
    temperature: float = DEFAULT_TEMPERATURE,
    names_filter: NamesFilter = None,
    dtype: torch.dtype | None = None,
    to_single_token: Callable[[str], int] | None = None,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
    ignore_special_token: bool = False,
    official_position0: bool = False,
    precision: str = "exact",
    distributed: bool = False,
    process_group: Any = None,
    gather: bool = True,
) -> DePassCache | ShardedDePassCache:
    """Replay components through a frozen run (capture once, replay many component sets).

    Args: see :func:`run_with_depass` (with ``distributed=True`` every rank passes its own capture of
    the same input).

    Returns:
        A :class:`~depass_tl.cache.DePassCache` (``gather=False``: a
        :class:`~depass_tl.distributed.ShardedDePassCache`).
    """
    spec = TokenSpec() if components is None else components
    check_precision(precision)
    rule = get_rule(mlp_rule, temperature=temperature)
    dtype = _default_dtype(run.view.dtype) if dtype is None else dtype
    if not dtype.is_floating_point:
        raise DePassValueError(f"dtype must be a floating-point torch dtype, got {dtype}.")
    spec.check_captured(run)
    init = spec.init(run, dtype)
    _check_names(names_filter, init.stored_hook_names(run.view))
    check_edits(run.edited_hooks, [g.start_hook for g in init.groups], run.view, rule, run.hook_aliases)
    rule = _official_edits(rule, spec, init, run, ignore_special_token=ignore_special_token,
                           official_position0=official_position0)
    keep = _keep_fn(names_filter)
    budget = None if max_memory is None else parse_memory(max_memory)
    held = storage_bytes([run.tokens, run.logits, *run.acts.values()])  # the captured run counts against the budget
    shard = None
    if distributed or process_group is not None:
        where = ranks(True if process_group is not None else distributed, process_group, what="replay")
        check_same_run(run.tokens, run.logits, where, what="replay")
        shard = ComponentShard(where)
    elif not gather:
        raise DePassValueError("gather=False leaves a distributed replay's cache sharded; it needs distributed=True.")
    with matmul_precision(precision, cuda=_run_on_cuda(run)):
        acts = replay_components(run, init, mlp_rule=rule, dtype=dtype, keep=keep, chunk_size=chunk_size,
                                 max_memory=budget, held_bytes=held, shard=shard)

    lookup = run.to_single_token if to_single_token is None else to_single_token  # the capture's tokenizer

    def assemble(acts: dict[str, Tensor]) -> DePassCache:
        return _cache(run, init, rule, acts, dtype, lookup, precision)

    if shard is None:
        return assemble(acts)
    if gather:
        return assemble(gather_activations(acts, shard.where))
    return ShardedDePassCache(acts, shard.rows(init.group_size), init.labels, shard.where, len(init.labels), assemble)


def _cache(run: FrozenRun, init: InitialState, rule: MLPRule, acts: dict[str, Tensor], dtype: torch.dtype,
           to_single_token: Callable[[str], int] | None, precision: str) -> DePassCache:
    """The replay's outputs as a :class:`DePassCache`, after the completeness guard."""
    clean = {name: run.get(name) for name in acts}
    last_pos = run.last_real_positions
    rows = torch.arange(run.batch, device=run.tokens.device)
    if run.view.output_logits_soft_cap is None:
        dev = run.logits.device  # a model split over devices: the unembedding's, not the tokens'
        last = run.logits[rows.to(dev), last_pos.to(dev)]
    else:  # decompose the pre-cap logits: they are what sums exactly
        final = run.get(FINAL_HOOK)
        final = final[rows.to(final.device), last_pos.to(final.device)].to(run.view.W_U.device)
        last = final @ run.view.W_U + (0 if run.view.b_U is None else run.view.b_U)
    with matmul_precision(precision, cuda=_run_on_cuda(run)):
        completeness = _guard(run, acts, clean, init.group_size, dtype, precision)
    return DePassCache(
        activations=acts,
        labels=init.labels,
        clean=clean,
        clean_last_logits=last,
        last_positions=last_pos,
        tokens=run.tokens,
        str_tokens=run.str_tokens,
        W_U=run.view.W_U,
        b_U=run.view.b_U,
        group_size=init.group_size,
        start_hook=init.groups[-1].start_hook,
        mlp_rule=rule.name,
        logits_soft_capped=run.view.output_logits_soft_cap is not None,
        to_single_token=to_single_token,
        completeness=completeness,
        precision=precision,
    )


def _guard(
    run: FrozenRun, acts: dict[str, Tensor], clean: dict[str, Tensor], group_size: int, dtype: torch.dtype,
    precision: str = "exact",
) -> Completeness:
    """The completeness guard (:mod:`depass_tl.guard`) on a forward replay: every stored hook, and the
    model's logits at each prompt's last real position (after the soft cap, if any)."""
    view = run.view
    rows = torch.arange(run.batch, device=run.tokens.device)
    last_pos = run.last_real_positions
    final = acts[FINAL_HOOK]
    at_last = final[:, rows.to(final.device), last_pos.to(final.device)]  # [component, batch, d_model]
    summed = at_last.reshape(-1, group_size, *at_last.shape[1:]).sum(1)  # [group, batch, d_model]
    logits = summed @ view.W_U.to(device=summed.device, dtype=dtype)
    if view.b_U is not None:
        logits = logits + view.b_U.to(device=summed.device, dtype=dtype)
    cap = view.output_logits_soft_cap
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    rtol, how = tolerance(dtype, view.clean_run_dtype, precision)
    return check_replay(
        acts, clean, group_size, logits=(logits, run.logits[rows, last_pos]), rtol=rtol, how=how,
        foreign_hooks=run.foreign_hooks,
    )


@checked(hints={
    "input": TOKENS_HINT, "components": COMPONENTS_HINT, "head": "head must be a SequenceClassificationHead or an MLMHead",
    "padding_side": "padding_side must be 'left' or 'right'",
})
def run_with_depass(
    model: Model,
    input: TextOrTokens,
    *,
    components: ComponentSpec | None = None,
    mlp_rule: RuleLike = "softmax",
    temperature: float = DEFAULT_TEMPERATURE,
    names_filter: NamesFilter = None,
    dtype: torch.dtype | None = None,
    prepend_bos: bool | None = None,
    head: SequenceClassificationHead | MLMHead | None = None,
    token_type_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    bias_policy: str = "bias",
    ffn_approx: str = "zo",
    tanh_approx: str = "zo",
    include_ffn: bool = True,
    padding_side: Literal["left", "right"] | None = None,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
    ignore_special_token: bool = False,
    official_position0: bool = False,
    precision: str = "exact",
    distributed: bool = False,
    process_group: Any = None,
    gather: bool = True,
) -> tuple[Logits, DePassCache | ShardedDePassCache] | tuple[ClassLogits | Logits, DecompXResult]:
    """Run the model once, then decompose every residual-stream activation and the logits.

    Like ``model.run_with_cache`` but the cache holds, for each hook, one slice per component:
    ``[component, batch, pos, d_model]``, summing exactly to the clean activation.

    Args:
        model: a ``transformer_lens.HookedTransformer`` or ``TransformerBridge`` (or a BERT encoder, below).
        input: a string, a list of strings (padded when their token lengths differ), or ``[batch, pos]`` token ids.
        components: what to attribute to (default :func:`depass_tl.tokens`: one per input token).
        mlp_rule: how an MLP's activation is split among components: ``softmax`` (DePass default),
            ``ratio`` (frozen post/pre slope; linear), ``max``, ``taylor`` (the official DePass
            ``taylor``: on gated MLPs split along the gate; linear), the name of a registered rule, or a
            rule object (:mod:`depass_tl.replay.rules`, e.g. ``Softmax(temperature=0.5)``).
        temperature: softmax temperature for a rule given by name (default 0.1, as in DePass).
        names_filter: hook names to keep (a name, a list, or a predicate); ``unembed.hook_in`` is
            always kept for logit attribution. Default: every hook.
        dtype: accumulation dtype (default float32, float64 for float64 models).
        prepend_bos: for string input, passed to ``model.to_tokens``.
        attention_mask: ``[batch, pos]``, 1 for real tokens and 0 for padding (token-id input); lists
            of prompts of different lengths are padded and masked automatically.
        padding_side: ``"left"`` or ``"right"`` for padded string batches (default: the tokenizer's).
        chunk_size: replay at most this many components at a time (same result up to float rounding,
            for every rule).
        max_memory: a budget for the memory the whole call allocates (the captured run, component
            states, stored hooks, working tensors; not the model's weights), e.g. ``"4GB"``: chunks and
            passes are sized to fit, or a ``DePassError`` says what to drop (usually ``names_filter=[]``).
            See :mod:`depass_tl.memory`.
        precision: ``"exact"`` (default: float32 matmuls, TF32 off during the call whatever the global
            setting), ``"tf32x3"`` (float32 accuracy from three TF32 tensor-core products per product
            on CUDA, :mod:`depass_tl.replay.matmul`) or ``"fast"`` (TF32 tensor-core matmuls on CUDA;
            relative completeness about 1e-3). On CPU all three compute the same. The cache records
            it and the completeness it measured (:mod:`depass_tl.precision`).
        ignore_special_token: as the official DePass code's option of that name (token components,
            competitive rules): ``tok0`` (BOS) gets no MLP share at positions > 0, and at position 0 its
            MLP key is 1 (there it is the only token, so it keeps the MLP output). Default False.
        official_position0: the official code's position-0 convention alone (it applies it always): its
            first component, ``tok0`` for tokens() and ``rest`` for heads() / modules() / neurons(),
            competes for every MLP neuron at position 0 with key 1 instead of its own key. With heads()
            this reproduces the official head-level scores (:mod:`depass_tl.replay.rules.official`).
        distributed: shard the components over the ranks of ``torch.distributed`` (started with
            ``torchrun``; the process group initialised): every rank captures the same input, replays
            its share of the chunks of components, and the MLP rule's statistics and padding moves are
            reduced across ranks, so the result equals the one-process replay to float rounding
            (:mod:`depass_tl.distributed`). Call it on every rank with the same arguments.
        process_group: the group to shard over (default: the default group; implies ``distributed``).
        gather: with ``distributed``, assemble the whole cache on every rank (default); False returns a
            :class:`~depass_tl.distributed.ShardedDePassCache` holding this rank's components, whose
            ``gather()`` assembles it later.
        head, token_type_ids, attention_mask, bias_policy, ffn_approx, tanh_approx, include_ffn: for
            encoders (BERT: transformers' ``BertForSequenceClassification`` / ``BertForMaskedLM``, a
            ``TransformerBridge`` wrapping a BERT, a ``HookedEncoder``) the call is forwarded to
            :func:`depass_tl.decompx.run_decompx` (DecompX); see that function.

    Returns:
        ``(logits, cache)``: the model's clean logits ``[batch, pos, d_vocab]`` and a
        :class:`~depass_tl.cache.DePassCache`; for an encoder, the head's logits and a
        :class:`~depass_tl.decompx.DecompXResult` (see :func:`depass_tl.decompx.run_decompx`). Both
        results are a :class:`~depass_tl.decomposition.Decomposition`.

    Raises:
        DePassError: bad input, unknown rule or hook, unsupported model (a wrong argument type:
            :class:`~depass_tl.errors.DePassTypeError`).

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4,
        ...            d_mlp=32, d_vocab=50, act_fn="gelu_new", seed=0)
        >>> model = random_model(**cfg)
        >>> logits, dc = depass_tl.run_with_depass(model, torch.tensor([[3, 1, 4, 1, 5]]))
        >>> dc["blocks.1.hook_resid_post"].shape
        torch.Size([6, 1, 5, 16])
        >>> dc.labels[-2:]
        ('tok4', 'bias')
        >>> attrs = dc.logit_attrs(7)          # [component, batch]
        >>> bool(torch.allclose(attrs.sum(0), logits[:, -1, 7], atol=1e-4))
        True
    """
    if backend_for(model).method == "decompx":
        from depass_tl.decompx import run_decompx

        if components is not None or get_rule(mlp_rule) != DEFAULT_RULE or temperature != DEFAULT_TEMPERATURE:
            raise DePassError(
                "an encoder (BERT) is decomposed by DecompX into token components; components=, mlp_rule= and "
                "temperature= do not apply (the FFN's linearisation is ffn_approx=). Drop them, or use "
                "depass_tl.decompx.run_decompx."
            )
        decoder_only = {"prepend_bos": prepend_bos is not None, "padding_side": padding_side is not None,
                        "precision": precision != "exact"}
        if any(decoder_only.values()):
            raise DePassError(
                f"{', '.join(n + '=' for n, set_ in decoder_only.items() if set_)} apply to the decoder replay; DecompX "
                "tokenises with the encoder's tokenizer and computes in the model's precision (dtype=). Drop them."
            )
        if chunk_size is not None or max_memory is not None:
            raise DePassError("chunk_size= and max_memory= apply to the decoder replay; DecompX runs unchunked.")
        if ignore_special_token or official_position0:
            raise DePassError("ignore_special_token= and official_position0= are DePass options; DecompX has no MLP rule.")
        if distributed or process_group is not None or not gather:
            raise DePassError("distributed= / process_group= / gather= shard the decoder replay; DecompX runs in one process.")
        return run_decompx(
            model, input, head=head, token_type_ids=token_type_ids, attention_mask=attention_mask,  # type: ignore[arg-type]
            bias_policy=bias_policy, ffn_approx=ffn_approx, tanh_approx=tanh_approx, include_ffn=include_ffn,
            dtype=dtype, names_filter=names_filter,  # type: ignore[arg-type]
        )
    encoder_only = {
        "head": head is not None, "token_type_ids": token_type_ids is not None, "bias_policy": bias_policy != "bias",
        "ffn_approx": ffn_approx != "zo", "tanh_approx": tanh_approx != "zo", "include_ffn": include_ffn is not True,
    }
    given = [name for name, set_ in encoder_only.items() if set_]
    if given:
        raise DePassError(
            f"{', '.join(n + '=' for n in given)} {'is' if len(given) == 1 else 'are'} for encoder (BERT, DecompX) "
            "models only: transformers' BertForSequenceClassification / BertForMaskedLM, a BERT TransformerBridge "
            "or a HookedEncoder."
        )
    rule = get_rule(mlp_rule, temperature=temperature)
    check_precision(precision)
    n_layers = int(getattr(getattr(model, "cfg", None), "n_layers", 0))
    extra = set() if components is None else components.required_hooks(n_layers)
    # the clean run too: an exact replay must not inherit TF32 rounding
    on_cpu = isinstance(model, torch.nn.Module) and all_on_cpu(model.parameters())
    with matmul_precision(precision, cuda=False if on_cpu else None):
        run = capture(
            model, input, prepend_bos=prepend_bos, extra_hooks=extra, padding_side=padding_side,
            attention_mask=attention_mask,
        )
    cache = replay(
        run,
        components,
        mlp_rule=rule,
        names_filter=names_filter,
        dtype=dtype,
        chunk_size=chunk_size,
        max_memory=max_memory,
        ignore_special_token=ignore_special_token,
        official_position0=official_position0,
        precision=precision,
        distributed=distributed,
        process_group=process_group,
        gather=gather,
    )
    return run.logits, cache
