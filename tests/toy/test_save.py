"""``depass_tl.toy.save``: a trained model + vocabulary -> a folder every TL version loads.

The model comes from the test factory (tests/models.py): a ``HookedTransformer`` on TL 2.x / 3.x, TL's
native ``TransformerBridge`` on TL 4.x; where TL has both (3.x), a Bridge saves too and must write the
same tensors as the HookedTransformer it was loaded from.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from depass_tl import toy
from depass_tl.errors import DePassError
from depass_tl.toy.tokenizer import TOKENIZER_FILES
from tests._tl_version import HAS_BRIDGE, HAS_HOOKED, TL_MAJOR
from tests.models import config_model, randomise
warnings.filterwarnings("ignore", category=DeprecationWarning)

VOCAB = ["<|BOS|>", "When", " Mary", " and", " John", ",", " to"]


def _model(**overrides):
    cfg = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=len(VOCAB), act_fn="gelu",
               normalization_type="LN", seed=3, dtype=torch.float32)
    model = config_model(**(cfg | overrides))
    randomise(model, seed=3)  # TL initialises norm weights to 1 and biases to 0: random ones show a dropped one
    return model.eval()


#: The classes ``toy.load`` builds on the installed TL (``"hooked"`` needs TL < 4, ``"bridge"`` TL >= 3).
LOAD_CLASSES = (["hooked"] if HAS_HOOKED else []) + (["bridge"] if HAS_BRIDGE else [])


@pytest.mark.parametrize("overrides", [{}, {"attn_only": True}, {"normalization_type": None, "act_fn": "relu"}])
def test_round_trip_gives_the_same_function_on_every_class(tmp_path: Path, overrides: dict) -> None:
    model = _model(**overrides)
    out = toy.save(model, VOCAB, tmp_path / "mine", description="a test", metrics={"acc": 0.5}, training={"steps": 1})
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.safetensors", "toy.json", *TOKENIZER_FILES])
    config = json.loads((out / "toy.json").read_text())
    assert config["name"] == "mine" and config["metrics"] == {"acc": 0.5} and config["vocab"] == VOCAB
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5, 4, 6]])
    with torch.no_grad():
        expected = model(tokens)
        for model_class in LOAD_CLASSES:
            loaded, encoder = toy.load(out, model_class=model_class)
            torch.testing.assert_close(loaded(tokens), expected, rtol=0, atol=1e-5)
            assert loaded.to_str_tokens("When Mary and John", prepend_bos=False) == ["When", " Mary", " and", " John"]
            assert encoder.vocab == VOCAB


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"gated_mlp": True, "act_fn": "silu"}, "gated_mlp=True"),
        ({"positional_embedding_type": "rotary"}, "positional_embedding_type='rotary'"),
        ({"normalization_type": "LNPre"}, "normalization_type='LNPre'"),
        ({"act_fn": "solu_ln"}, "act_fn='solu_ln'"),
        ({"n_key_value_heads": 1}, "n_key_value_heads=1"),
        ({"final_rms": True}, "final_rms=True"),
        # not among the stored fields: they were dropped, and the loaded model computed something else
        ({"output_logits_soft_cap": 1.0}, "output_logits_soft_cap=1.0"),
        ({"attn_scores_soft_cap": 0.5}, "attn_scores_soft_cap=0.5"),
        ({"attention_dir": "bidirectional"}, "attention_dir='bidirectional'"),
    ],
)
def test_configs_the_bridge_would_compute_differently_are_refused(tmp_path: Path, overrides: dict, field: str) -> None:
    with pytest.raises(DePassError, match=rf"cannot be saved as a toy model.*{field}"):
        toy.save(_model(**overrides), VOCAB, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bad_vocabularies_and_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DePassError, match="the vocabulary has 6 tokens, the model's d_vocab is 7"):
        toy.save(_model(), VOCAB[:-1], tmp_path / "x")
    with pytest.raises(DePassError, match="must start with"):
        toy.save(_model(), VOCAB[1:] + ["<|BOS|>"], tmp_path / "x")
    with pytest.raises(DePassError, match="takes a HookedTransformer"):
        toy.save(torch.nn.Linear(2, 2), VOCAB, tmp_path / "x")


@pytest.mark.skipif(not HAS_BRIDGE, reason=f"needs TransformerBridge (TL >= 3); installed TL {TL_MAJOR}.x")
def test_a_bridge_saves_the_tensors_it_was_loaded_from(tmp_path: Path) -> None:
    """Save -> load as a native Bridge -> save again: the same tensors, names and config (HookedTransformer layout)."""
    from safetensors.torch import load_file

    first = toy.save(_model(), VOCAB, tmp_path / "first", description="d")
    bridge, _ = toy.load(first, model_class="bridge")
    second = toy.save(bridge, VOCAB, tmp_path / "second", name="first", description="d")
    a, b = (load_file(str(f / "model.safetensors")) for f in (first, second))
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((first / "toy.json").read_text()) == json.loads((second / "toy.json").read_text())


@pytest.mark.skipif(not HAS_BRIDGE, reason=f"needs TransformerBridge (TL >= 3); installed TL {TL_MAJOR}.x")
def test_a_bridge_around_a_hugging_face_model_is_refused(tmp_path: Path) -> None:
    from tests.bridge_models import build_bridge

    model, _ = build_bridge("gpt2")
    with pytest.raises(DePassError, match="TL's native model.*around GPT2LMHeadModel"):
        toy.save(model, ["<|BOS|>"] + [f" w{i}" for i in range(model.cfg.d_vocab - 1)], tmp_path / "x")
    assert not (tmp_path / "x").exists()
