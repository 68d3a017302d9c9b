"""Indirect-object identification (IOI) data for the ``ioi`` toy model.

Sentences in the style of Wang et al. (2022), ``"When Mary and John went to the store, John gave a
drink to"`` → ``" Mary"``: two people are introduced, one of them (the subject, S) is mentioned again
and gives something, and the answer is the other one, the indirect object (IO). Three kinds of
prompt are generated (:data:`IOI_KINDS`):

* ``"ioi"``: the classic form. ``A and B ...`` (or ``A met B ...``) then ``S gives ... to``, with
  S = A or B, so both orders IO-S-S ("ABBA") and S-IO-S ("BABA") occur. The repeated name S2 is the
  last name before the end.
* ``"io_last"``: the subject is named twice *before* the IO, which comes last:
  ``"When John was at the store, John met Mary and gave a drink to"`` → ``" Mary"``. Here the last
  name is the answer, so "suppress the most recent name" no longer works, and no single position
  before the end holds the answer's identity except the IO itself.
* ``"one_name"``: one person and a nameless giver, ``"When Mary went to the store, a friend gave a
  drink to"`` → ``" Mary"``: plain copying of a name from context.

The ``ioi`` toy is trained on the mixture :data:`IOI_TRAINING_MIX`. Why the mixture: trained on
classic prompts alone, a small model finds a shortcut in which the final S position first gathers
"the other name" and a last-layer head then copies it from S2 to the end (no head attends to the IO).
The ``io_last`` prompts defeat that shortcut, and the ``one_name`` prompts make copying a name from
the context a skill of its own, so the circuit students look for (heads that find the IO from the
end position and copy it, steered by heads that read S2) is the one that solves all three.

Sentence frames are built from parts (openers, predicates, the giving phrase), so no word reliably
follows or precedes a name. One frame in six (chosen by a stable hash) is held out: the held-out
frames are word sequences never seen in training, made of words that are. Name pairs are split
the same way (:func:`ioi_name_pair_split`): every name is trained, in other pairs, so its embedding
is learned; what is held out is the combination and the frame.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Literal

from depass_tl.errors import DePassError
from depass_tl.toy._words import stable_hash, vocab_from
from depass_tl.toy.encoder import split_words

__all__ = [
    "IOI_HELDOUT_TEMPLATES",
    "IOI_KINDS",
    "IOI_NAMES",
    "IOI_OBJECTS",
    "IOI_PLACES",
    "IOI_TEMPLATES",
    "IOI_TRAINING_MIX",
    "IOI_TRAIN_TEMPLATES",
    "IOIPrompt",
    "ioi_name_pair_split",
    "ioi_prompts",
    "ioi_vocab",
]

IOI_NAMES: list[str] = (
    "Mary John Tom James Dan Sid Martin Amy Kate Anna Lisa Paul Mark Sarah Emma Jack Rose Alex "
    "Ben Claire David Eric Grace Henry Ivy Laura Mike Nina Oscar Peter Ruth Sam"
).split()
IOI_PLACES: list[str] = (
    "store garden restaurant school hospital office house station park beach library market"
).split()
IOI_OBJECTS: list[str] = "drink ring bone basketball computer necklace snack book letter flower key".split()

#: The kinds of prompt (see the module docstring).
IOI_KINDS: tuple[str, ...] = ("ioi", "io_last", "one_name")
#: Sampling weights of the kinds in the ``ioi`` toy's training data.
IOI_TRAINING_MIX: dict[str, float] = {"ioi": 1.0, "io_last": 1.0, "one_name": 0.3}

# Parts of the sentence frames. {A}, {B}: the two names in order; {S}: the subject; {IO}: the
# indirect object; {PLACE}, {OBJECT}: fillers. A frame opens with a subordinate clause ("When ...,")
# or a main clause ("Then, ... . Then ...").
_SUBORDINATE = ("When", "After", "While")
_MAIN = ("Then,", "Later")
_MAIN_JOINS = (". Then", ". Afterwards", ", and then")
_PAIR_PREDICATES = (  # after "{A} and {B}"
    "went to the {PLACE}", "were at the {PLACE}", "had a lot of fun at the {PLACE}", "got a {OBJECT} at the {PLACE}",
    "were working at the {PLACE}", "had a long argument", "were thinking about going to the {PLACE}",
    "found a {OBJECT} at the {PLACE}", "arrived at the {PLACE}", "stopped at the {PLACE}",
)
_MEET_VERBS = ("met", "saw", "found")
_AFTER_IO = (" and",)  # between the IO and the giving phrase
_ONE_PREDICATES = (  # after one name
    "went to the {PLACE}", "was at the {PLACE}", "had a lot of fun at the {PLACE}", "was working at the {PLACE}",
    "arrived at the {PLACE}", "was busy at the {PLACE}", "came to the {PLACE}",
)
_GIVES = (  # between the giver and the final " to"
    "gave a {OBJECT}", "gave it", "handed a {OBJECT}", "handed it", "decided to give a {OBJECT}",
    "decided to give it", "wanted to give a {OBJECT}", "said", "threw a {OBJECT}", "passed a {OBJECT}",
)


def _openings(first_clause: str) -> list[str]:
    """``first_clause`` behind each opener, with the join that leads to the final clause."""
    out = [f"{opener} {first_clause}," for opener in _SUBORDINATE]
    out += [f"{opener} {first_clause}{join}" for opener, join in itertools.product(_MAIN, _MAIN_JOINS)]
    return out


def _frames(kind: str) -> list[str]:
    if kind == "ioi":
        clauses = [f"{{A}} and {{B}} {p}" for p in _PAIR_PREDICATES]
        clauses += [f"{{A}} {v} {{B}} at the {{PLACE}}" for v in _MEET_VERBS]
        ends = [f" {{S}} {g} to" for g in _GIVES]
    elif kind == "io_last":
        clauses = [f"{{S}} {p}" for p in _ONE_PREDICATES]
        ends = [f" {{S}} {v} {{IO}}{after} {g} to"
                for v, after, g in itertools.product(_MEET_VERBS, _AFTER_IO, _GIVES)]
    else:  # one_name
        clauses = [f"{{IO}} {p}" for p in _ONE_PREDICATES]
        ends = [f" a friend {g} to" for g in _GIVES]
    return [opening + end for clause in clauses for opening in _openings(clause) for end in ends]


def _split_frames(kind: str) -> tuple[list[str], list[str]]:
    train, heldout = [], []
    for frame in _frames(kind):
        (heldout if stable_hash(frame) % 6 == 0 else train).append(frame)
    return train, heldout


#: ``kind -> (training frames, held-out frames)``.
IOI_TEMPLATES: dict[str, tuple[list[str], list[str]]] = {kind: _split_frames(kind) for kind in IOI_KINDS}
#: The classic (``"ioi"``) frames used in training; ``"When {A} and {B} went to the {PLACE}, {S} gave a
#: {OBJECT} to"`` is one of them.
IOI_TRAIN_TEMPLATES: list[str] = IOI_TEMPLATES["ioi"][0]
#: The classic frames held out of training.
IOI_HELDOUT_TEMPLATES: list[str] = IOI_TEMPLATES["ioi"][1]


@dataclass(frozen=True)
class IOIPrompt:
    """One prompt: ``text`` (no answer), the indirect object ``io``, the subject ``s``, its frame and kind.

    ``io`` and ``s`` are token strings with their leading space (``" Mary"``), so
    ``encoder.token_id(prompt.io)`` is the answer token. ``s`` is ``None`` for ``"one_name"`` prompts.
    """

    text: str
    io: str
    s: str | None
    template: str
    kind: str = "ioi"

    def positions(self) -> dict[str, int]:
        """Token positions, counting BOS as position 0: ``io``, ``s1``, ``s2`` (first and second S) and ``end``.

        Examples:
            >>> IOIPrompt("When Mary and John went to the store, John gave a drink to", " Mary", " John",
            ...           "").positions()
            {'io': 2, 's1': 4, 's2': 10, 'end': 14}
        """
        words = split_words(self.text)
        out = {"io": 1 + words.index(self.io)}
        if self.s is not None:
            s1 = words.index(self.s)
            out |= {"s1": 1 + s1, "s2": 1 + words.index(self.s, s1 + 1)}
        return out | {"end": len(words)}


def ioi_vocab() -> list[str]:
    """The IOI model's vocabulary: BOS, the words of every frame, then names, places and objects."""
    fill = {"A": IOI_NAMES[0], "B": IOI_NAMES[1], "S": IOI_NAMES[0], "IO": IOI_NAMES[1]}
    fill |= {"PLACE": IOI_PLACES[0], "OBJECT": IOI_OBJECTS[0]}
    texts = [frame.format(**fill) for kind in IOI_KINDS for frame in _frames(kind)]
    return vocab_from(texts, [" " + w for w in IOI_NAMES + IOI_PLACES + IOI_OBJECTS])


def ioi_name_pair_split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split the unordered name pairs into (train, held-out); about 1 in 5 pairs is held out.

    Every name occurs in many training pairs.
    """
    train, heldout = [], []
    for pair in itertools.combinations(IOI_NAMES, 2):
        (heldout if stable_hash("|".join(pair)) % 5 == 0 else train).append(pair)
    return train, heldout


def ioi_prompts(
    n: int, *, split: Literal["train", "heldout"], seed: int, kind: str = "ioi"
) -> list[IOIPrompt]:
    """Sample ``n`` prompts of one kind (or the training mixture) from the training or held-out frames and pairs.

    ``split="heldout"`` uses held-out frames *and* held-out name pairs (both unseen in training).
    In ``"ioi"`` prompts, half have the order IO-then-S in the first clause, half S-then-IO.

    Args:
        n: Number of prompts.
        split: ``"train"`` or ``"heldout"``.
        seed: Seed of the Python :class:`random.Random` used.
        kind: One of :data:`IOI_KINDS`, or ``"mix"``: each prompt's kind drawn with the weights of
            :data:`IOI_TRAINING_MIX` (the ``ioi`` toy's training data).

    Examples:
        >>> p = ioi_prompts(1, split="train", seed=0)[0]
        >>> p.io != p.s and p.io in p.text and p.s in p.text
        True
        >>> ioi_prompts(1, split="heldout", seed=0, kind="io_last")[0].text.endswith(" to")
        True
    """
    if split not in ("train", "heldout"):
        raise DePassError(f"split must be 'train' or 'heldout'; got {split!r}")
    if kind not in (*IOI_KINDS, "mix"):
        raise DePassError(f"kind must be one of {[*IOI_KINDS, 'mix']}; got {kind!r}")
    train_pairs, heldout_pairs = ioi_name_pair_split()
    pairs = train_pairs if split == "train" else heldout_pairs
    kinds, weights = list(IOI_TRAINING_MIX), list(IOI_TRAINING_MIX.values())
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        this = rng.choices(kinds, weights)[0] if kind == "mix" else kind
        io, s = rng.choice(pairs)
        if rng.random() < 0.5:
            io, s = s, io
        a, b = (io, s) if rng.random() < 0.5 else (s, io)
        template = rng.choice(IOI_TEMPLATES[this][0 if split == "train" else 1])
        text = template.format(
            A=a, B=b, S=s, IO=io, PLACE=rng.choice(IOI_PLACES), OBJECT=rng.choice(IOI_OBJECTS)
        )
        out.append(IOIPrompt(text=text, io=" " + io, s=None if this == "one_name" else " " + s,
                             template=template, kind=this))
    return out
