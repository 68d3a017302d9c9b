"""ToyEncoder: GPT-2-like word splitting, round trips, and clear errors."""

from __future__ import annotations

import pytest
import torch

from depass_tl.errors import DePassError
from depass_tl.toy.data import IOI_NAMES, facts_vocab, induction_vocab, ioi_prompts, ioi_vocab
from depass_tl.toy.encoder import BOS_TOKEN, ToyEncoder, split_words

IOI_TEXT = "When Mary and John went to the store, John gave a drink to"


def test_split_words_keeps_leading_spaces_like_gpt2() -> None:
    assert split_words(IOI_TEXT) == [
        "When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John", " gave",
        " a", " drink", " to",
    ]


def test_known_ids_on_hand_built_vocab() -> None:
    enc = ToyEncoder([BOS_TOKEN, "Hi", " there", "!"])
    assert enc.encode("Hi there!").tolist() == [[0, 1, 2, 3]]
    assert enc.encode(["Hi!", "Hi there"], prepend_bos=False).tolist() == [[1, 3], [1, 2]]
    assert enc.token_id(" there") == 2
    assert len(enc) == 4


def test_ioi_prompt_round_trips_and_names_are_single_tokens() -> None:
    enc = ToyEncoder(ioi_vocab())
    tokens = enc.encode(IOI_TEXT)
    assert tokens.shape == (1, 15) and tokens.dtype == torch.long
    assert enc.decode(tokens[0]) == BOS_TOKEN + IOI_TEXT
    assert enc.decode(tokens) == [BOS_TOKEN + IOI_TEXT]
    assert enc.to_str_tokens(tokens) == [BOS_TOKEN, *split_words(IOI_TEXT)]
    assert enc.to_str_tokens(IOI_TEXT, prepend_bos=False) == split_words(IOI_TEXT)
    for name in IOI_NAMES:
        assert enc.to_str_tokens(" " + name, prepend_bos=False) == [" " + name]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_ioi_prompt_round_trips(split: str) -> None:
    enc = ToyEncoder(ioi_vocab())
    for p in ioi_prompts(100, split=split, seed=3):
        ids = enc.encode(p.text + p.io, prepend_bos=False)[0]
        assert enc.decode(ids) == p.text + p.io
        assert enc.to_str_tokens(ids)[-1] == p.io


@pytest.mark.parametrize("vocab", [induction_vocab(), facts_vocab(), ioi_vocab()])
def test_shipped_vocabularies_are_valid_and_decode_back(vocab: list[str]) -> None:
    enc = ToyEncoder(vocab)
    everything = torch.arange(1, len(vocab))
    text = enc.decode(everything)
    assert isinstance(text, str)
    if all(t.startswith(" ") for t in vocab[1:]):  # pure word lists re-encode exactly
        assert torch.equal(enc.encode(text, prepend_bos=False)[0], everything)


def test_unknown_word_names_the_word_and_points_to_vocab() -> None:
    enc = ToyEncoder(ioi_vocab())
    with pytest.raises(DePassError, match=r"' Bob'.*encoder\.vocab"):
        enc.encode("When Mary and Bob went to the store")
    with pytest.raises(DePassError, match=r"' Bob'.*encoder\.vocab"):
        enc.token_id(" Bob")


def test_bad_whitespace_is_rejected() -> None:
    enc = ToyEncoder(ioi_vocab())
    for text in ["When  Mary", "When\nMary", "When Mary "]:
        with pytest.raises(DePassError, match="cannot split"):
            enc.encode(text)


def test_batch_of_different_lengths_is_rejected() -> None:
    enc = ToyEncoder(ioi_vocab())
    with pytest.raises(DePassError, match=r"different token lengths \[3, 4\]"):
        enc.encode(["When Mary", "When Mary and"])
    with pytest.raises(DePassError, match="empty list"):
        enc.encode([])


def test_bad_vocab_and_bad_ids_are_rejected() -> None:
    with pytest.raises(DePassError, match="must start with"):
        ToyEncoder([" a", BOS_TOKEN])
    with pytest.raises(DePassError, match=r"duplicate tokens \[' a'\]"):
        ToyEncoder([BOS_TOKEN, " a", " a"])
    enc = ToyEncoder([BOS_TOKEN, " a"])
    with pytest.raises(DePassError, match="outside the toy vocabulary"):
        enc.decode(torch.tensor([0, 5]))
    with pytest.raises(DePassError, match="one sequence"):
        enc.to_str_tokens(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(DePassError, match="decode"):
        enc.decode(torch.zeros(1, 2, 3, dtype=torch.long))


def test_vocab_property_is_a_copy() -> None:
    enc = ToyEncoder([BOS_TOKEN, " a"])
    enc.vocab.append(" b")
    assert enc.vocab == [BOS_TOKEN, " a"]
