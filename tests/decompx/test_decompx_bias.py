"""Unit tests of the bias policies (pure tensor code)."""

from __future__ import annotations

import pytest
import torch

from depass_tl.decompx.bias import BIAS_POLICIES, add_bias, check_bias_policy
from depass_tl.errors import DePassError

OWN = torch.tensor([0.0, 1.0, 0.0])  # component 1 owns the row


def test_bias_policy_goes_to_last_component():
    V = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.5, 0.5]])
    out = add_bias(V, torch.tensor([10.0, 20.0]), "bias", own=OWN)
    assert torch.equal(out, torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.5, 20.5]]))
    assert torch.equal(V, torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.5, 0.5]]))  # input untouched


def test_norm_and_equal_weights_by_hand():
    V = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 5.0]])  # norms 5, 0, 5
    b = torch.tensor([1.0, -1.0])
    assert torch.allclose(add_bias(V, b, "norm", own=OWN), V + torch.tensor([[0.5], [0.0], [0.5]]) * b)
    assert torch.allclose(add_bias(V, b, "equal", own=OWN), V + torch.tensor([[0.5], [0.0], [0.5]]) * b)
    # absdot: |V·b| = 1, 0, 5
    assert torch.allclose(add_bias(V, b, "absdot", own=OWN), V + torch.tensor([[1 / 6], [0.0], [5 / 6]]) * b)


@pytest.mark.parametrize("policy", ["absdot", "norm", "equal"])
def test_all_zero_weights_go_to_the_own_component(policy):
    V = torch.zeros(3, 2)
    b = torch.tensor([1.0, 2.0])
    assert torch.equal(add_bias(V, b, policy, own=OWN), torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]]))


def test_absdot_orthogonal_bias_is_not_lost():
    V = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([0.0, 3.0])  # every V_c · b = 0
    out = add_bias(V, b, "absdot", own=OWN)
    assert torch.equal(out.sum(0), V.sum(0) + b)
    assert torch.equal(out[1], torch.tensor([2.0, 3.0]))


@pytest.mark.parametrize("policy", BIAS_POLICIES)
def test_complete_on_random_stacks(policy):
    g = torch.Generator().manual_seed(0)
    V = torch.randn(5, 2, 3, 8, generator=g)  # [component, batch, pos, d]
    b = torch.randn(8, generator=g)
    own = torch.zeros(5, 1, 3)
    own[:3, 0] = torch.eye(3)
    out = add_bias(V, b, policy, own=own)
    assert (out.sum(0) - (V.sum(0) + b)).abs().max() < 1e-5


def test_unknown_policy():
    with pytest.raises(DePassError, match="bias_policy='dot' is not known"):
        check_bias_policy("dot")
