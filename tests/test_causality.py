"""Causality: a token's component is exactly zero at every earlier position, at every hook."""

from __future__ import annotations

import pytest

import depass_tl
from tests.models import ARCHS, make_model, random_tokens


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("rule", ["softmax", "ratio", "max"])
def test_token_component_is_zero_before_its_position(arch: str, rule: str) -> None:
    model = make_model(arch, n_layers=2)
    toks = random_tokens(model, batch=2, pos=6)
    _, dc = depass_tl.run_with_depass(model, toks, mlp_rule=rule)
    for name, value in dc.items():
        for p in range(toks.shape[1]):
            c = dc.component(f"tok{p}")
            assert (value[c, :, :p] == 0).all(), (name, p)
            assert value[c, :, p:].abs().sum() > 0, (name, p)  # and it does reach its own position onwards
