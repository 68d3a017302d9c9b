"""The faithfulness tasks of the shipped toy models: prompts, targets, contrasts and corruptions.

Every task gives each prompt a target (the answer at the last position), an incorrect token (the
answer it must beat: the component protocol's logit difference) and a corrupted prompt of the same
length whose answer is that incorrect token (the baseline of resample ablation, attribution
patching, activation patching and layer integrated gradients). Token-level masking is per task.

* ``ioi``: held-out IOI prompts (held-out templates and name pairs); target = IO, incorrect = S;
  corrupted = the same sentence with IO and S swapped, so its answer is S. Masking deletes tokens
  (the DePass paper's protocol).
* ``induction``: BOS + 24 random tokens + the same 24 again, without the last one; target = the
  token that followed the last token's first occurrence; incorrect = a token absent from the
  sequence, written there in the corrupted prompt (so the corrupted run copies it). Masking
  replaces tokens by BOS (deleting shifts the positions the previous-token head reads).
* ``facts``: fact-recall prompts (BOS + two-token subject + relation); target = the attribute;
  corrupted = another subject with a different attribute for the same relation (its answer is the
  incorrect token). Masking deletes tokens.

Prompts are drawn with a seeded generator, so a task is the same on every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depass_tl.errors import DePassError

__all__ = ["TaskPrompt", "ToyTask", "load_task", "task_names"]

INDUCTION_HALF = 24


@dataclass(frozen=True)
class TaskPrompt:
    """One prompt: ``tokens`` and ``corrupt`` are ``[pos]`` id tensors of the same length."""

    tokens: Tensor
    target: int
    incorrect: int
    corrupt: Tensor


@dataclass(frozen=True)
class ToyTask:
    """A toy model and its prompts, with the masking its token-level protocol uses.

    Attributes:
        name: the toy's name (``depass_tl.toy.available()``).
        model: the loaded toy model.
        prompts: the task's prompts.
        description: one sentence for the tables.
        masking / replace_with: token masking (``"delete"``, or ``"replace"`` by ``replace_with``).
        occlude_with: the token occlusion writes.
    """

    name: str
    model: Any
    prompts: tuple[TaskPrompt, ...]
    description: str
    masking: str
    replace_with: int | None
    occlude_with: int


def task_names() -> list[str]:
    """The shipped toys that have a task here, in table order."""
    from depass_tl import toy

    return [n for n in ("ioi", "induction", "facts") if n in toy.available()]


def _ioi(model: Any, enc: Any, n: int, seed: int) -> list[TaskPrompt]:
    from depass_tl.toy.data import ioi_prompts

    out = []
    for p in ioi_prompts(n, split="heldout", seed=seed):
        toks = enc.encode(p.text)[0]
        io, s = enc.token_id(p.io), enc.token_id(p.s)
        corrupt = toks.clone()
        corrupt[toks == io], corrupt[toks == s] = s, io
        out.append(TaskPrompt(toks, io, s, corrupt))
    return out


def _induction(model: Any, n: int, seed: int) -> list[TaskPrompt]:
    from depass_tl.toy.data import repeated_sequences

    seqs = repeated_sequences(n, half_len=INDUCTION_HALF, d_vocab=model.cfg.d_vocab, seed=seed)
    rng = random.Random(seed)
    out = []
    for row in seqs:
        toks, target = row[:-1].clone(), int(row[-1])
        absent = [t for t in range(1, model.cfg.d_vocab) if t not in set(row.tolist())]
        other = rng.choice(absent)
        corrupt = toks.clone()
        corrupt[INDUCTION_HALF] = other  # the first occurrence of the target
        out.append(TaskPrompt(toks, target, other, corrupt))
    return out


def _facts(model: Any, enc: Any, n: int, seed: int) -> list[TaskPrompt]:
    from depass_tl.toy.data import FACTS

    rng = random.Random(seed)
    out = []
    for fact in rng.sample(FACTS, n):
        others = [f for f in FACTS if f.relation == fact.relation and f.attribute != fact.attribute]
        other = rng.choice(others)
        toks, corrupt = enc.encode(fact.prompt)[0], enc.encode(other.prompt)[0]
        if toks.shape != corrupt.shape:
            raise DePassError(f"facts prompts of one relation must have one length; {fact.prompt!r} vs {other.prompt!r}")
        out.append(TaskPrompt(toks, enc.token_id(fact.attribute), enc.token_id(other.attribute), corrupt))
    return out


def load_task(name: str, *, n: int, seed: int = 0) -> ToyTask:
    """Load toy ``name`` and build its task with ``n`` prompts (seeded).

    Raises:
        DePassError: no task for ``name``, or ``n`` is not a positive integer.
    """
    from depass_tl import toy

    if name not in ("ioi", "induction", "facts"):
        raise DePassError(f"no faithfulness task for toy {name!r}; tasks: ioi, induction, facts.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DePassError(f"n must be a positive integer; got {n!r}.")
    if name == "facts":
        from depass_tl.toy.data import FACTS

        if n > len(FACTS):
            raise DePassError(f"the facts task has {len(FACTS)} distinct facts; got n={n}. Ask for at most that many.")
    model, enc = toy.load(name)
    bos = int(enc.bos_token_id)
    if name == "ioi":
        return ToyTask(name, model, tuple(_ioi(model, enc, n, seed)),
                       "held-out IOI prompts; target IO, contrast S; corrupted = IO and S swapped",
                       "delete", None, bos)
    if name == "induction":
        return ToyTask(name, model, tuple(_induction(model, n, seed)),
                       f"BOS + {INDUCTION_HALF} random tokens repeated; target = the next repeated token, "
                       "contrast = a token written at its first occurrence in the corrupted prompt",
                       "replace", bos, bos)
    return ToyTask(name, model, tuple(_facts(model, enc, n, seed)),
                   "fact recall (two-token subject + relation); target = the attribute, contrast = "
                   "another subject's attribute, corrupted = that subject",
                   "delete", None, bos)
