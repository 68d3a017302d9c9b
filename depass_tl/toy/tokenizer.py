"""A real Hugging Face tokenizer for each toy model, saved next to its weights.

The tokenizer splits text exactly as :func:`depass_tl.toy.encoder.split_words` does (a word or one
punctuation mark, with its leading space) and maps each piece to the toy vocabulary with a
``tokenizers`` word-level model, wrapped as a ``PreTrainedTokenizerFast``. TransformerLens attaches
it as ``model.tokenizer``, so ``model.to_tokens("When Mary ...")``, string inputs to
``run_with_depass``, ``dcache.logit_attrs(" Mary")`` and every plot label work with token strings.

Two conventions make it a drop-in tokenizer on every TransformerLens version:

* ``<|BOS|>`` (id 0) is the BOS, EOS and padding token, as ``<|endoftext|>`` is for GPT-2; TL
  prepends it (``prepend_bos``) whether or not the installed ``transformers`` adds it itself.
* A word outside the vocabulary becomes ``<|UNK|>``, whose id is ``d_vocab``: one past the model's
  vocabulary, so the model has no embedding for it. Running the model on it fails instead of quietly
  using a made-up embedding (TransformerLens probes every tokenizer with ``encode("a")``, so a
  tokenizer that raises on unknown words cannot be attached). :class:`~depass_tl.toy.ToyEncoder`
  still names the unknown word in its error.

The files are written from the vocabulary (:func:`write_tokenizer`) by :func:`depass_tl.toy.save`,
and read with ``AutoTokenizer.from_pretrained(folder)``: TL reloads a tokenizer from its
``name_or_path`` to set its BOS behaviour, so it has to live in a folder on disk.

Examples:
    >>> tok = build_tokenizer(["<|BOS|>", "When", " Mary", " and", " John", ","])
    >>> tok.encode("When Mary and John,").ids
    [1, 2, 3, 4, 5]
    >>> tok.encode("When Mary met John").tokens
    ['When', ' Mary', '<|UNK|>', ' John']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depass_tl.errors import DePassError
from depass_tl.toy.encoder import BOS_TOKEN, TOKEN_PATTERN

__all__ = ["TOKENIZER_FILES", "UNK_TOKEN", "build_tokenizer", "load_tokenizer", "write_tokenizer"]

UNK_TOKEN = "<|UNK|>"
#: The files :func:`write_tokenizer` writes (all a ``transformers`` 4.x or 5.x tokenizer needs).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def build_tokenizer(vocab: Sequence[str]) -> Any:
    """The ``tokenizers.Tokenizer`` of a toy vocabulary (BOS first; ``<|UNK|>`` is appended as id ``len(vocab)``).

    Raises:
        DePassError: If the vocabulary does not start with ``<|BOS|>``, repeats a token, or already
            holds ``<|UNK|>``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = list(vocab)
    if not vocab or vocab[0] != BOS_TOKEN:
        raise DePassError(f"a toy vocabulary must start with {BOS_TOKEN!r}; got {vocab[:1]}")
    if len(set(vocab)) != len(vocab) or UNK_TOKEN in vocab:
        raise DePassError(f"a toy vocabulary must hold unique tokens and no {UNK_TOKEN!r}")
    ids = {token: i for i, token in enumerate([*vocab, UNK_TOKEN])}
    tok = Tokenizer(models.WordLevel(ids, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()  # the pieces carry their spaces: decoding concatenates them
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (BOS_TOKEN, UNK_TOKEN)])
    return tok


def write_tokenizer(vocab: Sequence[str], folder: str | Path, *, n_ctx: int) -> list[Path]:
    """Write the tokenizer files of ``vocab`` into ``folder``; returns their paths.

    ``tokenizer_config.json`` is written by hand (not by ``save_pretrained``) so that the same
    files load with ``transformers`` 4.x (TL 2.x) and 5.x (TL 3.x / 4.x).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in TOKENIZER_FILES]
    build_tokenizer(vocab).save(str(paths[0]), pretty=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": BOS_TOKEN,
        "pad_token": BOS_TOKEN,
        "unk_token": UNK_TOKEN,
        "clean_up_tokenization_spaces": False,  # keep " Mary" as " Mary" when decoding
        "model_max_length": n_ctx,
    }
    paths[1].write_text(json.dumps(config, indent=1) + "\n")
    return paths


def load_tokenizer(folder: str | Path) -> Any:
    """``AutoTokenizer.from_pretrained(folder)``, offline (the folder must hold :data:`TOKENIZER_FILES`).

    Raises:
        DePassError: If a tokenizer file is missing.
    """
    folder = Path(folder)
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise DePassError(
            f"{folder} has no {', '.join(missing)}; write the tokenizer with depass_tl.toy.save (or "
            "depass_tl.toy.tokenizer.write_tokenizer)"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
