"""Loading the shipped toy models: offline, no pickle, both model classes, identical logits, clear errors.

Runs on every TL version: each test uses the classes the installed TransformerLens has
(``HookedTransformer`` on 2.x / 3.x, ``TransformerBridge`` on 3.x / 4.x); the cross-class checks need
both, so they run on TL 3.x, which CI installs.
"""

from __future__ import annotations

import json
import pickle
import socket
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import depass_tl
from depass_tl import toy
from depass_tl.errors import DePassError
from depass_tl.toy.checkpoint import MODEL_FILE, convert_v1, hooked_to_bridge_state
from depass_tl.toy.data import ioi_prompts, repeated_sequences
from depass_tl.toy.encoder import ToyEncoder
from depass_tl.toy.loading import WEIGHTS_DIR
from tests._tl_version import HAS_BRIDGE, HAS_HOOKED, TL_MAJOR, TL_VERSION

warnings.filterwarnings("ignore", category=DeprecationWarning)

NAMES = ["facts", "induction", "ioi"]
CLASSES = (["hooked"] if HAS_HOOKED else []) + (["bridge"] if HAS_BRIDGE else [])
CLASS_NAMES = {"hooked": "HookedTransformer", "bridge": "TransformerBridge"}
needs_both = pytest.mark.skipif(
    not (HAS_HOOKED and HAS_BRIDGE),
    reason=f"compares HookedTransformer with TransformerBridge; TransformerLens {TL_VERSION} has only one",
)

# The configurations documented in the README / depass_tl.toy docstring.
DOCUMENTED = {
    "induction": dict(n_layers=2, d_model=64, n_heads=4, d_head=16, attn_only=True, normalization_type="LN"),
    "ioi": dict(n_layers=2, d_model=64, n_heads=4, d_head=16, attn_only=True, normalization_type="LN"),
    "facts": dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, attn_only=False, normalization_type="LN"),
}


def test_available_lists_the_three_models() -> None:
    assert toy.available() == NAMES


def test_auto_picks_the_class_this_version_has() -> None:
    model, _ = toy.load("facts")
    expected = "HookedTransformer" if HAS_HOOKED else "TransformerBridge"
    assert type(model).__name__ == expected == CLASS_NAMES[toy.default_model_class()]


@pytest.mark.parametrize("model_class", CLASSES)
@pytest.mark.parametrize("name", NAMES)
def test_load_builds_documented_config(name: str, model_class: str) -> None:
    model, encoder = toy.load(name, model_class=model_class)
    assert type(model).__name__ == CLASS_NAMES[model_class]
    assert isinstance(encoder, ToyEncoder)
    for key, value in DOCUMENTED[name].items():
        assert getattr(model.cfg, key) == value, key
    assert model.cfg.d_vocab == len(encoder)
    assert model(torch.zeros(1, 2, dtype=torch.long)).shape[-1] == len(encoder)
    assert model.cfg.positional_embedding_type == "standard"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training
    assert model.tokenizer is not None and model.tokenizer.convert_ids_to_tokens(1) == encoder.vocab[1]


@pytest.mark.parametrize("name", NAMES)
def test_weight_files_are_safetensors_not_pickles(name: str) -> None:
    raw = (WEIGHTS_DIR / name / MODEL_FILE).read_bytes()
    assert raw[:2] != b"PK" and raw[:1] != b"\x80"  # not a torch.save zip, not a raw pickle
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert "embed.W_E" in header and header["embed.W_E"]["dtype"] == "F32"  # HookedTransformer names
    assert not [k for k in header if k.endswith((".mask", ".IGNORE"))]  # parameters only, no buffers
    config = json.loads((WEIGHTS_DIR / name / "toy.json").read_text())
    assert config["name"] == name and config["vocab"][0] == "<|BOS|>"


def test_shipped_weights_are_a_few_megabytes() -> None:
    total = sum(p.stat().st_size for p in Path(WEIGHTS_DIR).rglob("*") if p.is_file())
    assert total < 4_000_000


@pytest.mark.parametrize("model_class", CLASSES)
@pytest.mark.parametrize("name", NAMES)
def test_load_works_offline_without_pickle(name: str, model_class: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise RuntimeError("forbidden call during toy.load")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, encoder = toy.load(name, model_class=model_class)
    tokens = torch.zeros(1, 3, dtype=torch.long)
    assert model(tokens).shape == (1, 3, len(encoder))
    # the forbidden calls really are forbidden inside the patch
    with pytest.raises(RuntimeError, match="forbidden"):
        torch.load("x")


@pytest.mark.parametrize("model_class", CLASSES)
def test_loads_are_independent_copies(model_class: str) -> None:
    a, _ = toy.load("induction", model_class=model_class)
    b, _ = toy.load("induction", model_class=model_class)
    with torch.no_grad():
        for p in a.parameters():
            p.zero_()
    assert all(p.abs().sum() > 0 for p in b.parameters() if p.dim() > 1)
    c, _ = toy.load("induction", model_class=model_class)
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), c.parameters()))


def _inputs(name: str, encoder: ToyEncoder) -> torch.Tensor:
    if name == "induction":
        return repeated_sequences(4, half_len=20, d_vocab=len(encoder), seed=1)
    if name == "ioi":
        rows = [encoder.encode(p.text)[0] for p in ioi_prompts(8, split="heldout", seed=2)]
        width = min(len(r) for r in rows)
        return torch.stack([r[:width] for r in rows])
    return encoder.encode([" Anna Kowal likes to play", " Boris Novak works as a"])


@needs_both
@pytest.mark.parametrize("name", NAMES)
def test_hooked_and_bridge_compute_the_same_logits(name: str) -> None:
    hooked, encoder = toy.load(name, model_class="hooked")
    bridge, _ = toy.load(name, model_class="bridge")
    tokens = _inputs(name, encoder)
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hooked(tokens), rtol=0, atol=1e-5)


@needs_both
def test_hooked_and_bridge_give_the_same_decomposition() -> None:
    prompt = "When Mary and John went to the store, John gave a drink to"
    values = []
    for model_class in ("hooked", "bridge"):
        model, _ = toy.load("ioi", model_class=model_class)
        _, dc = depass_tl.run_with_depass(model, prompt, components=depass_tl.heads())
        assert max(dc.completeness_error(relative=True).values()) < 1e-5
        values.append(dc.logit_attrs(" Mary", incorrect_tokens=" John"))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=2e-5)


@pytest.mark.skipif(TL_MAJOR < 4, reason=f"TransformerLens {TL_VERSION} has no convert_tl_checkpoint (added in 4.x)")
@pytest.mark.parametrize("name", NAMES)
def test_bridge_state_matches_tl4s_own_converter(name: str) -> None:
    """TL 4 ships a converter for HookedTransformer checkpoints; ours (needed on TL 3.x too) agrees with it."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    state = load_file(str(WEIGHTS_DIR / name / MODEL_FILE))
    config = toy.info(name)["model_config"]
    ours = hooked_to_bridge_state(state, config)
    theirs = convert_tl_checkpoint(state, TransformerBridgeConfig.from_dict(dict(config)))
    assert sorted(ours) == sorted(theirs) and "unembed.bias" in ours
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("model_class", CLASSES)
def test_the_unembedding_bias_is_kept(model_class: str) -> None:
    """The toys have a nonzero ``b_U``; a class that dropped it would shift every logit by it."""
    model, _ = toy.load("ioi", model_class=model_class)
    b_U = load_file(str(WEIGHTS_DIR / "ioi" / MODEL_FILE))["unembed.b_U"]
    assert b_U.abs().max() > 0.01
    torch.testing.assert_close(model.unembed.b_U, b_U, rtol=0, atol=0)
    tokens = torch.tensor([[0, 1, 2]])
    with torch.no_grad():
        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        _, cache = model.run_with_cache(tokens, names_filter=last)
        by_hand = model.ln_final(cache[last]) @ model.unembed.W_U + b_U
        torch.testing.assert_close(model(tokens), by_hand, rtol=1e-5, atol=1e-5)


def test_unknown_name_lists_available_models() -> None:
    with pytest.raises(DePassError, match=r"'nope'.*\['facts', 'induction', 'ioi'\]"):
        toy.load("nope")
    with pytest.raises(DePassError, match="available"):
        toy.info("nope")
    with pytest.raises(DePassError, match="model_class must be one of"):
        toy.load("ioi", model_class="encoder")  # type: ignore[arg-type]


def test_a_missing_class_is_refused_with_the_alternative() -> None:
    if not HAS_HOOKED:
        with pytest.raises(DePassError, match=r"TransformerLens 4 removed; use model_class='bridge'"):
            toy.load("ioi", model_class="hooked")
    if not HAS_BRIDGE:
        with pytest.raises(DePassError, match=r"needs TransformerBridge.*use model_class='hooked'"):
            toy.load("ioi", model_class="bridge")
    if HAS_HOOKED and HAS_BRIDGE:
        assert {type(toy.load("facts", model_class=c)[0]).__name__ for c in CLASSES} == set(CLASS_NAMES.values())


def test_info_has_metrics_and_vocab() -> None:
    config = toy.info("ioi")
    assert config["format_version"] == 2
    assert config["model_config"]["d_vocab"] == len(config["vocab"])
    assert {"heldout_io_top_name_accuracy", "heldout_io_vs_s_accuracy"} <= set(config["metrics"])


def test_other_format_versions_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes((WEIGHTS_DIR / "facts" / MODEL_FILE).read_bytes())
    (folder / "toy.json").write_text(json.dumps(dict(toy.info("facts"), format_version=7)))
    with pytest.raises(DePassError, match="has format 7, this version of depass_tl reads format 2"):
        toy.load(folder)


def test_convert_v1_keeps_every_parameter(tmp_path: Path) -> None:
    """The old side-by-side format (TL 3 state dict with its mask buffers) converts losslessly."""
    state = load_file(str(WEIGHTS_DIR / "facts" / MODEL_FILE))
    old = dict(state)
    for layer in range(2):  # what format 1 held besides the parameters
        old[f"blocks.{layer}.attn.mask"] = torch.zeros(0, 0, dtype=torch.bool)
        old[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(-1e5)
    save_file(old, str(tmp_path / "facts.safetensors"))
    new = toy.info("facts")
    config = {"format_version": 1, "name": "facts", "description": new["description"],
              "hooked_transformer_config": new["model_config"], "vocab": new["vocab"],
              "metrics": new["metrics"], "training": new["training"]}
    (tmp_path / "facts.json").write_text(json.dumps(config))
    out = convert_v1(tmp_path / "facts.json", tmp_path / "converted")
    converted = load_file(str(out / MODEL_FILE))
    assert sorted(converted) == sorted(state)
    assert all(torch.equal(converted[k], state[k]) for k in state)
    assert toy.info(out) == new
    model, encoder = toy.load(out)
    assert model.to_str_tokens(" Anna Kowal", prepend_bos=False) == [" Anna", " Kowal"]


def test_build_model_runs_hand_set_weights_without_norms() -> None:
    """The distilled illusion example (no norms, float64, built by build_model) on this TL's class, and on TL 3.x
    the same weights as the other class."""
    from depass_tl.subspace_patching.examples import distilled_model, distilled_tokens, logit_diff
    from depass_tl.toy.checkpoint import hooked_to_bridge_state

    model = distilled_model()
    assert type(model).__name__ == CLASS_NAMES[toy.default_model_class()] and model.cfg.normalization_type is None
    assert logit_diff(model(distilled_tokens(1, 2, 3))).tolist() == [1.0, 2.0, 3.0]
    _, dc = depass_tl.run_with_depass(model, distilled_tokens(1, 2))
    assert max(dc.completeness_error().values()) < 1e-12
    if HAS_HOOKED and HAS_BRIDGE:
        from depass_tl.toy.loading import build_model

        state = {k: v for k, v in model.state_dict().items() if not k.endswith((".mask", ".IGNORE"))}
        config = dict(n_layers=1, d_model=4, n_ctx=4, d_head=2, n_heads=1, d_mlp=3, d_vocab=4, act_fn="relu",
                      normalization_type=None, positional_embedding_type="standard", attn_only=False)
        bridge = build_model(config, state, model_class="bridge", dtype=torch.float64)
        assert logit_diff(bridge(distilled_tokens(1, 2, 3))).tolist() == [1.0, 2.0, 3.0]
        assert sorted(bridge.state_dict()) == sorted(hooked_to_bridge_state(state, config))
