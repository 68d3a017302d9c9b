"""Hooks the user attached before the call: replayed exactly where possible, refused by name otherwise.

Every edit multiplies the activation at one hook point by 0.7. "Exact" means the components' logit
attributions sum to the logits of the *hooked* model (its own forward pass with the hook). The table
of which edits are followed is docs/reliability.md; this module checks each of its rows on every
model class, for a dense (GPT-2-like) and a gated (Llama-like) MLP.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

import depass_tl
from depass_tl.backends.bridge import is_bridge
from depass_tl.errors import ForeignHookError, ModelStateError, UnsupportedModelError
from tests._tl_version import requires_bridge
from tests.model_classes import CLASSES, model_of, n_hooks

FROZEN = ["attn.hook_pattern", "attn.hook_attn_scores", "attn.hook_q", "attn.hook_k", "ln1.hook_scale", "ln2.hook_scale"]
VALUE = ["hook_resid_pre", "attn.hook_v", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre",
         "hook_mlp_out", "hook_resid_post"]
ANSWER = 3


@functools.cache
def _gated(kind: str) -> tuple[Any, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "random_model":
            from tests.models import make_model, random_tokens

            model = make_model("llama", dtype=torch.float32)
            return model, random_tokens(model, batch=2, pos=6)
        from tests.bridge_models import bridge_tokens, build_bridge

        return build_bridge("llama", fresh=True)[0], bridge_tokens(batch=2, pos=6)


def _model(kind: str, mlp: str) -> tuple[Any, torch.Tensor]:
    return model_of(kind) if mlp == "dense" else _gated(kind)


def _scale(x: torch.Tensor, hook: Any) -> torch.Tensor | None:
    return x * 0.7 if x.is_floating_point() else None


def _attributed(model: Any, toks: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The logit attributions' sum minus the hooked model's own logit (must be ~0 when exact)."""
    _, dc = depass_tl.run_with_depass(model, toks, **kwargs)
    with torch.no_grad():
        hooked = model(toks)[:, -1, ANSWER]
    return dc.logit_attrs(ANSWER).sum(0) - hooked


@contextmanager
def _attached(model: Any, *names: str, fn: Any = _scale) -> Iterator[Any]:
    """The user's hooks ``fn`` on ``names`` for the ``with`` block (``model.reset_hooks()`` after)."""
    for name in names:
        model.hook_dict[name].add_hook(fn)
    try:
        yield model
    finally:
        model.reset_hooks()


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("mlp", ["dense", "gated"])
@pytest.mark.parametrize("rule", ["softmax", "ratio"])
@pytest.mark.parametrize("suffix", FROZEN + ["mlp.hook_post"])
def test_edits_of_frozen_coefficients_are_replayed_exactly(kind: str, mlp: str, rule: str, suffix: str) -> None:
    model, toks = _model(kind, mlp)
    name = f"blocks.1.{suffix}"
    with torch.no_grad():
        plain = model(toks)
    with _attached(model, name):
        with torch.no_grad():
            matters = float((model(toks) - plain).abs().max()) > 1e-3
        # the edit matters, except on TL's native Bridge, whose attention never reads hook_attn_scores' output
        assert matters or (suffix == "attn.hook_attn_scores" and kind == "random_model" and is_bridge(model))
        if suffix == "mlp.hook_post" and mlp == "gated" and rule == "ratio":
            # the gated ratio slope is act(gate): it never reads the (edited) activation itself
            with pytest.raises(ForeignHookError, match=r"edit blocks\.1\.mlp\.hook_post"):
                depass_tl.run_with_depass(model, toks, mlp_rule=rule)
            return
        gap = _attributed(model, toks, mlp_rule=rule)
        assert float(gap.abs().max()) < 1e-4


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("suffix", VALUE)
def test_value_path_edits_after_the_start_are_refused_by_name(kind: str, suffix: str) -> None:
    model, toks = model_of(kind)
    name = f"blocks.1.{suffix}"
    with _attached(model, name):
        with pytest.raises(ForeignHookError, match=rf"edit {name.replace('.', '[.]')}( \(= [^)]*\))?, which the replay "
                                                   r"recomputes.*remove them \(model\.reset_hooks\(\)\), or start the"):
            depass_tl.run_with_depass(model, toks)
        with pytest.raises(ForeignHookError, match=name.replace(".", "[.]")):
            depass_tl.attribute(model, toks, target=ANSWER)  # reverse mode refuses them too
    assert n_hooks(model) == 0


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("suffix", VALUE)
def test_edits_before_the_start_are_part_of_the_starting_state(kind: str, suffix: str) -> None:
    """The documented way to attribute an edited model: start the components after the edit.

    On a TransformerBridge ``hook_resid_mid`` is ``ln2.hook_in``, the MLP norm's input: its edit does not
    reach the residual stream, so only a start after the MLP contains it.
    """
    model, toks = model_of(kind)
    edit = f"blocks.1.{suffix}"
    at_mid = suffix in ("hook_resid_pre", "attn.hook_v", "attn.hook_z", "hook_attn_out") or (
        suffix == "hook_resid_mid" and not is_bridge(model)
    )
    with model.hooks(fwd_hooks=[(edit, _scale)]):
        gap = _attributed(model, toks, components=depass_tl.tokens(start="blocks.1.hook_resid_post"))
        assert float(gap.abs().max()) < 1e-4
        mid = depass_tl.tokens(start="blocks.1.hook_resid_mid")
        if at_mid:
            assert float(_attributed(model, toks, components=mid).abs().max()) < 1e-4
        else:
            with pytest.raises(ForeignHookError, match=r"tokens\(start='blocks\.1\.hook_resid_post'\)"):
                depass_tl.run_with_depass(model, toks, components=mid)
    assert n_hooks(model) == 0


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("suffix", VALUE)
def test_layer_specs_hold_the_edits_before_their_start(kind: str, suffix: str) -> None:
    """modules(l) starts after layer l and heads(l) after its attention: an edit before that start is part of the
    starting state (in the heads' own outputs, or in the rest), as for tokens(start=...). They were refused with
    a CompletenessError or an advice to add a remainder component."""
    model, toks = model_of(kind)
    edit = f"blocks.1.{suffix}"
    before_mid = suffix in ("hook_resid_pre", "attn.hook_v", "attn.hook_z", "hook_attn_out") or (
        suffix == "hook_resid_mid" and not is_bridge(model)
    )
    with model.hooks(fwd_hooks=[(edit, lambda x, hook: x * 0.7 + 0.05)]):
        assert float(_attributed(model, toks, components=depass_tl.modules(1)).abs().max()) < 1e-4
        if before_mid:
            assert float(_attributed(model, toks, components=depass_tl.heads(1)).abs().max()) < 1e-4
        else:
            with pytest.raises(ForeignHookError, match=r"tokens\(start='blocks\.1\.hook_resid_post'\)"):
                depass_tl.run_with_depass(model, toks, components=depass_tl.heads(1))
    assert n_hooks(model) == 0


@pytest.mark.parametrize("kind", CLASSES)
def test_the_next_layers_resid_pre_comes_after_this_layers_resid_post(kind: str) -> None:
    """blocks.1.hook_resid_pre is its own hook point, applied to what blocks.0.hook_resid_post recorded: a
    start there misses its edit (refused by name, with the start that holds it), and sources(), which starts
    from the embeddings, cannot hold an edit of blocks.0.hook_resid_pre (named, not 'add a remainder')."""
    model, toks = model_of(kind)
    with _attached(model, "blocks.1.hook_resid_pre"):
        with pytest.raises(ForeignHookError, match=r"edit blocks\.1\.hook_resid_pre, which the replay recomputes.*"
                                                   r"tokens\(start='blocks\.1\.hook_resid_pre'\)"):
            depass_tl.run_with_depass(model, toks, components=depass_tl.modules(0))
        assert float(_attributed(model, toks, components=depass_tl.tokens(start="blocks.1.hook_resid_pre"))
                     .abs().max()) < 1e-4
    with _attached(model, "blocks.0.hook_resid_pre"):
        with pytest.raises(ForeignHookError, match=r"hook_embed.* because your hooks edit blocks\.0\.hook_resid_pre"):
            depass_tl.run_with_depass(model, toks, components=depass_tl.sources())
    assert n_hooks(model) == 0


@pytest.mark.parametrize("kind", CLASSES)
def test_read_only_and_in_place_hooks(kind: str) -> None:
    model, toks = model_of(kind)
    seen: list[str] = []
    with _attached(model, "blocks.1.hook_mlp_out", fn=lambda x, hook: seen.append(hook.name)):
        run = depass_tl.capture(model, toks)
        assert "blocks.1.hook_mlp_out" in run.foreign_hooks and run.edited_hooks == ()
        assert float(_attributed(model, toks).abs().max()) < 1e-4
        assert len(seen) == 3 and n_hooks(model) == 1  # the user's hook ran every time and is still there

    def in_place(x: torch.Tensor, hook: Any) -> None:
        x.mul_(2.0)  # returns nothing: TransformerLens keeps the (changed) tensor

    with _attached(model, "blocks.1.hook_attn_out", fn=in_place):
        with pytest.raises(ForeignHookError, match=r"edit blocks\.1\.hook_attn_out"):
            depass_tl.run_with_depass(model, toks)


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("mlp", ["dense", "gated"])
@pytest.mark.parametrize("rule", ["softmax", "max", "ratio"])
def test_a_pytorch_hook_on_what_the_mlp_reads_is_refused(kind: str, mlp: str, rule: str) -> None:
    """A module hook on ln2's output changes the MLP's input past every hook point: the softmax and max rules
    split the captured hook_post by keys of the unedited input, so the shares still summed to the clean run
    and the guard passed while the attributions were another model's. The capture's key check refuses it."""
    model, toks = _model(kind, mlp)
    with torch.no_grad():
        clean = model(toks)
    handle = model.blocks[0].ln2.register_forward_hook(lambda module, args, out: out * 0.7 + 0.05)
    try:
        with torch.no_grad():
            assert not torch.allclose(model(toks), clean)  # the hook does change the model
        with pytest.raises(UnsupportedModelError, match=r"blocks\.0\.mlp\.hook_pre(_linear)? is not what "
                                                        r"ln2\(blocks\.0\.hook_resid_mid\) gives"):
            depass_tl.run_with_depass(model, toks, mlp_rule=rule)
    finally:
        handle.remove()
    assert n_hooks(model) == 0
    depass_tl.run_with_depass(model, toks, mlp_rule=rule)  # without it: accepted


@pytest.mark.parametrize("kind", CLASSES)
def test_an_edit_at_the_start_does_not_hide_a_pytorch_hook_on_the_mlp_input(kind: str) -> None:
    """The key check reads the stream hooks' edited values, so an edit there (followed by the replay) must not
    switch the check off for its layer (it did: the ln2 module hook below then passed)."""
    model, toks = model_of(kind, fresh=True)
    model.blocks[0].ln2.register_forward_hook(lambda module, args, out: out * 1.3)
    with _attached(model, "blocks.0.hook_resid_pre", fn=lambda x, hook: x + 0.01):
        with pytest.raises(UnsupportedModelError, match=r"blocks\.0\.mlp\.hook_pre is not what"):
            depass_tl.run_with_depass(model, toks)


@requires_bridge
@pytest.mark.parametrize("family, hook", [("gpt2", "mlp.hook_in"), ("gpt2", "ln2.hook_out"), ("gpt2", "mlp.in.hook_in"),
                                          ("llama", "mlp.gate.hook_in"), ("neox", "ln2.hook_in")])
def test_bridge_hook_points_into_the_mlp_are_edits_not_tampering(family: str, hook: str) -> None:
    """A Bridge has hook points of its own between the stream and the MLP's pre-activations: their edits are
    the user's (named by check_edits, followed from a later start), not a hidden module hook; the key check
    skips their layer (it refused them as 'a PyTorch hook')."""
    from tests.bridge_models import bridge_tokens, build_bridge

    model, _ = build_bridge(family, fresh=True)
    toks = bridge_tokens(batch=2, pos=6)
    with _attached(model, f"blocks.0.{hook}", fn=lambda x, hook: x * 1.5):
        with pytest.raises(ForeignHookError, match=r"tokens\(start="):
            depass_tl.run_with_depass(model, toks)
        gap = _attributed(model, toks, components=depass_tl.tokens(start="blocks.1.hook_resid_pre"))
        assert float(gap.abs().max()) < 1e-4


@pytest.mark.parametrize("name", ["mlp.hook_pre", "mlp.hook_pre_linear"])
def test_the_mlp_key_check_allows_rounding_and_refuses_more(name: str) -> None:
    """Known answers on a captured gated model: its own pre-activations pass; moved by 1e-6 of the product's
    size (rounding) they pass; moved by 5 % they are refused, naming the hook."""
    from depass_tl.clean_checks import check_mlp_inputs

    model, toks = _gated("random_model")
    run = depass_tl.capture(model, toks)
    acts = dict(run.acts)
    check_mlp_inputs(acts, run.view)
    ref = acts[f"blocks.1.{name}"]
    size = float(ref.abs().max())
    check_mlp_inputs({**acts, f"blocks.1.{name}": ref + 1e-6 * size}, run.view)
    with pytest.raises(UnsupportedModelError, match=f"layer 1: the MLP's captured pre-activation blocks.1.{name} "):
        check_mlp_inputs({**acts, f"blocks.1.{name}": ref + 0.05 * size}, run.view)
    check_mlp_inputs({**acts, f"blocks.1.{name}": ref + 0.05 * size}, run.view, edited=[f"blocks.1.{name}"])


@pytest.mark.parametrize("kind", CLASSES)
def test_the_error_names_the_transformerlens_hook_and_every_refused_one(kind: str) -> None:
    model, toks = model_of(kind)
    with _attached(model, "blocks.0.hook_mlp_out", "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"):
        with pytest.raises(ForeignHookError) as info:
            depass_tl.run_with_depass(model, toks)
    message = str(info.value)
    assert "edit blocks.0.hook_mlp_out, blocks.1.attn.hook_z, which" in message  # not the frozen pattern
    assert "tokens(start='blocks.1.hook_resid_mid')" in message


@requires_bridge
def test_bridge_aliases_are_named_as_transformerlens_names() -> None:
    model, toks = model_of("bridge")
    with _attached(model, "blocks.1.mlp.hook_out"):  # the Bridge's own name of hook_mlp_out
        with pytest.raises(ForeignHookError, match=r"edit blocks\.1\.hook_mlp_out, which"):
            depass_tl.run_with_depass(model, toks)


@pytest.mark.parametrize("kind", CLASSES)
def test_probes_are_removed_when_the_forward_raises(kind: str) -> None:
    model, toks = model_of(kind)

    def boom(x: torch.Tensor, hook: Any) -> None:
        raise RuntimeError("boom in the user's hook")

    with _attached(model, "blocks.1.hook_mlp_out", fn=boom):
        with pytest.raises(RuntimeError, match="boom"):
            depass_tl.run_with_depass(model, toks)
        assert n_hooks(model) == 1  # only the user's


# ------------------------------------------------------------------------------ training mode


@requires_bridge
def test_training_mode_is_refused_where_it_is_random() -> None:
    model, toks = model_of("bridge", fresh=True)
    with pytest.raises(ModelStateError, match=r"training mode: '\S+' is a \w+ .*Call model\.eval\(\) first"):
        depass_tl.run_with_depass(model.train(), toks)
    depass_tl.run_with_depass(model.eval(), toks)


def test_dropout_in_training_mode_is_refused_and_p0_is_not() -> None:
    model, toks = model_of("random_model", fresh=True)
    model.blocks[1].add_module("extra_dropout", nn.Dropout(0.0))
    assert float(_attributed(model.train(), toks).abs().max()) < 1e-4
    model.blocks[1].extra_dropout.p = 0.2
    with pytest.raises(ModelStateError, match=r"'blocks\.1\.extra_dropout' is a Dropout with p=0\.2.*model\.eval\(\)"):
        depass_tl.run_with_depass(model, toks)
    depass_tl.run_with_depass(model.eval(), toks)


def test_a_transformerlens_model_in_training_mode_is_deterministic_and_accepted() -> None:
    """HookedTransformer and TL's native Bridge have no dropout: the same forward pass as in eval mode."""
    model, toks = model_of("random_model", fresh=True)
    model.train()
    assert float(_attributed(model, toks).abs().max()) < 1e-4
