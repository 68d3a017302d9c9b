"""Offline ``TransformerBridge`` test models (TL 3.x / 4.x): random HF models booted from a local folder.

Nothing here imports ``HookedTransformer`` or ``tests.families`` (both need TL < 4), so the module
works on every TL version that has the Bridge. Each model is a tiny random Hugging Face causal LM of a
real family, re-initialised so nothing is trivial (random biases and norm weights), saved with an
offline word-level tokenizer to a neutral temporary folder, and booted with
``TransformerBridge.boot_transformers(folder)`` (reference/transformerlens.md §3.2).

Builders are cached per argument tuple: never modify a returned model in a test (use
``fresh=True`` for one the test owns).

Example (a code sample, not a doctest: the Bridge only exists on TL >= 3)::

    bridge, hf_model = build_bridge("llama")
    bridge.cfg.n_key_value_heads, type(hf_model).__name__     # (2, 'LlamaForCausalLM')
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import transformers as tr
from torch import nn

__all__ = [
    "BRIDGE_FAMILIES",
    "VOCAB",
    "bridge_tokens",
    "build_bridge",
    "boot_folder",
    "build_sized_bridge",
    "local_folder",
    "save_hf_model",
    "save_tokenizer",
]

SEED = 0
VOCAB = 96
N_CTX = 32
WEIGHT_STD = 0.2
EMBED_STD = 0.5
BIAS_STD = 0.2
NORM_STD = 0.2


def _gpt2(n_layers: int, d_model: int, n_heads: int, d_mlp: int) -> Any:
    return tr.GPT2Config(
        n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_inner=d_mlp, vocab_size=VOCAB, n_positions=N_CTX,
        n_ctx=N_CTX, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


def _llama(n_layers: int, d_model: int, n_heads: int, d_mlp: int) -> Any:
    return tr.LlamaConfig(
        num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2), intermediate_size=d_mlp, vocab_size=VOCAB,
        max_position_embeddings=N_CTX, rms_norm_eps=1e-6, hidden_act="silu",
    )


def _neox(n_layers: int, d_model: int, n_heads: int, d_mlp: int) -> Any:
    return tr.GPTNeoXConfig(
        num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads, intermediate_size=d_mlp,
        vocab_size=VOCAB, max_position_embeddings=N_CTX, hidden_act="gelu", use_parallel_residual=True,
        rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "rope_type": "default"},
    )


def _qwen2(n_layers: int, d_model: int, n_heads: int, d_mlp: int) -> Any:
    return tr.Qwen2Config(
        num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2), intermediate_size=d_mlp, vocab_size=VOCAB,
        max_position_embeddings=N_CTX, rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False,
    )


def _gemma2(n_layers: int, d_model: int, n_heads: int, d_mlp: int) -> Any:
    return tr.Gemma2Config(
        num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2), head_dim=d_model // n_heads, intermediate_size=d_mlp,
        vocab_size=VOCAB, max_position_embeddings=N_CTX, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=d_model // n_heads, sliding_window=4,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
    )


def _mixtral(n_layers: int, d_model: int, n_heads: int, d_mlp: int) -> Any:
    return tr.MixtralConfig(
        num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2), intermediate_size=d_mlp, vocab_size=VOCAB,
        max_position_embeddings=N_CTX, rms_norm_eps=1e-6, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=None,
    )


def _bert(n_layers: int, d_model: int, n_heads: int, d_mlp: int) -> Any:
    return tr.BertConfig(
        num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads, intermediate_size=d_mlp,
        vocab_size=VOCAB, max_position_embeddings=N_CTX, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


#: family -> (HF class name, config builder, what it exercises)
_SPECS: dict[str, tuple[str, Any, str]] = {
    "gpt2": ("GPT2LMHeadModel", _gpt2, "LN, gelu_new, learned positions, biases"),
    "llama": ("LlamaForCausalLM", _llama, "RMS, gated SiLU, rotary, GQA, no biases"),
    "neox": ("GPTNeoXForCausalLM", _neox, "parallel attn/MLP, partial rotary, biases"),
    "qwen2": ("Qwen2ForCausalLM", _qwen2, "Llama + q/k/v biases, GQA"),
    "gemma2": ("Gemma2ForCausalLM", _gemma2, "offset RMS norms, pre+post norms, soft caps, local/global, GQA"),
    "mixtral": ("MixtralForCausalLM", _mixtral, "MoE 4 experts top-2 (refused on the Bridge)"),
    "bert": ("BertForMaskedLM", _bert, "encoder (refused by DePass on the Bridge)"),
}

#: Decoder families ``run_with_depass`` must decompose exactly on the Bridge.
BRIDGE_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "neox", "qwen2", "gemma2")


def _randomise_hf(model: nn.Module, *, seed: int) -> None:
    """Re-initialise every parameter (seeded): biases and norm weights random, gains near 1 (0 for Gemma)."""
    generator = torch.Generator().manual_seed(seed)

    def normal(param: torch.Tensor, std: float, mean: float = 0.0) -> None:
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        param.copy_((mean + std * noise).to(param.dtype))

    with torch.no_grad():
        for module in model.modules():
            is_norm = "norm" in type(module).__name__.lower()
            offset_norm = is_norm and "gemma" in type(module).__name__.lower()
            for name, param in module.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    normal(param, NORM_STD, mean=0.0 if offset_norm else 1.0)
                elif "bias" in name:
                    normal(param, BIAS_STD)
                elif isinstance(module, nn.Embedding):
                    normal(param, EMBED_STD)
                else:
                    normal(param, WEIGHT_STD)


def save_tokenizer(folder: Path, vocab_size: int = VOCAB) -> None:
    """Save an offline word-level tokenizer (``t0 …`` plus ``<bos> <eos> <pad> <unk>``) into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, "<unk>": 3}
    for i in range(vocab_size - len(vocab)):
        vocab[f"t{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        mask_token="<unk>",
    )
    fast.save_pretrained(folder)


def _neutral_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="depass_bridge_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder / "model"


@functools.cache
def local_folder(family: str, n_layers: int = 2, d_model: int = 32, n_heads: int = 4, d_mlp: int = 64,
                 seed: int = SEED) -> Path:
    """Save a tiny random HF model of ``family`` and a tokenizer to a temporary folder (cached)."""
    hf_class, make_config, _ = _SPECS[family]
    config = make_config(n_layers, d_model, n_heads, d_mlp)
    config.architectures = [hf_class]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_model = getattr(tr, hf_class)(config)
    _randomise_hf(hf_model, seed=seed)
    folder = _neutral_dir()
    hf_model.save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def boot_folder(folder: Path, compat: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    """``TransformerBridge.boot_transformers(folder)`` (plus ``enable_compatibility_mode()``), offline."""
    return _boot(folder, compat, dtype)


def save_hf_model(hf_model: nn.Module) -> Path:
    """Save an HF causal LM and a matching tokenizer to a new neutral temporary folder."""
    folder = _neutral_dir()
    hf_model.save_pretrained(folder)
    save_tokenizer(folder, int(hf_model.config.vocab_size))
    return folder


def _boot(folder: Path, compat: bool, dtype: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=dtype)
        if compat:
            bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    bridge.requires_grad_(False)
    return bridge


def build_bridge(family: str, *, compat: bool = False, dtype: torch.dtype = torch.float32,
                 fresh: bool = False) -> tuple[Any, nn.Module]:
    """Boot a ``TransformerBridge`` of a family from its local folder; returns ``(bridge, hf_model)``.

    Args:
        family: a key of ``_SPECS`` (``BRIDGE_FAMILIES`` plus ``mixtral`` and ``bert``).
        compat: call ``enable_compatibility_mode()`` (HookedTransformer-style processed weights).
        dtype: the Bridge's dtype.
        fresh: boot a new (uncached) model the caller may modify.
    """
    if fresh:
        return _build_uncached(family, compat, dtype)
    return _build_cached(family, compat, dtype)


def _build_uncached(family: str, compat: bool, dtype: torch.dtype) -> tuple[Any, nn.Module]:
    folder = local_folder(family)
    hf_class = _SPECS[family][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_model = getattr(tr, hf_class).from_pretrained(str(folder), dtype=dtype).eval()
    return _boot(folder, compat, dtype), hf_model


_build_cached = functools.cache(_build_uncached)


@functools.cache
def build_sized_bridge(family: str, *, n_layers: int, d_model: int, n_heads: int, d_mlp: int, seed: int,
                       compat: bool = False) -> Any:
    """A float32 Bridge of a family with the given sizes (for property tests over configs; cached)."""
    return _boot(local_folder(family, n_layers, d_model, n_heads, d_mlp, seed), compat, torch.float32)


def bridge_tokens(*, batch: int = 2, pos: int = 7, seed: int = 1) -> torch.Tensor:
    """Seeded random token ids ``[batch, pos]`` (no special tokens)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (batch, pos), generator=generator)
