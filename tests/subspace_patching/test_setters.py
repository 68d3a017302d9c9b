"""Subspace patch setters: the pure operation, TL hooks, and generic_activation_patch."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformer_lens.patching as tlp

from depass_tl.errors import DePassError
from depass_tl.subspace_patching import subspace_patch, subspace_patch_hook, subspace_patch_setter
from tests.models import config_model
from tests.subspace_patching.toy import SITE, build_toy, logit_diff, tokens

F64 = torch.float64
E = torch.eye(3, dtype=F64)
V_ILL = (E[0] + E[1]) / 2**0.5


def test_patch_on_the_distilled_example() -> None:
    h = torch.tensor([[[1.0, 0.0, 1.0]]], dtype=F64)
    h2 = torch.tensor([[[2.0, 0.0, 2.0]]], dtype=F64)
    assert torch.allclose(subspace_patch(h, h2, V_ILL), torch.tensor([[[1.5, 0.5, 1.0]]], dtype=F64))
    assert torch.equal(subspace_patch(h, h2, E[0]), torch.tensor([[[2.0, 0.0, 1.0]]], dtype=F64))


def test_k_dimensional_patch_swaps_coordinates_at_chosen_positions() -> None:
    base = torch.arange(2 * 3 * 3, dtype=F64).reshape(2, 3, 3)
    source = base + 100
    out = subspace_patch(base, source, E[:, [0, 2]], pos=[0, -1])
    expected = base.clone()
    expected[:, [0, 2], 0] += 100
    expected[:, [0, 2], 2] += 100
    assert torch.equal(out, expected)
    assert torch.equal(base, torch.arange(18, dtype=F64).reshape(2, 3, 3))  # out of place


def test_per_example_positions_and_heads() -> None:
    base = torch.zeros(2, 3, 2, 4, dtype=F64)
    source = torch.ones(2, 3, 2, 4, dtype=F64)
    v = torch.eye(4, dtype=F64)[:, :1]
    out = subspace_patch(base, source, v, pos=torch.tensor([0, 2]), head=1)
    assert out.sum() == 2
    assert out[0, 0, 1, 0] == 1 and out[1, 2, 1, 0] == 1


def test_gradients_flow_through_the_patch() -> None:
    base = torch.randn(1, 2, 3, dtype=F64, requires_grad=True)
    raw = torch.tensor([[1.0], [1.0], [0.0]], dtype=F64, requires_grad=True)
    basis = raw / raw.norm()
    out = subspace_patch(base, torch.randn(1, 2, 3, dtype=F64), basis, pos=-1)
    (out**2).sum().backward()
    assert base.grad is not None and raw.grad is not None
    assert float(raw.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    ("v", "y"), [(V_ILL, 2.0), (E[0], 1.0), (E[1], 1.0), (E[2], 2.0)], ids=["v_ill", "e1", "e2", "e3"]
)
def test_run_with_hooks_reproduces_the_table(v: torch.Tensor, y: float) -> None:
    model = build_toy()
    _, cache = model.run_with_cache(tokens(2))
    fn = subspace_patch_hook(v, cache[SITE], pos=-1)
    out = logit_diff(model.run_with_hooks(tokens(1), fwd_hooks=[(SITE, fn)])).detach()
    assert float(out[0]) == pytest.approx(y, abs=1e-12)
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_generic_activation_patch_by_position() -> None:
    model = build_toy()
    _, clean_cache = model.run_with_cache(tokens(2))
    metric = lambda logits: logit_diff(logits).mean()  # noqa: E731
    out = tlp.generic_activation_patch(
        model, tokens(1), clean_cache, metric, patch_setter=subspace_patch_setter(V_ILL),
        activation_name="post", index_axis_names=["layer", "pos"],
    )
    # position 0 holds token 0 (x = 0) in both runs: no change; position 1: y goes from 1 to 2
    assert out.shape == (1, 2)
    assert torch.allclose(out, torch.tensor([[1.0, 2.0]], dtype=out.dtype))
    all_pos = tlp.generic_activation_patch(
        model, tokens(1), clean_cache, metric, patch_setter=subspace_patch_setter(E[0]),
        activation_name="post", index_axis_names=["layer"],
    )
    assert torch.allclose(all_pos, torch.tensor([1.0], dtype=out.dtype))


def test_identity_basis_equals_tl_head_patching() -> None:
    cfg = dict(n_layers=2, d_model=8, n_ctx=4, d_head=4, n_heads=2, d_mlp=16,
                                  d_vocab=10, act_fn="gelu", dtype=F64, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = config_model(**cfg)
    clean, corrupt = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 5, 3]])
    _, clean_cache = model.run_with_cache(clean)
    metric = lambda logits: logits[0, -1, 4] - logits[0, -1, 7]  # noqa: E731
    ours = tlp.generic_activation_patch(
        model, corrupt, clean_cache, metric, patch_setter=subspace_patch_setter(torch.eye(4, dtype=F64)),
        activation_name="z", index_axis_names=["layer", "pos", "head_index"],
    )
    theirs = tlp.get_act_patch_attn_head_out_by_pos(model, corrupt, clean_cache, metric)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(theirs, theirs[0, 0, 0].expand_as(theirs))  # the patch matters


def test_setter_rejects_an_unknown_index_layout() -> None:
    setter = subspace_patch_setter(V_ILL)
    with pytest.raises(DePassError, match="index_axis_names"):
        setter(torch.zeros(1, 2, 3), [0, 1, 0], torch.zeros(1, 2, 3))


def test_bad_inputs_raise() -> None:
    h = torch.zeros(1, 2, 3, dtype=F64)
    with pytest.raises(DePassError, match="differ in shape"):
        subspace_patch(h, torch.zeros(1, 3, 3, dtype=F64), V_ILL)
    with pytest.raises(DePassError, match="out of range"):
        subspace_patch(h, h, V_ILL, pos=5)
    with pytest.raises(DePassError, match="no head axis"):
        subspace_patch(h, h, V_ILL, head=0)
    with pytest.raises(DePassError, match="last dimension is 3"):
        subspace_patch_hook(torch.ones(4, dtype=F64) / 2, h)
    with pytest.raises(DePassError, match="not orthonormal"):
        subspace_patch_setter(torch.ones(3, dtype=F64))
    with pytest.raises(DePassError, match="\\[batch, pos, d\\]"):
        subspace_patch(torch.zeros(2, 3, dtype=F64), torch.zeros(2, 3, dtype=F64), E[:2, 0])
    with pytest.raises(DePassError, match="positions must be ints"):
        subspace_patch(h, h, V_ILL, pos=[True])
    with pytest.raises(DePassError, match="empty sequence"):
        subspace_patch(h, h, V_ILL, pos=[])
    with pytest.raises(DePassError, match="integer tensor of shape \\[batch=1\\]"):
        subspace_patch(h, h, V_ILL, pos=torch.tensor([0, 1]))
