"""Loading the shipped toy models: offline, no pickle, documented configs, clear errors."""

from __future__ import annotations

import json
import pickle
import socket
import struct
import warnings
from pathlib import Path

import pytest
import torch

from depass_tl import toy
from depass_tl.errors import DePassError
from depass_tl.toy.encoder import ToyEncoder
from depass_tl.toy.loading import WEIGHTS_DIR

warnings.filterwarnings("ignore", category=DeprecationWarning)

NAMES = ["facts", "induction", "ioi"]

# The configurations documented in the README / depass_tl.toy docstring.
DOCUMENTED = {
    "induction": dict(n_layers=2, d_model=64, n_heads=4, d_head=16, attn_only=True, normalization_type="LN"),
    "ioi": dict(n_layers=3, d_model=64, n_heads=4, d_head=16, d_mlp=256, attn_only=False, normalization_type="LN"),
    "facts": dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, attn_only=False, normalization_type="LN"),
}


def test_available_lists_the_three_models() -> None:
    assert toy.available() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_load_builds_documented_config(name: str) -> None:
    model, encoder = toy.load(name)
    assert isinstance(encoder, ToyEncoder)
    for key, value in DOCUMENTED[name].items():
        assert getattr(model.cfg, key) == value, key
    assert model.cfg.d_vocab == len(encoder) == model.cfg.d_vocab_out
    assert model.cfg.positional_embedding_type == "standard"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training
    assert model.tokenizer is None  # the encoder is separate; nothing was fetched


@pytest.mark.parametrize("name", NAMES)
def test_weight_files_are_safetensors_not_pickles(name: str) -> None:
    raw = (WEIGHTS_DIR / f"{name}.safetensors").read_bytes()
    assert raw[:2] != b"PK" and raw[:1] != b"\x80"  # not a torch.save zip, not a raw pickle
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert "embed.W_E" in header and header["embed.W_E"]["dtype"] == "F32"
    config = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    assert config["name"] == name and config["vocab"][0] == "<|BOS|>"


def test_shipped_weights_are_a_few_megabytes() -> None:
    total = sum(p.stat().st_size for p in Path(WEIGHTS_DIR).iterdir())
    assert total < 4_000_000


@pytest.mark.parametrize("name", NAMES)
def test_load_works_offline_without_pickle(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise RuntimeError("forbidden call during toy.load")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, encoder = toy.load(name)
    tokens = torch.zeros(1, 3, dtype=torch.long)
    assert model(tokens).shape == (1, 3, len(encoder))
    # the forbidden calls really are forbidden inside the patch
    with pytest.raises(RuntimeError, match="forbidden"):
        torch.load("x")


def test_loads_are_independent_copies() -> None:
    a, _ = toy.load("induction")
    b, _ = toy.load("induction")
    with torch.no_grad():
        a.embed.W_E.zero_()
    assert b.embed.W_E.abs().sum() > 0
    c, _ = toy.load("induction")
    assert torch.equal(b.embed.W_E, c.embed.W_E)


def test_unknown_name_lists_available_models() -> None:
    with pytest.raises(DePassError, match=r"'nope'.*\['facts', 'induction', 'ioi'\]"):
        toy.load("nope")
    with pytest.raises(DePassError, match="available"):
        toy.info("nope")


def test_info_has_metrics_and_vocab() -> None:
    config = toy.info("ioi")
    assert config["hooked_transformer_config"]["d_vocab"] == len(config["vocab"])
    assert {"heldout_io_top_name_accuracy", "heldout_io_vs_s_accuracy"} <= set(config["metrics"])
