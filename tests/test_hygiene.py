"""Hook hygiene: nothing stays attached to the model, also after a run that raised; weights unchanged."""

from __future__ import annotations

import pytest
import torch

import depass_tl
from tests.models import make_model, random_tokens


def _n_hooks(model) -> int:
    """Hooks on the model's HookPoints (a Bridge lists a HookPoint under its alias names too: count it once)."""
    points = {id(hp): hp for hp in model.hook_dict.values()}.values()
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in points)


def test_no_hooks_left_and_weights_unchanged() -> None:
    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    depass_tl.run_with_depass(model, random_tokens(model))
    assert _n_hooks(model) == 0
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_no_hooks_left_after_the_forward_raises() -> None:
    model = make_model("gpt2")

    def broken(*args, **kwargs):
        raise RuntimeError("boom in the MLP")

    model.blocks[1].mlp.forward = broken  # the test owns this model
    with pytest.raises(RuntimeError, match="boom"):
        depass_tl.run_with_depass(model, random_tokens(model))
    assert _n_hooks(model) == 0


def test_user_hooks_are_not_touched() -> None:
    model = make_model("gpt2")
    seen = []
    model.blocks[0].hook_resid_pre.add_hook(lambda act, hook: seen.append(hook.name))
    depass_tl.run_with_depass(model, random_tokens(model))
    assert seen == [model.blocks[0].hook_resid_pre.name]  # a Bridge names the point by its canonical alias
    assert _n_hooks(model) == 1
    model.reset_hooks()
