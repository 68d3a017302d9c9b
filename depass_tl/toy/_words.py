"""Two helpers shared by the toy task modules: a stable hash and a vocabulary builder."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from depass_tl.toy.encoder import BOS_TOKEN, split_words

__all__ = ["stable_hash", "vocab_from"]


def stable_hash(text: str) -> int:
    """A hash that is the same on every machine and Python version (unlike ``hash``).

    Examples:
        >>> stable_hash("Mary|John") == stable_hash("Mary|John")
        True
    """
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def vocab_from(texts: Iterable[str], extra: Iterable[str]) -> list[str]:
    """BOS, then every word of ``texts`` and then ``extra``, each once, in order of first appearance.

    Examples:
        >>> vocab_from(["When Mary"], [" John"])
        ['<|BOS|>', 'When', ' Mary', ' John']
    """
    words: dict[str, None] = {BOS_TOKEN: None}
    for text in texts:
        words.update(dict.fromkeys(split_words(text)))
    words.update(dict.fromkeys(extra))
    return list(words)
