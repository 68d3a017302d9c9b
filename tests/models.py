"""Small random HookedTransformers for tests (no downloads).

TL initialises LN weights to 1 and every bias to 0, which would hide bias and LN bugs; ``randomise``
gives them random values (in place, on a model the test owns).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

ARCHS: dict[str, dict[str, Any]] = {
    "gpt2": dict(normalization_type="LN", act_fn="gelu_new", positional_embedding_type="standard"),
    "llama": dict(
        normalization_type="RMS", act_fn="silu", gated_mlp=True, positional_embedding_type="rotary",
        rotary_dim=4, n_key_value_heads=2, final_rms=True,
    ),
    "attn_only": dict(normalization_type="LN", attn_only=True, act_fn=None),
    "lnpre": dict(normalization_type="LNPre", act_fn="gelu"),
    "rmspre": dict(normalization_type="RMSPre", act_fn="gelu", gated_mlp=True),
    "relu": dict(normalization_type="LN", act_fn="relu"),
    "no_norm": dict(normalization_type=None, act_fn="gelu"),
}


def make_model(
    arch: str = "gpt2",
    *,
    n_layers: int = 2,
    d_model: int = 16,
    n_heads: int = 4,
    d_mlp: int = 32,
    d_vocab: int = 40,
    n_ctx: int = 16,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    **overrides: Any,
) -> HookedTransformer:
    """A seeded random model of the given architecture family, with random biases and LN weights."""
    kwargs: dict[str, Any] = dict(ARCHS[arch])
    kwargs.update(overrides)
    if kwargs.get("act_fn") is None:
        kwargs.pop("act_fn", None)
    if kwargs.get("n_key_value_heads") and n_heads % kwargs["n_key_value_heads"]:
        kwargs["n_key_value_heads"] = 1
    if "rotary_dim" in kwargs:
        kwargs["rotary_dim"] = min(kwargs["rotary_dim"], d_model // n_heads)
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=d_mlp,
        d_vocab=d_vocab, n_ctx=n_ctx, dtype=dtype, seed=seed, device="cpu", **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    randomise(model, seed=seed)
    return model.eval()


def randomise(model: HookedTransformer, *, seed: int = 0, scale: float = 0.5) -> None:
    """Give every bias and norm weight a random value (they start at 0/1 in TL)."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * scale
            if leaf in ("w",) and ("ln" in name):
                p.copy_(1 + noise)
            elif leaf.startswith("b") or leaf.startswith("_b"):
                p.copy_(noise)


def random_tokens(model: HookedTransformer, batch: int = 2, pos: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=gen)


def word_tokenizer(words: list[str]) -> Any:
    """An offline word-level fast tokenizer (``<bos>`` + the given words, each with a leading space)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<pad>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_next")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>", eos_token="<bos>"
    )
    # TL reloads the tokenizer by name to add a BOS token, so it must come from a local folder
    import tempfile

    from transformers import AutoTokenizer

    folder = tempfile.mkdtemp(prefix="depass_tok_")
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
