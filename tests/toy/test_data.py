"""Task generators: the splits really are held out, and facts need both subject tokens."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from depass_tl.errors import DePassError
from depass_tl.toy.data import (
    FACT_FIRST_NAMES,
    FACT_RELATIONS,
    FACT_SURNAMES,
    FACTS,
    IOI_HELDOUT_TEMPLATES,
    IOI_NAMES,
    IOI_TRAIN_TEMPLATES,
    copy_sequences,
    facts_vocab,
    ioi_name_pair_split,
    ioi_prompts,
    repeated_sequences,
)
from depass_tl.toy.encoder import ToyEncoder, split_words


def test_repeated_sequences_repeat_and_are_seeded() -> None:
    t = repeated_sequences(5, half_len=7, d_vocab=13, seed=1)
    assert t.shape == (5, 15)
    assert (t[:, 0] == 0).all()
    assert torch.equal(t[:, 1:8], t[:, 8:])
    assert ((t[:, 1:] >= 1) & (t[:, 1:] < 13)).all()
    assert torch.equal(t, repeated_sequences(5, half_len=7, d_vocab=13, seed=1))
    assert not torch.equal(t, repeated_sequences(5, half_len=7, d_vocab=13, seed=2))
    with pytest.raises(DePassError, match="half_len >= 1"):
        repeated_sequences(5, half_len=0, d_vocab=13, seed=1)


def test_copy_sequences_repeat_earlier_segments_at_many_distances() -> None:
    t = copy_sequences(200, seq_len=64, d_vocab=5000, seed=3)
    assert t.shape == (200, 64)
    assert (t[:, 0] == 0).all() and ((t[:, 1:] >= 1) & (t[:, 1:] < 5000)).all()
    assert torch.equal(t, copy_sequences(200, seq_len=64, d_vocab=5000, seed=3))
    assert not torch.equal(t, copy_sequences(200, seq_len=64, d_vocab=5000, seed=4))
    # With 4999 words, a bigram seen earlier in the row is (almost surely) a copy. Count the
    # positions whose next token an induction rule predicts, and the distances back to the copy.
    copyable, distances = 0, set()
    for row in t.tolist():
        for p in range(2, 64):
            earlier = [q for q in range(1, p - 1) if row[q - 1] == row[p - 1] and row[q] == row[p]]
            if earlier:
                copyable += 1
                distances.add(p - earlier[-1])
    assert copyable / (200 * 62) > 0.25  # a large share of the loss is in copyable positions
    assert len(distances) > 30  # no fixed offset predicts them: the copy must be found by content
    with pytest.raises(DePassError, match="seq_len >= 9"):
        copy_sequences(2, seq_len=4, d_vocab=13, seed=1)
    with pytest.raises(DePassError, match="copy_len"):
        copy_sequences(2, seq_len=20, d_vocab=13, seed=1, copy_len=(5, 2))


def test_ioi_name_pairs_are_disjoint_and_every_name_is_trained() -> None:
    train, heldout = ioi_name_pair_split()
    assert len(train) + len(heldout) == len(IOI_NAMES) * (len(IOI_NAMES) - 1) // 2
    assert not set(train) & set(heldout)
    assert len(heldout) >= 50
    trained_names = {n for pair in train for n in pair}
    assert trained_names == set(IOI_NAMES)


def _words(template: str) -> set[str]:
    filled = template.format(A="X", B="X", S="X", PLACE="X", OBJECT="X")
    return {w.strip() for w in split_words(filled)} - {"X"}


def test_heldout_templates_are_new_frames_of_known_words() -> None:
    assert not set(IOI_HELDOUT_TEMPLATES) & set(IOI_TRAIN_TEMPLATES)
    train_words = set().union(*(_words(t) for t in IOI_TRAIN_TEMPLATES))
    for template in IOI_HELDOUT_TEMPLATES:
        assert _words(template) <= train_words, template


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_ioi_prompts_have_one_io_and_two_s(split: str) -> None:
    train, heldout = ioi_name_pair_split()
    pairs = {frozenset(p) for p in (train if split == "train" else heldout)}
    templates = IOI_TRAIN_TEMPLATES if split == "train" else IOI_HELDOUT_TEMPLATES
    prompts = ioi_prompts(200, split=split, seed=0)
    for p in prompts:
        words = split_words(p.text)
        assert words.count(p.io) == 1 and words.count(p.s) == 2
        assert frozenset((p.io.strip(), p.s.strip())) in pairs
        assert p.template in templates
    # both clause orders (IO first / S first) occur
    assert len({split_words(p.text).index(p.io) < split_words(p.text).index(p.s) for p in prompts}) == 2
    with pytest.raises(DePassError, match="split must be"):
        ioi_prompts(1, split="test", seed=0)  # type: ignore[arg-type]


def test_facts_table_covers_every_subject_and_relation_once() -> None:
    keys = [(f.subject, f.relation) for f in FACTS]
    assert len(keys) == len(set(keys)) == len(FACT_FIRST_NAMES) * len(FACT_SURNAMES) * len(FACT_RELATIONS)
    enc = ToyEncoder(facts_vocab())
    for f in FACTS:
        assert f.prompt.startswith(f.subject)
        assert len(enc.encode(f.subject, prepend_bos=False)[0]) == 2
        assert len(enc.encode(f.attribute, prepend_bos=False)[0]) == 1
        assert f.attribute.strip() in FACT_RELATIONS[f.relation][1]


def test_no_single_subject_token_determines_a_fact() -> None:
    """Recall must combine first name and surname: neither alone predicts the attribute."""
    for position in (0, 1):  # first name, surname
        by_token: dict[tuple[str, str], set[str]] = defaultdict(set)
        for f in FACTS:
            by_token[(f.subject.split()[position], f.relation)].add(f.attribute)
        assert min(len(a) for a in by_token.values()) >= 3


def test_facts_use_every_attribute() -> None:
    for relation, (_, attributes) in FACT_RELATIONS.items():
        used = {f.attribute.strip() for f in FACTS if f.relation == relation}
        assert used == set(attributes)
