"""Backends behind one registry: which backend reads which model, and adding one at run time."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

import depass_tl
from depass_tl import DePassError
from depass_tl.backends import (
    Backend, backend_for, backends, install_targets, read_model_view, register_backend, unregister_backend,
)
from depass_tl.backends.bridge import is_bridge
from tests._tl_version import requires_hooked
from tests.models import make_model, random_tokens


def test_builtin_backends_and_their_order() -> None:
    assert [b.name for b in backends()] == [
        "TransformerBridge (BERT)", "TransformerBridge", "HookedEncoder", "transformers", "HookedTransformer",
    ]
    assert install_targets() == (
        ("transformer_lens", "HookedTransformer"), ("transformer_lens", "HookedEncoder"),
        ("transformer_lens.model_bridge", "TransformerBridge"),
    )
    model = make_model("gpt2")
    expected = "TransformerBridge" if is_bridge(model) else "HookedTransformer"  # the installed TL's class
    assert backend_for(model).name == expected and read_model_view(model).backend == expected
    with pytest.raises(DePassError, match="expected a transformer_lens.HookedTransformer, got Linear"):
        backend_for(torch.nn.Linear(2, 2))


@requires_hooked  # HookedEncoder: TL < 4
def test_encoder_backend_has_no_decoder_view() -> None:
    from transformer_lens import HookedEncoder, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=20,
                                  act_fn="gelu", seed=0)
    encoder = HookedEncoder(cfg)
    assert backend_for(encoder).method == "decompx"
    with pytest.raises(DePassError, match="HookedEncoder is not replayed by DePass's decoder replay"):
        depass_tl.capture(encoder, torch.tensor([[1, 2, 3]]))


class Wrapped:
    """A model class no built-in backend knows: it forwards everything to a HookedTransformer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "unembed":  # hide it from the duck-typed HookedTransformer backend
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)


def test_a_new_backend_is_one_registration() -> None:
    model = make_model("llama")
    toks = random_tokens(model)
    with pytest.raises(DePassError, match="got Wrapped"):
        depass_tl.run_with_depass(Wrapped(model), toks)
    backend = Backend(
        name="Wrapped",
        matches=lambda m: isinstance(m, Wrapped),
        read_view=lambda m: dataclasses.replace(read_model_view(m.inner), backend="Wrapped"),
    )
    register_backend(backend)
    try:
        with pytest.raises(DePassError, match="already registered"):
            register_backend(backend)
        logits, dc = depass_tl.run_with_depass(Wrapped(model), toks)
        ref_logits, ref = depass_tl.run_with_depass(model, toks)
        assert torch.equal(logits, ref_logits)
        for hook in ref:
            assert torch.equal(dc[hook], ref[hook])
        assert depass_tl.capture(Wrapped(model), toks).view.backend == "Wrapped"
    finally:
        unregister_backend("Wrapped")
    with pytest.raises(DePassError, match="no backend named 'Wrapped'"):
        unregister_backend("Wrapped")
