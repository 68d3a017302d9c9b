"""A small word-level, tokenizer-like encoder for the toy models.

Text is split the way GPT-2's tokenizer splits ordinary English: a word or a punctuation mark,
with the single space in front of it kept as part of the token. So ``"When Mary and John"`` becomes
``["When", " Mary", " and", " John"]``, and every name in the toy vocabularies is one token. The
vocabulary is a fixed list of strings (stored in each model's JSON config); token ``0`` is the BOS
token ``"<|BOS|>"``, which :meth:`ToyEncoder.encode` prepends by default, as TransformerLens does.

Examples:
    >>> enc = ToyEncoder(["<|BOS|>", "When", " Mary", " and", " John"])
    >>> enc.encode("When Mary and John").tolist()
    [[0, 1, 2, 3, 4]]
    >>> enc.to_str_tokens("When Mary and John", prepend_bos=False)
    ['When', ' Mary', ' and', ' John']
    >>> enc.decode(enc.encode("When John")[0])
    '<|BOS|>When John'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from depass_tl.errors import DePassError

__all__ = ["BOS_TOKEN", "TOKEN_PATTERN", "ToyEncoder", "split_words"]

BOS_TOKEN = "<|BOS|>"

#: A word (letters/digits/apostrophes) or one punctuation mark, with an optional leading space (the
#: toy tokenizer files, :mod:`depass_tl.toy.tokenizer`, split with the same pattern).
TOKEN_PATTERN = r" ?[A-Za-z0-9']+| ?[^\sA-Za-z0-9']"
_TOKEN_RE = re.compile(TOKEN_PATTERN)


def split_words(text: str) -> list[str]:
    """Split ``text`` into GPT-2-style word tokens (leading space kept on each word).

    Args:
        text: Plain text. Words are separated by single spaces; punctuation may follow a word
            directly.

    Returns:
        The token strings, which concatenate back to ``text``.

    Raises:
        DePassError: If ``text`` has characters the toy tokenizer cannot split (tabs, newlines,
            double spaces, a trailing space).

    Examples:
        >>> split_words("Then, Mary and John went to the store.")
        ['Then', ',', ' Mary', ' and', ' John', ' went', ' to', ' the', ' store', '.']
    """
    pieces = _TOKEN_RE.findall(text)
    if "".join(pieces) != text:
        raise DePassError(
            f"the toy encoder cannot split {text!r}: only words and punctuation separated by single "
            "spaces are supported (no tabs, newlines, double or trailing spaces)"
        )
    return pieces


class ToyEncoder:
    """Word-level encoder with a fixed vocabulary, used like a tokenizer for the toy models.

    Args:
        vocab: The token strings; the position in the list is the token id. Must be unique and
            start with :data:`BOS_TOKEN`.

    Raises:
        DePassError: If the vocabulary is empty, has duplicates, or does not start with the BOS
            token.
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        vocab = list(vocab)
        if not vocab or vocab[0] != BOS_TOKEN:
            raise DePassError(
                f"a toy vocabulary must start with {BOS_TOKEN!r}; got first entry "
                f"{vocab[0] if vocab else None!r}"
            )
        index = {tok: i for i, tok in enumerate(vocab)}
        if len(index) != len(vocab):
            dups = sorted({t for t in vocab if vocab.count(t) > 1})
            raise DePassError(f"the toy vocabulary has duplicate tokens {dups}; make them unique")
        self._vocab = vocab
        self._index = index

    @property
    def vocab(self) -> list[str]:
        """The token strings, indexed by token id (a copy)."""
        return list(self._vocab)

    @property
    def bos_token_id(self) -> int:
        """The id of :data:`BOS_TOKEN` (always 0)."""
        return 0

    def __len__(self) -> int:
        return len(self._vocab)

    def __repr__(self) -> str:
        return f"ToyEncoder(d_vocab={len(self._vocab)})"

    def token_id(self, token: str) -> int:
        """Return the id of one token string such as ``" Mary"``.

        Raises:
            DePassError: If the token is not in the vocabulary.
        """
        if token not in self._index:
            raise DePassError(
                f"token {token!r} is not in the toy vocabulary ({len(self._vocab)} tokens); "
                "see `encoder.vocab` for the words this model knows (note the leading space, "
                "e.g. ' Mary')"
            )
        return self._index[token]

    def _ids(self, text: str, *, prepend_bos: bool) -> list[int]:
        ids = [self.bos_token_id] if prepend_bos else []
        for piece in split_words(text):
            if piece not in self._index:
                raise DePassError(
                    f"word {piece!r} in {text!r} is not in the toy vocabulary; see `encoder.vocab` "
                    "for the words this model knows"
                )
            ids.append(self._index[piece])
        return ids

    def encode(
        self, text: str | Sequence[str], *, prepend_bos: bool = True
    ) -> Int[Tensor, "batch pos"]:
        """Encode one text or a batch of texts of the same token length.

        Args:
            text: A string, or a list of strings that all split into the same number of tokens.
            prepend_bos: Put the BOS token first (as TransformerLens does by default).

        Returns:
            Token ids, shape ``[batch, pos]`` (``batch`` is 1 for a single string).

        Raises:
            DePassError: On an unknown word, or texts of different token lengths.

        Examples:
            >>> enc = ToyEncoder(["<|BOS|>", " a", " b"])
            >>> enc.encode([" a b", " b a"], prepend_bos=False).tolist()
            [[1, 2], [2, 1]]
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise DePassError("encode() got an empty list of texts; pass at least one string")
        rows = [self._ids(t, prepend_bos=prepend_bos) for t in texts]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            raise DePassError(
                f"encode() got texts of different token lengths {lengths}; the toy encoder does not "
                "pad, so encode them separately or make them the same length"
            )
        return torch.tensor(rows, dtype=torch.long)

    def _check_ids(self, ids: list[int]) -> None:
        bad = [i for i in ids if not 0 <= i < len(self._vocab)]
        if bad:
            raise DePassError(
                f"token ids {bad[:5]} are outside the toy vocabulary [0, {len(self._vocab)})"
            )

    def to_str_tokens(
        self, tokens: str | Int[Tensor, "... pos"], *, prepend_bos: bool = True
    ) -> list[str]:
        """The token strings of a text or of a 1-D (or ``[1, pos]``) tensor of ids.

        Args:
            tokens: A string (encoded first, with ``prepend_bos``) or token ids.
            prepend_bos: Used only when ``tokens`` is a string.

        Raises:
            DePassError: On unknown words or ids, or a tensor holding more than one sequence.
        """
        if isinstance(tokens, str):
            ids = self._ids(tokens, prepend_bos=prepend_bos)
        else:
            if tokens.dim() == 2 and tokens.shape[0] == 1:
                tokens = tokens[0]
            if tokens.dim() != 1:
                raise DePassError(
                    f"to_str_tokens() takes one sequence; got a tensor of shape "
                    f"{tuple(tokens.shape)}: index the batch first"
                )
            ids = [int(i) for i in tokens.tolist()]
        self._check_ids(ids)
        return [self._vocab[i] for i in ids]

    def decode(self, tokens: Int[Tensor, "... pos"] | Sequence[int]) -> str | list[str]:
        """Turn token ids back into text.

        Args:
            tokens: 1-D ids (returns one string), or ``[batch, pos]`` (returns a list of strings).

        Raises:
            DePassError: On ids outside the vocabulary or a tensor with more than 2 dimensions.
        """
        t = torch.as_tensor(tokens)
        if t.dim() == 1:
            ids = [int(i) for i in t.tolist()]
            self._check_ids(ids)
            return "".join(self._vocab[i] for i in ids)
        if t.dim() == 2:
            return [str(self.decode(row)) for row in t]
        raise DePassError(f"decode() takes [pos] or [batch, pos] ids; got shape {tuple(t.shape)}")
