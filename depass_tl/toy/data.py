"""Task data for the toy models: repeated random sequences, IOI sentences, synthetic facts.

Everything here is deterministic given a seed, and the word lists define each model's vocabulary,
so the shipped weights, the encoders and the tests all agree.

* **induction**: the model is trained on :func:`copy_sequences` (random tokens in which segments of
  the earlier text recur at random distances, so only *content*, not position, says where to copy
  from) and evaluated on :func:`repeated_sequences` (``BOS`` + ``half_len`` random tokens + the same
  tokens again, the classic induction test). The repeats are predictable only by in-context copying
  (induction heads).
* **ioi**: indirect-object identification sentences in the style of Wang et al. (2022),
  ``"When Mary and John went to the store, John gave a drink to"`` → ``" Mary"``; defined in
  :mod:`depass_tl.toy.ioi_data` and re-exported here. Generalisation is tested on *held-out
  templates* (sentence frames never seen in training, built from words that are) and *held-out name
  pairs*. Every name is trained (in other pairs), so its embedding and unembedding are learned;
  names that never occurred in training would have untrained (random) embeddings, so no model
  could be expected to handle them.
* **facts**: a fixed table :data:`FACTS` of ``(subject, relation) → attribute``. Subjects are two
  tokens (first name + surname, e.g. ``" Anna Kowal"``) and every first name and every surname
  occurs in many subjects with unrelated attributes, so the attribute is a function of the *pair*:
  no single-token lookup can recall it, and the model has to combine the two tokens nonlinearly
  (in its MLPs, as in factual recall in real LMs).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.toy._words import stable_hash as _stable_hash
from depass_tl.toy._words import vocab_from as _vocab_from
from depass_tl.toy.encoder import BOS_TOKEN
from depass_tl.toy import ioi_data as _ioi_data
from depass_tl.toy.ioi_data import *  # noqa: F403  (re-exported: the IOI task lives in ioi_data)

__all__ = [
    "FACTS",
    "FACT_FIRST_NAMES",
    "FACT_RELATIONS",
    "FACT_SURNAMES",
    "Fact",
    "copy_sequences",
    "facts_vocab",
    "induction_vocab",
    "repeated_sequences",
    *_ioi_data.__all__,
]


# --------------------------------------------------------------------------------- induction
def induction_vocab(n_words: int = 200) -> list[str]:
    """BOS plus ``n_words`` made-up two-syllable words (``" baba"``, ``" bade"``, ...).

    Examples:
        >>> induction_vocab(3)
        ['<|BOS|>', ' babe', ' bafi', ' bako']
    """
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = [" " + a + b for a, b in itertools.product(syllables, syllables)]
    stride = 11  # coprime with len(words) = 4900, spreads the chosen words over the alphabet
    return [BOS_TOKEN] + [words[(1 + i * stride) % len(words)] for i in range(n_words)]


def repeated_sequences(
    n: int, *, half_len: int, d_vocab: int, seed: int
) -> Int[Tensor, "batch pos"]:
    """``BOS`` + ``half_len`` uniform random non-BOS tokens + the same tokens repeated.

    Args:
        n: Number of sequences.
        half_len: Length of each half; the result has ``1 + 2 * half_len`` positions.
        d_vocab: Vocabulary size (tokens are drawn from ``1 .. d_vocab - 1``).
        seed: Seed of the torch generator used.

    Examples:
        >>> t = repeated_sequences(2, half_len=3, d_vocab=10, seed=0)
        >>> t.shape, bool((t[:, 1:4] == t[:, 4:7]).all()), t[:, 0].tolist()
        (torch.Size([2, 7]), True, [0, 0])
    """
    if n < 1 or half_len < 1 or d_vocab < 2:
        raise DePassError(
            f"repeated_sequences needs n >= 1, half_len >= 1, d_vocab >= 2; got {n}, {half_len}, "
            f"{d_vocab}"
        )
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(1, d_vocab, (n, half_len), generator=gen)
    bos = torch.zeros(n, 1, dtype=torch.long)
    return torch.cat([bos, half, half], dim=1)


def copy_sequences(
    n: int,
    *,
    seq_len: int,
    d_vocab: int,
    seed: int,
    repeat_fraction: float = 0.3,
    copy_len: tuple[int, int] = (3, 12),
) -> Int[Tensor, "batch pos"]:
    """Training data for induction: random tokens in which earlier segments recur at random distances.

    Each row starts with ``BOS`` (id 0) and has ``seq_len`` positions. A fraction
    ``repeat_fraction`` of the rows are ``BOS`` + a random prefix + a random block + the same block
    again (+ random filler), with the block length drawn from ``4 .. (seq_len - 1) // 2``. The other
    rows are built left to right: with probability 1/2 (once there are a few tokens) copy a segment
    of ``copy_len`` tokens starting at a random earlier position, otherwise append 2-10 fresh
    uniform tokens. Because the distance to the earlier copy varies from row to row and within a
    row, no fixed-offset (positional) rule predicts the repeats: a model has to find the earlier
    occurrence of the current token by content and copy what followed it, i.e. learn a
    previous-token head and an induction head. (Trained on :func:`repeated_sequences` with one
    ``half_len`` only, a 2-layer model learns "copy from ``half_len - 1`` positions back" instead.)

    Args:
        n: Number of sequences.
        seq_len: Positions per sequence, including BOS (at least 9).
        d_vocab: Vocabulary size (tokens are drawn from ``1 .. d_vocab - 1``).
        seed: Seed of the Python :class:`random.Random` used.
        repeat_fraction: Fraction of rows in the "block repeated" format.
        copy_len: Inclusive range of the length of a copied segment.

    Examples:
        >>> t = copy_sequences(3, seq_len=20, d_vocab=50, seed=0)
        >>> t.shape, t[:, 0].tolist(), bool((t[:, 1:] > 0).all())
        (torch.Size([3, 20]), [0, 0, 0], True)
    """
    if n < 1 or seq_len < 9 or d_vocab < 2 or not 0 <= repeat_fraction <= 1:
        raise DePassError(
            f"copy_sequences needs n >= 1, seq_len >= 9, d_vocab >= 2, 0 <= repeat_fraction <= 1; "
            f"got n={n}, seq_len={seq_len}, d_vocab={d_vocab}, repeat_fraction={repeat_fraction}"
        )
    if not 1 <= copy_len[0] <= copy_len[1]:
        raise DePassError(f"copy_len must be (low, high) with 1 <= low <= high; got {copy_len}")
    rng = random.Random(seed)

    def fresh(k: int) -> list[int]:
        return [rng.randrange(1, d_vocab) for _ in range(k)]

    rows = []
    for _ in range(n):
        if rng.random() < repeat_fraction:
            block_len = rng.randint(4, (seq_len - 1) // 2)
            block = fresh(block_len)
            row = [0] + fresh(rng.randint(0, seq_len - 1 - 2 * block_len)) + block + block
        else:
            row = [0]
            while len(row) < seq_len:
                if len(row) > 4 and rng.random() < 0.5:
                    start = rng.randint(1, len(row) - 2)
                    row += row[start : start + rng.randint(*copy_len)]
                else:
                    row += fresh(rng.randint(2, 10))
        row = row[:seq_len]
        rows.append(row + fresh(seq_len - len(row)))
    return torch.tensor(rows, dtype=torch.long)


# ------------------------------------------------------------------------------------- facts
FACT_FIRST_NAMES: list[str] = "Anna Boris Carla Dmitri Elena Felix Greta Hugo Irena Jonas Katya Lev".split()
FACT_SURNAMES: list[str] = "Kowal Novak Petrov Sorel Varga Lindqvist Moreau Okafor Tanaka Brandt Rossi Keller".split()
# relation name -> (prompt after the subject, possible attributes)
FACT_RELATIONS: dict[str, tuple[str, list[str]]] = {
    "city": (
        " lives in the city of",
        " Paris London Tokyo Cairo Lima Oslo Delhi Rome".split(" ")[1:],
    ),
    "job": (
        " works as a",
        " doctor teacher farmer pilot baker lawyer painter chef".split(" ")[1:],
    ),
    "sport": (
        " likes to play",
        " tennis chess football golf hockey cricket rugby polo".split(" ")[1:],
    ),
}


@dataclass(frozen=True)
class Fact:
    """One synthetic fact: ``prompt`` (BOS not included) is completed by the token ``attribute``."""

    subject: str
    relation: str
    attribute: str
    prompt: str


def _make_facts() -> list[Fact]:
    facts = []
    for first, last in itertools.product(FACT_FIRST_NAMES, FACT_SURNAMES):
        subject = f" {first} {last}"
        for relation, (suffix, attributes) in FACT_RELATIONS.items():
            k = _stable_hash(f"{subject}|{relation}") % len(attributes)
            facts.append(Fact(subject, relation, " " + attributes[k], subject + suffix))
    return facts


FACTS: list[Fact] = _make_facts()
"""All 432 facts (144 two-token subjects × 3 relations) the ``facts`` model was trained to recall."""


def facts_vocab() -> list[str]:
    """The facts model's vocabulary: BOS, names, relation words and attributes."""
    extra = [" " + w for w in FACT_FIRST_NAMES + FACT_SURNAMES]
    for _, attributes in FACT_RELATIONS.values():
        extra += [" " + a for a in attributes]
    return _vocab_from([suffix for suffix, _ in FACT_RELATIONS.values()], extra)
