"""Bad input as a new user would give it: one error type per mistake, a message that says what to do.

Every case runs on each model class of the installed TransformerLens (tests/model_classes.py) and
asserts the exception type (a :class:`DePassError` subclass, also ``ValueError`` / ``TypeError`` /
``KeyError`` where Python's convention says so) and a fragment of the message. After each case the
shared model has no hook left on it, every parameter and buffer is bit-identical to before, and it
is still in eval mode. Cases that need a broken model (NaN weights, meta device, training mode) break
a copy.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import depass_tl
from depass_tl.errors import (
    DePassError, DePassTypeError, DePassValueError, ForeignHookError, HookNotFoundError, ModelStateError,
    UnsupportedModelError,
)
from depass_tl.reverse import attribute, attribute_run, direction_target, logit_target
from tests.model_classes import CLASSES, assert_untouched, known_word, model_of, snapshot


@dataclass
class Ctx:
    """What a case works on: the shared model (or a copy), its tokens, a cache and a capture of them."""

    kind: str
    model: Any
    toks: torch.Tensor
    dc: Any
    run: Any

    @property
    def fresh(self) -> Any:
        """A copy of the model the case may break."""
        return copy.deepcopy(self.model)

    def d_model(self) -> int:
        return int(self.model.cfg.d_model)


@functools.cache
def _ctx(kind: str) -> Ctx:
    model, toks = model_of(kind)
    _, dc = depass_tl.run_with_depass(model, toks)
    return Ctx(kind, model, toks, dc, depass_tl.capture(model, toks))


def _run(**kwargs: Any) -> Callable[[Ctx], Any]:
    return lambda c: depass_tl.run_with_depass(c.model, c.toks, **kwargs)


def _with_nan(c: Ctx, value: float) -> Any:
    model = c.fresh
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if ".1." in name and "mlp" in name and p.ndim == 2)[0, 0] = value
    return depass_tl.run_with_depass(model, c.toks)


def _nan_through_data(c: Ctx) -> Any:
    """NaN written through ``.data`` after a call found the weights finite (``.data`` writes keep the version)."""
    model = c.fresh
    depass_tl.run_with_depass(model, c.toks)
    next(p for name, p in model.named_parameters() if ".1." in name and "mlp" in name and p.ndim == 2).data[0, 0] = float("nan")
    return depass_tl.run_with_depass(model, c.toks)


def _meta(c: Ctx) -> Any:
    return depass_tl.run_with_depass(c.fresh.to("meta"), c.toks)


def _with_dropout_in_training(c: Ctx) -> Any:
    model = c.fresh
    model.blocks[0].add_module("dropout", nn.Dropout(0.1))
    return depass_tl.run_with_depass(model.train(), c.toks)


def _foreign_edit(c: Ctx, name: str) -> Any:
    handle = c.model.hook_dict[name].add_hook(lambda x, hook: x * 1.5)
    try:
        return depass_tl.run_with_depass(c.model, c.toks)
    finally:
        c.model.reset_hooks()
        del handle


def _module_hook(c: Ctx) -> Any:
    """A PyTorch hook on a module outside TransformerLens's hook points: only the guard can see it."""
    model = c.fresh
    model.blocks[1].mlp.register_forward_hook(lambda module, args, out: out * 1.5)
    return depass_tl.run_with_depass(model, c.toks)


def _group(**groups: Any) -> Callable[[Ctx], Any]:
    return lambda c: c.dc.group(groups)


def _custom(tensor: Callable[[Ctx], torch.Tensor], hook: str = "blocks.0.hook_resid_post",
            labels: tuple[str, ...] = ("a",)) -> Callable[[Ctx], Any]:
    return lambda c: depass_tl.run_with_depass(c.model, c.toks, components=depass_tl.custom(hook, tensor(c), list(labels)))


def _resid(c: Ctx) -> torch.Tensor:
    return c.run.acts["blocks.0.hook_resid_post"][None].clone()


def _nan_resid(c: Ctx) -> torch.Tensor:
    x = _resid(c)
    x[0, 0, 0, 0] = float("nan")
    return x


def _direction(c: Ctx, value: float = 1.0, size: int | None = None) -> torch.Tensor:
    return torch.full((size or c.d_model(),), value)


B = "blocks.1."
CASES: list[tuple[str, Callable[[Ctx], Any], type[Exception], str]] = [
    # ---------------------------------------------------------------- input
    ("float tokens", lambda c: depass_tl.run_with_depass(c.model, c.toks.float()), DePassError, "integer tensor"),
    ("bool tokens", lambda c: depass_tl.run_with_depass(c.model, c.toks > 3), DePassError, "integer tensor"),
    ("3-d tokens", lambda c: depass_tl.run_with_depass(c.model, c.toks[None]), DePassError, r"shape \[batch, pos\]"),
    ("id past the vocabulary", lambda c: depass_tl.run_with_depass(c.model, c.toks + 10_000), DePassError,
     r"ids must lie in \[0, "),
    ("negative id", lambda c: depass_tl.run_with_depass(c.model, c.toks - 100), DePassError, r"ids must lie in"),
    ("no tokens", lambda c: depass_tl.run_with_depass(c.model, c.toks[:, :0]), DePassError, "non-empty"),
    ("list of ints", lambda c: depass_tl.run_with_depass(c.model, [1, 2, 3]), DePassTypeError, "input must be"),
    # TL's to_tokens truncates strings at n_ctx by default: the prompt's end would be silently lost
    ("string longer than n_ctx", lambda c: depass_tl.run_with_depass(c.model, known_word(c.model) * (c.model.cfg.n_ctx + 3)),
     DePassValueError, r"longer than the model's context \(cfg.n_ctx="),
    ("one of two strings longer than n_ctx", lambda c: depass_tl.run_with_depass(
        c.model, [known_word(c.model), known_word(c.model) * (c.model.cfg.n_ctx + 3)]),
     DePassValueError, r"longer than the model's context"),
    ("longer than n_ctx", lambda c: depass_tl.run_with_depass(c.model, c.toks[:1, :1].repeat(1, c.model.cfg.n_ctx + 1)),
     DePassValueError, r"longer than the model's context \(cfg.n_ctx="),
    ("empty prompt", lambda c: depass_tl.run_with_depass(c.model, ""), DePassError, "empty prompt"),
    ("mask of another shape", _run(attention_mask=torch.ones(2, 3, dtype=torch.long)), DePassError,
     "attention_mask has shape"),
    ("float mask", _run(attention_mask=torch.ones(2, 6)), DePassTypeError, "attention_mask must be an integer"),
    ("mask that hides a prompt", _run(attention_mask=torch.tensor([[1] * 6, [0] * 6])), DePassError,
     "masks every token"),
    ("mask with a 2", _run(attention_mask=torch.full((2, 6), 2)), DePassError, "only 0 and 1"),
    # ---------------------------------------------------------------- options
    ("temperature as a string", _run(temperature="0.1"), DePassTypeError, "temperature must be float"),
    ("temperature 0", _run(temperature=0.0), DePassError, "temperature must be > 0"),
    ("negative temperature", _run(temperature=-1.0), DePassError, "temperature must be > 0"),
    ("unknown rule", _run(mlp_rule="no-such-rule"), DePassError, "unknown mlp_rule 'no-such-rule'"),
    ("rule as a number", _run(mlp_rule=3), DePassTypeError, "mlp_rule"),
    ("prepend_bos='yes'", _run(prepend_bos="yes"), DePassTypeError, "prepend_bos must be bool"),
    ("padding_side='middle'", _run(padding_side="middle"), DePassTypeError, "padding_side must be 'left' or 'right'"),
    ("names_filter=42", _run(names_filter=42), DePassTypeError, "names_filter must be"),
    ("names_filter typo", _run(names_filter=[B + "hook_resid_pots"]), HookNotFoundError,
     "did you mean 'blocks.1.hook_resid_post'"),
    ("names_filter past the last layer", _run(names_filter="blocks.9.hook_resid_post"), KeyError,
     "does not produce"),
    ("integer dtype", _run(dtype=torch.int64), DePassValueError, "floating-point"),
    ("dtype as a string", _run(dtype="float32"), DePassTypeError, "dtype must be"),
    ("chunk_size 0", _run(chunk_size=0), DePassError, "chunk_size"),
    ("chunk_size 1.5", _run(chunk_size=1.5), DePassTypeError, "chunk_size must be"),
    ("max_memory 'lots'", _run(max_memory="lots"), DePassError, "is not a size"),
    ("negative max_memory", _run(max_memory=-5), DePassError, "must be positive"),
    ("infinite max_memory", _run(max_memory=float("inf")), DePassError, r"finite size.*Leave it out"),
    ("chunk_size True", _run(chunk_size=True), DePassError, "chunk_size must be a positive number"),
    ("max_memory too small", _run(max_memory=100), DePassError, "max_memory"),
    ("components as a string", _run(components="tokens"), DePassTypeError, "components must be a spec"),
    ("head= on a decoder", _run(head=object()), DePassTypeError, "head must be"),
    ("bias_policy on a decoder", _run(bias_policy="spread"), DePassError, "HookedEncoder"),
    # ---------------------------------------------------------------- component specs
    ("heads(1.5)", lambda c: depass_tl.heads(1.5), DePassTypeError, "whole numbers"),
    ("heads(True)", lambda c: depass_tl.heads(True), DePassTypeError, "whole numbers"),
    ("heads('1')", lambda c: depass_tl.heads("1"), DePassTypeError, "list of whole numbers"),
    ("heads(9)", _run(components=depass_tl.heads(9)), DePassError, "out of range"),
    ("heads([0, 0])", _run(components=depass_tl.heads([0, 0])), DePassError, "distinct"),
    ("modules(2.0)", lambda c: depass_tl.modules(2.0), DePassTypeError, "whole numbers"),
    ("neurons without idx or top_k", lambda c: depass_tl.neurons(0), DePassError, "exactly one of"),
    ("neurons idx past d_mlp", _run(components=depass_tl.neurons(0, idx=[10_000])), DePassError,
     "out of range for d_mlp"),
    ("neurons top_k 0", lambda c: depass_tl.neurons(0, top_k=0), DePassError, "top_k must be >= 1"),
    ("neurons idx 1.5", lambda c: depass_tl.neurons(0, idx=[1.5]), DePassTypeError, "whole numbers"),
    ("neurons top_k '3'", lambda c: depass_tl.neurons(0, top_k="3"), DePassTypeError, "whole numbers"),
    ("tokens start past the model", _run(components=depass_tl.tokens(start="blocks.9.hook_resid_pre")), DePassError,
     "has 2 layers"),
    ("tokens start not residual", _run(components=depass_tl.tokens(start="blocks.0.attn.hook_z")), DePassError,
     "not a residual-stream hook"),
    ("custom with NaN", _custom(_nan_resid), DePassValueError, "NaN or inf"),
    ("custom that does not sum", _custom(lambda c: 2 * _resid(c)), DePassError, "Add a remainder component"),
    ("custom labels", _custom(_resid, labels=("a", "b")), DePassError, "got 2 labels for 1 components"),
    ("custom label 'bias'", lambda c: depass_tl.custom("blocks.0.hook_resid_post", _resid(c), ["bias"]), DePassError,
     "reserved for the bias component"),
    # ---------------------------------------------------------------- the model
    ("not a model", lambda c: depass_tl.run_with_depass(nn.Linear(2, 2), c.toks), DePassError,
     "expected a transformer_lens.HookedTransformer"),
    ("None as a model", lambda c: depass_tl.run_with_depass(None, c.toks), DePassError, "expected a transformer_lens"),
    ("NaN weight", lambda c: _with_nan(c, float("nan")), ModelStateError,
     r"weights hold NaN or inf values \(non-finite parameters: \S*\.1\.\S*mlp"),
    ("inf weight", lambda c: _with_nan(c, float("inf")), ModelStateError, "NaN or inf"),
    ("NaN weight written through .data after a call", _nan_through_data, ModelStateError,
     r"weights hold NaN or inf values \(non-finite parameters: \S*\.1\.\S*mlp"),
    ("meta weights", _meta, ModelStateError, "'meta' device"),
    ("dropout in training mode", _with_dropout_in_training, ModelStateError, r"training mode.*model\.eval\(\)"),
    ("foreign edit of hook_mlp_out", lambda c: _foreign_edit(c, B + "hook_mlp_out"), ForeignHookError,
     r"edit blocks\.1\.hook_mlp_out.*model\.reset_hooks\(\)"),
    ("foreign edit of hook_resid_mid", lambda c: _foreign_edit(c, B + "hook_resid_mid"), ForeignHookError,
     r"blocks\.1\.hook_resid_mid.*tokens\(start='blocks\.1\.hook_resid_(mid|post)'\)"),  # Bridge: post
    ("foreign edit of attn.hook_z", lambda c: _foreign_edit(c, B + "attn.hook_z"), ForeignHookError, "attn.hook_z"),
    ("foreign edit after the last block", lambda c: _foreign_edit(c, "ln_final.hook_normalized"), ForeignHookError,
     r"edit ln_final\.hook_normalized.*remove them \(model\.reset_hooks\(\)\)\. "),
    ("module hook outside hook points", _module_hook, DePassError, r"module\.register_forward_hook"),
    ("unknown extra hook", lambda c: depass_tl.capture(c.model, c.toks, extra_hooks=["blocks.0.hook_nope"]),
     DePassError, "unknown hook name"),
    ("replay of a non-run", lambda c: depass_tl.replay("run"), DePassTypeError, "run must be FrozenRun"),
    # ---------------------------------------------------------------- cache queries
    ("answer 5.5", lambda c: c.dc.logit_attrs(5.5), DePassTypeError, "Floats and bools are not token ids"),
    ("answer True", lambda c: c.dc.logit_attrs(True), DePassTypeError, "Floats and bools are not token ids"),
    ("answer tensor(5.7)", lambda c: c.dc.logit_attrs(torch.tensor(5.7)), DePassTypeError, "integer tensor"),
    ("answer bool tensor", lambda c: c.dc.logit_attrs(torch.tensor([True, False])), DePassTypeError, "integer tensor"),
    ("answer unknown word", lambda c: c.dc.logit_attrs(" zzz"), DePassValueError, "not in the tokenizer's vocabulary"),
    ("answer of two tokens", lambda c: c.dc.logit_attrs(known_word(c.model, 1) + known_word(c.model, 2)),
     DePassValueError, "not one"),
    ("answer empty string", lambda c: c.dc.logit_attrs(""), DePassValueError, "non-empty string"),
    ("answer past the vocabulary", lambda c: c.dc.logit_attrs(10_000), DePassValueError, r"lie in \[0, "),
    ("answer -1", lambda c: c.dc.logit_attrs(-1), DePassValueError, r"lie in \[0, "),
    ("three answers for two prompts", lambda c: c.dc.logit_attrs([1, 2, 3]), DePassValueError, "one per prompt"),
    ("no answers", lambda c: c.dc.logit_attrs([]), DePassTypeError, "answer tokens must be"),
    ("answer list with a float", lambda c: c.dc.logit_attrs([1, 2.5]), DePassTypeError, "not token ids"),
    ("wrong answer 2.5", lambda c: c.dc.logit_attrs(1, incorrect_tokens=2.5), DePassTypeError, "not token ids"),
    ("position past the prompt", lambda c: c.dc.logit_attrs(1, pos=50), DePassError, "out of range"),
    ("unknown hook", lambda c: c.dc["blocks.9.hook_resid_post"], HookNotFoundError, "not in this DePassCache"),
    ("completeness of an unknown hook", lambda c: c.dc.completeness_error("nope"), KeyError,
     "not in this DePassCache"),
    ("unknown label", lambda c: c.dc.component("tok99"), DePassError, "no component labelled 'tok99'"),
    ("bad regex", _group(a="tok[("), DePassValueError, "not a valid regular expression"),
    ("overlapping groups", _group(a="tok.*", b="tok1"), DePassValueError, "earlier groups took \\('a'\\)"),
    ("grouping the bias", _group(x=["tok0", "bias"]), DePassValueError, "cannot be grouped"),
    ("group matching nothing", _group(x=r"L\d+H\d+"), DePassValueError, "matches no component"),
    ("group of unknown labels", _group(x=["tok0", "tok99"]), DePassValueError, "unknown labels \\['tok99'\\]"),
    ("group of a number", _group(x=5), DePassTypeError, "regular expression \\(str\\) or a list"),
    ("no groups", lambda c: c.dc.group({}), DePassTypeError, "non-empty mapping"),
    ("to a missing GPU", lambda c: c.dc.to("cuda:99"), DePassValueError, "CUDA"),
    ("to a device that does not exist", lambda c: c.dc.to("bogus"), DePassValueError, "not a torch device"),
    ("to_dataframe of 5.5", lambda c: c.dc.to_dataframe(5.5), DePassTypeError, "not token ids"),
    # ---------------------------------------------------------------- attribute (one scalar)
    ("attribute target 5.5", lambda c: attribute(c.model, c.toks, target=5.5), DePassTypeError, "target must be"),
    ("attribute mode 'sideways'", lambda c: attribute(c.model, c.toks, target=1, mode="sideways"), DePassTypeError,
     "mode must be 'auto', 'forward' or 'reverse'"),
    ("reverse mode of softmax", lambda c: attribute(c.model, c.toks, target=1, mode="reverse", mlp_rule="softmax"),
     DePassError, "needs a linear replay"),
    ("NaN direction", lambda c: direction_target(B + "hook_resid_post", _direction(c, float("nan"))), DePassValueError,
     "NaN or inf"),
    ("integer direction", lambda c: direction_target(B + "hook_resid_post", torch.ones(4, dtype=torch.long)),
     DePassTypeError, "floating-point tensor"),
    ("direction of the wrong size", lambda c: attribute_run(c.run, direction_target(B + "hook_resid_post",
                                                                                    _direction(c, size=3))),
     DePassValueError, "direction has shape"),
    ("target position past the prompt", lambda c: attribute_run(c.run, logit_target(1, pos=99)), DePassValueError,
     "out of range"),
    ("target hook before the start", lambda c: attribute_run(c.run, direction_target("blocks.0.hook_resid_pre",
                                                                                     _direction(c)),
                                                           depass_tl.tokens(start=B + "hook_resid_pre")),
     DePassValueError, "not produced by this replay"),
    ("heads on a run without hook_z", lambda c: depass_tl.replay(c.run, depass_tl.heads(1)), DePassValueError,
     r"captured without \['blocks\.1\.attn\.hook_z'\]"),
    ("attribute answer unknown word", lambda c: attribute(c.model, c.toks, target=" zzz"), DePassValueError,
     "not in the tokenizer's vocabulary"),
]
assert len(CASES) >= 60


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in CASES])
@pytest.mark.parametrize("kind", CLASSES)
def test_bad_input(kind: str, case: tuple[str, Callable[[Ctx], Any], type[Exception], str]) -> None:
    _, call, error, fragment = case
    ctx = _ctx(kind)
    before = snapshot(ctx.model)
    with pytest.raises(error, match=fragment) as info:
        call(ctx)
    assert isinstance(info.value, DePassError), type(info.value).__mro__
    assert_untouched(ctx.model, before)


@pytest.mark.parametrize("kind", CLASSES)
def test_the_python_conventions_hold(kind: str) -> None:
    """Bad values are ValueErrors, wrong types TypeErrors, missing hooks KeyErrors, all DePassErrors."""
    ctx = _ctx(kind)
    with pytest.raises(ValueError):
        ctx.dc.logit_attrs(10_000)
    with pytest.raises(TypeError):
        ctx.dc.logit_attrs(5.5)
    with pytest.raises(KeyError):
        ctx.dc["blocks.9.hook_resid_post"]
    assert "blocks.9.hook_resid_post" not in ctx.dc and ctx.dc.get("nope") is None
    assert issubclass(UnsupportedModelError, DePassError) and issubclass(ModelStateError, ValueError)


def test_a_prompt_word_the_model_cannot_embed_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The shipped toys' tokenizer maps unknown words to an id past the model's vocabulary: the error names
    the word (it said 'token ids must lie in [0, 102)'); through run_dataset as well."""
    from depass_tl import toy

    model, _ = toy.load("ioi")
    prompt = "When Mary and John went to the store, John gave a ball to"  # ' ball' is not in the toy vocabulary
    with pytest.raises(DePassValueError, match=r"word ' ball' in 'When Mary .* to' is not in the tokenizer's vocab"):
        depass_tl.run_with_depass(model, prompt)
    with pytest.raises(DePassValueError, match=r"prompts 0\.\.0: word ' ball' in"):
        depass_tl.run_dataset(model, [prompt], target=" Mary", out=tmp_path / "attrs", progress=False)
