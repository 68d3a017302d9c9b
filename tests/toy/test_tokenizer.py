"""The toys' Hugging Face tokenizers split exactly as ToyEncoder does, on every TL / transformers version."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from depass_tl import toy
from depass_tl.errors import DePassError
from depass_tl.toy.data import FACTS, ioi_prompts
from depass_tl.toy.encoder import ToyEncoder, split_words
from depass_tl.toy.loading import WEIGHTS_DIR
from depass_tl.toy.tokenizer import UNK_TOKEN, build_tokenizer, load_tokenizer

NAMES = ["facts", "induction", "ioi"]
TOKENIZERS = {name: load_tokenizer(WEIGHTS_DIR / name) for name in NAMES}
ENCODERS = {name: ToyEncoder(toy.info(name)["vocab"]) for name in NAMES}


def _ids(name: str, text: str) -> list[int]:
    return TOKENIZERS[name](text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", NAMES)
def test_files_hold_the_models_vocabulary_plus_unk(name: str) -> None:
    vocab = toy.info(name)["vocab"]
    tok = TOKENIZERS[name]
    assert tok.convert_ids_to_tokens(list(range(len(vocab) + 1))) == [*vocab, UNK_TOKEN]
    assert tok.bos_token == tok.eos_token == tok.pad_token == vocab[0] and tok.unk_token == UNK_TOKEN
    assert tok.unk_token_id == len(vocab)  # one past the model's vocabulary: it has no embedding
    shipped = json.loads((WEIGHTS_DIR / name / "tokenizer.json").read_text())["model"]["vocab"]
    assert shipped == json.loads(build_tokenizer(vocab).to_str())["model"]["vocab"]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_ioi_prompt_gives_the_encoders_ids(split: str) -> None:
    for p in ioi_prompts(200, split=split, seed=11):
        text = p.text + p.io
        assert _ids("ioi", text) == ENCODERS["ioi"].encode(text, prepend_bos=False)[0].tolist(), text


def test_every_fact_gives_the_encoders_ids() -> None:
    for f in FACTS:
        text = f.prompt + f.attribute
        assert _ids("facts", text) == ENCODERS["facts"].encode(text, prepend_bos=False)[0].tolist(), text


@pytest.mark.parametrize("name", NAMES)
def test_decoding_concatenates_the_pieces(name: str) -> None:
    vocab = ENCODERS[name].vocab
    ids = list(range(1, len(vocab)))
    assert TOKENIZERS[name].decode(ids) == "".join(vocab[1:])
    assert TOKENIZERS[name].batch_decode([[i] for i in ids]) == vocab[1:]  # how TL's to_str_tokens decodes


# Text built from each vocabulary's words plus characters it does not know (spaces, tabs, newlines,
# other letters): wherever the encoder accepts the text, the tokenizer gives the same ids; wherever it
# refuses, the tokenizer marks the offending piece as <|UNK|> (never a known token in its place).
_ALPHABET = st.sampled_from(["a", "Z", "é", "7", "'", ",", ".", "!", " ", "  ", "\t", "\n", "-", "ü"])


@st.composite
def _texts(draw: st.DrawFn, name: str) -> str:
    vocab = ENCODERS[name].vocab[1:]
    parts = draw(st.lists(st.one_of(st.sampled_from(vocab), _ALPHABET), min_size=0, max_size=12))
    return "".join(parts)


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_matches_the_encoder_on_any_text(name: str) -> None:
    unk = TOKENIZERS[name].unk_token_id

    @given(_texts(name))
    def check(text: str) -> None:
        ids = _ids(name, text)
        try:
            expected = ENCODERS[name].encode(text, prepend_bos=False)[0].tolist() if text else []
        except DePassError:
            assert unk in ids, (text, ids)
            known = [p for p in _pieces(text) if p in ENCODERS[name].vocab]
            assert [i for i in ids if i != unk] == [ENCODERS[name].token_id(p) for p in known]
        else:
            assert ids == expected, text

    check()


def _pieces(text: str) -> list[str]:
    """The pieces the tokenizer's pre-tokenizer makes: the pattern's matches and the gaps between them."""
    import re

    from depass_tl.toy.encoder import TOKEN_PATTERN

    pieces, end = [], 0
    for m in re.finditer(TOKEN_PATTERN, text):
        if m.start() > end:
            pieces.append(text[end : m.start()])
        pieces.append(m.group(0))
        end = m.end()
    if end < len(text):
        pieces.append(text[end:])
    return pieces


def test_split_words_and_the_tokenizer_agree_on_a_known_sentence() -> None:
    text = "Then, Mary and John went to the store. John gave a drink to"
    tokens = TOKENIZERS["ioi"].convert_ids_to_tokens(_ids("ioi", text))
    assert tokens == split_words(text)


def test_unknown_words_become_unk_which_the_model_cannot_embed() -> None:
    model, encoder = toy.load("ioi")
    tokens = model.to_tokens("When Mary kissed John")
    assert model.to_str_tokens(tokens[0]) == ["<|BOS|>", "When", " Mary", UNK_TOKEN, " John"]
    assert int(tokens[0, 3]) == model.cfg.d_vocab
    with pytest.raises(IndexError):
        model(tokens)
    with pytest.raises(DePassError, match="word ' kissed' in 'When Mary kissed John' is not in the toy vocabulary"):
        encoder.encode("When Mary kissed John")


def test_build_tokenizer_refuses_bad_vocabularies() -> None:
    with pytest.raises(DePassError, match="must start with"):
        build_tokenizer([" a", "<|BOS|>"])
    with pytest.raises(DePassError, match="unique tokens and no '<\\|UNK\\|>'"):
        build_tokenizer(["<|BOS|>", " a", " a"])
    with pytest.raises(DePassError, match="no tokenizer.json"):
        load_tokenizer(WEIGHTS_DIR)


def test_model_to_tokens_equals_the_encoder() -> None:
    model, encoder = toy.load("ioi")
    texts = [p.text for p in ioi_prompts(20, split="heldout", seed=5)]
    for text in texts:
        assert torch.equal(model.to_tokens(text), encoder.encode(text))
        assert torch.equal(model.to_tokens(text, prepend_bos=False), encoder.encode(text, prepend_bos=False))
