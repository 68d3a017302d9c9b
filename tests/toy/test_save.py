"""``depass_tl.toy.save``: a trained HookedTransformer + vocabulary -> a folder every TL version loads.

Saving takes a ``HookedTransformer``, so these tests need TL 2.x / 3.x (training needs it too).
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
from tests._tl_version import HAS_BRIDGE, requires_hooked

pytestmark = requires_hooked
warnings.filterwarnings("ignore", category=DeprecationWarning)

VOCAB = ["<|BOS|>", "When", " Mary", " and", " John", ",", " to"]


def _model(**overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=len(VOCAB), act_fn="gelu",
               normalization_type="LN", seed=3)
    model = HookedTransformer(HookedTransformerConfig(**(cfg | overrides)))
    with torch.no_grad():  # TL initialises LN weights to 1 and biases to 0: randomise them so a dropped one shows
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b", "b_U", "b_O", "b_in", "b_out", "b_V")):
                p.add_(torch.randn_like(p) * 0.5)
    return model.eval()


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
        for model_class in ["hooked"] + (["bridge"] if HAS_BRIDGE else []):
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
