"""Small random models of the installed TransformerLens for tests (no downloads).

``make_model`` builds a ``HookedTransformer`` on TL 2.x / 3.x and a TL-native ``TransformerBridge``
(``TransformerBridge.boot_native``) on TL 4.x from the same ``HookedTransformerConfig`` fields, through
:func:`depass_tl.toy.random_model`. A config the native Bridge cannot build skips the test with the
field named (tests/tl_cases.py, which also holds the per-TL cases, refusals and tolerances).

TL initialises norm weights to 1 and every bias to 0, which would hide bias and norm bugs; ``randomise``
gives them random values (in place, on a model the test owns), on either model class.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from depass_tl.backends.bridge import is_bridge
from depass_tl.toy.random_model import random_model
from tests._tl_version import TL_VERSION
from tests.tl_cases import skip_unless_buildable

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
) -> Any:
    """A seeded random model of the given architecture family, with random biases and LN weights."""
    kwargs: dict[str, Any] = dict(ARCHS[arch])
    kwargs.update(overrides)
    if kwargs.get("act_fn") is None:
        kwargs.pop("act_fn", None)
    if kwargs.get("n_key_value_heads") and n_heads % kwargs["n_key_value_heads"]:
        kwargs["n_key_value_heads"] = 1
    if "rotary_dim" in kwargs:
        kwargs["rotary_dim"] = min(kwargs["rotary_dim"], d_model // n_heads)
    model = config_model(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=d_mlp,
        d_vocab=d_vocab, n_ctx=n_ctx, dtype=dtype, seed=seed, **kwargs,
    )
    randomise(model, seed=seed)
    return model


def config_model(*, tokenizer: Any = None, default_padding_side: str = "right", **config: Any) -> Any:
    """A model of the installed TL from ``HookedTransformerConfig`` fields (skips if the class cannot build it).

    TL's own initialisation (norm weights 1, biases 0): call :func:`randomise` for random ones.
    """
    skip_unless_buildable(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return random_model(tokenizer=tokenizer, default_padding_side=default_padding_side, **config)


def _is_norm_weight(model: Any, name: str, param: torch.Tensor) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if is_bridge(model):  # native modules: blocks.0.ln1.weight, ln_final.weight, blocks.0.mlp.ln.weight
        return leaf == "weight" and param.ndim == 1
    return leaf == "w" and param.ndim == 1


def _is_bias(model: Any, name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if is_bridge(model):
        return leaf == "bias"
    return leaf.startswith("b") or leaf.startswith("_b")


def randomise(model: Any, *, seed: int = 0, scale: float = 0.5) -> None:
    """Give every bias and norm weight a random value (they start at 0/1 in TL)."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * scale
            if _is_norm_weight(model, name, p):
                p.copy_(1 + noise)
            elif _is_bias(model, name):
                p.copy_(noise)


def random_tokens(model: Any, batch: int = 2, pos: int = 6, seed: int = 0) -> torch.Tensor:
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


def processed(model: Any, *, fold_ln: bool = True) -> Any:
    """A copy with from_pretrained's weight processing (center_unembed off under a logit soft cap).

    HookedTransformer: ``load_and_process_state_dict`` with fold_ln, center_writing_weights, center_unembed
    and fold_value_biases. TransformerBridge: ``enable_compatibility_mode()``, which applies the same
    processing all together (``fold_ln=False`` has no Bridge equivalent: the test is skipped).
    """
    import copy

    out = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if is_bridge(model):
            if not fold_ln:
                pytest.skip(f"impossible on TransformerLens {TL_VERSION}: a TransformerBridge's weight processing "
                            "(enable_compatibility_mode) always folds the norms; fold_ln=False does not exist there")
            try:
                out.enable_compatibility_mode(disable_warnings=True)
            except AssertionError as err:  # TL 4.3 asserts when a weight it folds into is absent from the model
                if "not found at key" not in str(err):
                    raise
                pytest.skip(f"impossible on TransformerLens {TL_VERSION}: enable_compatibility_mode() fails on this "
                            f"TL-native model ({err}: the weight it would fold into does not exist, e.g. the gated "
                            "MLP's bias or a SoLU MLP's inner LayerNorm)")
        else:
            out.load_and_process_state_dict(
                copy.deepcopy(model.state_dict()), fold_ln=fold_ln, center_writing_weights=True,
                center_unembed=not model.cfg.output_logits_soft_cap > 0, fold_value_biases=True,
            )
    return out.eval()
