"""Offline test models that mirror real model families, and small configs covering TL features.

Two factories live here, both seeded and hub-free:

* :func:`build_family` builds a tiny random Hugging Face causal LM of a real family (GPT-2, Pythia,
  Llama, ...), re-initialises it so that nothing is trivial (larger weight std, random biases and
  norm weights), and converts it into a ``HookedTransformer`` with TransformerLens's own conversion
  code (``convert_hf_model_config`` + ``get_pretrained_state_dict`` +
  ``load_and_process_state_dict``), the offline recipe of reference/transformerlens.md §3.
  Gemma-2 has no config-driven branch in TL 3.9, so its TL config is built by hand (as TL's own
  ``google/gemma-2-2b`` entry, with small sizes) and converted with ``convert_gemma_weights``.
* :func:`build_ht` builds a random ``HookedTransformer`` from one of the config dicts in
  :data:`HT_CONFIG_FEATURES` (one per TL config feature) and randomises its norm weights and biases.

On TL 4 (no ``HookedTransformer``) the same factories build ``TransformerBridge`` models: a family is
the same random HF model booted with ``TransformerBridge.boot_transformers`` (the from_pretrained
processing flags become ``enable_compatibility_mode()``, which applies all of them together), and a
config feature is a TL-native Bridge (``boot_native``); a feature that class cannot build skips the
test with the field named (tests/models.py).

Both are cached per argument tuple (``functools.cache``), so a pytest session builds each model
once. The returned models are shared between callers: never modify them in a test.

Example:
    >>> model, hf_model = build_family("llama", dtype=torch.float64)
    >>> (model.cfg.n_heads, model.cfg.n_key_value_heads, type(hf_model).__name__)
    (4, 2, 'LlamaForCausalLM')
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers as tr
from torch import nn

from depass_tl.errors import DePassError, UnsupportedModelError
from tests._tl_version import HAS_HOOKED, TL_VERSION
from tests.models import _is_bias, _is_norm_weight, config_model
from tests.tl_cases import BRIDGE_REFUSALS

if HAS_HOOKED:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as tl_loading
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights

__all__ = [
    "BRIDGE_REFUSED_FAMILIES",
    "FAMILIES",
    "FAMILY_SPECS",
    "HT_CONFIG_FEATURES",
    "UNSUPPORTED_FAMILIES",
    "FamilySpec",
    "PROCESSING_FLAGS",
    "build_family",
    "build_ht",
    "family_tokens",
    "from_pretrained_flags",
    "hf_config_folder",
]

SEED = 0
VOCAB = 128
N_CTX = 64
WEIGHT_STD = 0.2
EMBED_STD = 0.5
BIAS_STD = 0.2
NORM_STD = 0.2

#: Weight-processing flags of ``load_and_process_state_dict``, all off by default in this module.
PROCESSING_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")

#: Substrings that make ``convert_hf_model_config`` ignore config.json and branch on the path name.
_NAME_SNIFFED = ("llama", "gemma", "bert", "t5", "hubert", "wav2vec2", "neelnanda", "pythia")


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """A model family: how to build its tiny HF model and what it exercises.

    Attributes:
        name: Short family id used by :func:`build_family` and as the pytest id.
        hf_class: The HF causal-LM class name (``config.architectures[0]``).
        features: What the family exercises, in a few words.
        make_hf_config: Builds the tiny HF config.
        hf_float32_ops: The HF ops that run in float32 even in a float64 model (empty if none), which
            bound how closely a float64 TL model can match its HF reference.
        tl_config: For a family TL 3.9 cannot convert from config.json, builds the TL config dict from
            the HF config by hand; ``None`` when ``convert_hf_model_config`` is used. Only Gemma-2
            uses it, and its weights then go through TL's ``convert_gemma_weights``.
    """

    name: str
    hf_class: str
    features: str
    make_hf_config: Callable[[], Any]
    hf_float32_ops: str = ""
    tl_config: Callable[[Any], dict[str, Any]] | None = None


def _gpt2_config() -> Any:
    return tr.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=N_CTX, n_ctx=N_CTX,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


def _neox_config() -> Any:
    return tr.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=N_CTX, hidden_act="gelu",
        use_parallel_residual=True,
        rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "rope_type": "default"},
    )


def _llama_config() -> Any:
    return tr.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=N_CTX, rms_norm_eps=1e-6,
        hidden_act="silu",
    )


def _mistral_config() -> Any:
    return tr.MistralConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=N_CTX,
        rms_norm_eps=1e-6, hidden_act="silu", sliding_window=4,
    )


def _qwen2_config() -> Any:
    return tr.Qwen2Config(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=N_CTX, rms_norm_eps=1e-6,
        hidden_act="silu", use_sliding_window=False,
    )


def _gemma2_config() -> Any:
    return tr.Gemma2Config(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=N_CTX,
        rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=8,
        sliding_window=4, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
    )


def _gemma2_tl_config(hf_config: Any) -> dict[str, Any]:
    """TL 3.9's ``google/gemma-2-2b`` config entry, with the tiny model's sizes."""
    n_layers = hf_config.num_hidden_layers
    return {
        "d_model": hf_config.hidden_size,
        "d_head": hf_config.head_dim,
        "n_heads": hf_config.num_attention_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": n_layers,
        "n_ctx": hf_config.max_position_embeddings,
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_activation,
        "normalization_type": "RMS",
        "rotary_base": 10000.0,
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "attn_scale": float(hf_config.query_pre_attn_scalar) ** 0.5,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "window_size": hf_config.sliding_window,
        "use_local_attn": True,
        "attn_types": (["local", "global"] * n_layers)[:n_layers],
        "attn_scores_soft_cap": hf_config.attn_logit_softcapping,
        "output_logits_soft_cap": hf_config.final_logit_softcapping,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM",
    }


def _mixtral_config() -> Any:
    return tr.MixtralConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=N_CTX, rms_norm_eps=1e-6,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
    )


def _opt_config() -> Any:
    return tr.OPTConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=64, vocab_size=VOCAB,
        max_position_embeddings=N_CTX, word_embed_proj_dim=32, do_layer_norm_before=True,
        activation_function="relu", dropout=0.0, attention_dropout=0.0,
    )


def _bloom_config() -> Any:
    return tr.BloomConfig(
        n_layer=2, hidden_size=32, n_head=4, vocab_size=VOCAB, hidden_dropout=0.0,
        attention_dropout=0.0,
    )


def _gptj_config() -> Any:
    return tr.GPTJConfig(
        n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_positions=N_CTX, vocab_size=VOCAB,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


def _falcon_config() -> Any:
    return tr.FalconConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=VOCAB,
        max_position_embeddings=N_CTX, new_decoder_architecture=False, parallel_attn=True,
        multi_query=True, bias=False, alibi=False,
    )


_ROPE_SOFTMAX = "rotary angles, attention softmax"
_RMS_ROPE_SOFTMAX = "RMSNorm, rotary angles, attention softmax"

#: Every family we know how to build a tiny HF model of (supported by TL or not).
FAMILY_SPECS: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec("gpt2", "GPT2LMHeadModel", "LN, gelu_new, learned positions, tied embeddings",
                   _gpt2_config),
        FamilySpec("neox", "GPTNeoXForCausalLM", "Pythia: parallel attn/MLP, partial rotary (1/2)",
                   _neox_config, hf_float32_ops=_ROPE_SOFTMAX),
        FamilySpec("llama", "LlamaForCausalLM", "RMS, gated SiLU, rotary, GQA 4/2", _llama_config,
                   hf_float32_ops=_RMS_ROPE_SOFTMAX),
        FamilySpec("mistral", "MistralForCausalLM", "Llama + sliding window 4, GQA 4/2",
                   _mistral_config, hf_float32_ops=_RMS_ROPE_SOFTMAX),
        FamilySpec("qwen2", "Qwen2ForCausalLM", "Llama-like with q/k/v biases, GQA 4/2",
                   _qwen2_config, hf_float32_ops=_RMS_ROPE_SOFTMAX),
        FamilySpec("gemma2", "Gemma2ForCausalLM",
                   "pre+post RMS norms (offset weights), soft caps, local/global, GQA, gelu_tanh",
                   _gemma2_config, hf_float32_ops=_RMS_ROPE_SOFTMAX, tl_config=_gemma2_tl_config),
        FamilySpec("mixtral", "MixtralForCausalLM", "MoE 4 experts top-2, GQA 4/2",
                   _mixtral_config, hf_float32_ops=_RMS_ROPE_SOFTMAX + ", router softmax"),
        FamilySpec("opt", "OPTForCausalLM", "LN, ReLU, learned positions with offset 2",
                   _opt_config, hf_float32_ops="attention softmax"),
        FamilySpec("bloom", "BloomForCausalLM", "post-embedding LN, ALiBi, gelu", _bloom_config,
                   hf_float32_ops="ALiBi slopes, attention softmax"),
        FamilySpec("gptj", "GPTJForCausalLM", "parallel attn/MLP with one LN, rotary (adjacent)",
                   _gptj_config, hf_float32_ops="rotary table, attention scores (q, k cast)"),
        FamilySpec("falcon", "FalconForCausalLM", "multi-query attention, parallel attn/MLP, rotary",
                   _falcon_config),
    )
}

def _qwen3_config() -> Any:
    return tr.Qwen3Config(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=N_CTX, rms_norm_eps=1e-6,
        hidden_act="silu", use_sliding_window=False,
    )


def _olmo_config() -> Any:
    return tr.OlmoConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
        max_position_embeddings=N_CTX, hidden_act="silu", clip_qkv=0.5,
    )


#: HF models built only as TL 4 twins of a config feature (:data:`HT_FEATURE_TWINS`), not families of their
#: own (tests over :data:`FAMILIES` do not run them): query/key norms (Qwen3) and the q/k/v clamp (OLMo).
TWIN_SPECS: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec("qwen3", "Qwen3ForCausalLM", "Qwen2 + RMS norms on queries and keys, GQA 4/2", _qwen3_config,
                   hf_float32_ops=_RMS_ROPE_SOFTMAX),
        FamilySpec("olmo", "OlmoForCausalLM", "weightless LN, gated SiLU, rotary, q/k/v clamped to 0.5",
                   _olmo_config, hf_float32_ops=_ROPE_SOFTMAX),
    )
}

#: Families that the TL version in use cannot convert, with the reason (see docs/families.md).
#: ``tests/test_families.py`` checks each reason against the installed TL, so a TL upgrade that adds
#: support makes that test fail (then move the family into :data:`FAMILIES`).
UNSUPPORTED_FAMILIES: dict[str, str] = {
    "falcon": (
        "convert_hf_model_config raises NotImplementedError('FalconForCausalLM is not currently "
        "supported') and get_pretrained_state_dict has no Falcon weight converter; load it with "
        "TransformerBridge.boot_transformers instead"
    ),
} if HAS_HOOKED else {}

#: TL 4: families that depass_tl refuses on a TransformerBridge, with the refusal (a regex of its
#: UnsupportedModelError; tests/test_architectures.py asserts it): MoE blocks expose no expert weights or
#: hooks there, and GPT-J / Falcon blocks share one norm between attention and MLP.
BRIDGE_REFUSED_FAMILIES: dict[str, str] = {} if HAS_HOOKED else {
    "mixtral": BRIDGE_REFUSALS["moe"], "gptj": BRIDGE_REFUSALS["shared_norm"], "falcon": BRIDGE_REFUSALS["shared_norm"],
}

#: Names accepted by :func:`build_family` that depass_tl decomposes on the installed TL, in a fixed order.
FAMILIES: tuple[str, ...] = tuple(
    name for name in FAMILY_SPECS if name not in UNSUPPORTED_FAMILIES and name not in BRIDGE_REFUSED_FAMILIES
)


def from_pretrained_flags(family: str) -> dict[str, bool]:
    """Return the processing flags ``HookedTransformer.from_pretrained`` would use for a family.

    ``from_pretrained`` turns all four flags on, except ``center_unembed`` under an output logit
    soft cap (Gemma-2), where centring would change the capped logits.

    Args:
        family: A name in :data:`FAMILIES`.

    Returns:
        Keyword arguments for :func:`build_family`.

    Raises:
        DePassError: Unknown family.
    """
    if family not in FAMILY_SPECS:
        raise DePassError(f"unknown family {family!r}; pick one of {FAMILIES}")
    flags = dict.fromkeys(PROCESSING_FLAGS, True)
    if family == "gemma2":
        flags["center_unembed"] = False
    return flags


def family_tokens(*, batch: int = 2, pos: int = 7, seed: int = 1) -> torch.Tensor:
    """Return seeded random token ids ``[batch, pos]`` valid for every family's vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, pos), generator=generator)


def _randomise_hf(model: nn.Module, *, seed: int) -> None:
    """Re-initialise every parameter of a freshly built HF model (in place, seeded).

    Matrices get std ``WEIGHT_STD`` (embeddings ``EMBED_STD``), biases std ``BIAS_STD``, norm gains
    ``1 + NORM_STD * N(0, 1)`` (``NORM_STD * N(0, 1)`` for Gemma's offset norms, whose gain is
    ``1 + w``) and norm biases std ``BIAS_STD``, so that attention patterns are far from uniform and
    any dropped bias or norm weight changes the output.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(param: torch.Tensor, std: float, mean: float = 0.0) -> None:
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        param.copy_((mean + std * noise).to(param.dtype))

    with torch.no_grad():
        for module in model.modules():
            is_norm = "norm" in type(module).__name__.lower()
            offset_norm = "gemma" in type(module).__name__.lower() and is_norm
            is_embedding = isinstance(module, nn.Embedding)
            for name, param in module.named_parameters(recurse=False):
                if is_norm and name == "weight":
                    normal(param, NORM_STD, mean=0.0 if offset_norm else 1.0)
                elif "bias" in name:
                    normal(param, BIAS_STD)
                elif is_embedding:
                    normal(param, EMBED_STD)
                else:
                    normal(param, WEIGHT_STD)


def _neutral_dir() -> Path:
    """Create a temporary folder whose path TL's name sniffing cannot misread."""
    for _ in range(10):
        folder = Path(tempfile.mkdtemp(prefix="depass_family_"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        if not any(word in str(folder).lower() for word in _NAME_SNIFFED):
            return folder
    raise DePassError(
        f"could not create a temporary folder free of {_NAME_SNIFFED} (last: {folder}); "
        "set TMPDIR to a neutral path"
    )


def _hf_config(family: str) -> Any:
    spec = {**FAMILY_SPECS, **TWIN_SPECS}[family]
    hf_config = spec.make_hf_config()
    hf_config.architectures = [spec.hf_class]
    # Eager reference kernels: SDPA/grouped_mm differ by kernel noise, and grouped_mm has no float64.
    hf_config._attn_implementation = "eager"
    if getattr(hf_config, "num_local_experts", None):
        hf_config._experts_implementation = "eager"
    return hf_config


@functools.cache
def hf_config_folder(family: str) -> Path:
    """Save a family's tiny HF config.json to a neutral temporary folder (cached) and return it.

    The folder is what ``convert_hf_model_config`` reads; it holds no weights (the HF model object
    is passed to ``get_pretrained_state_dict`` directly).

    Args:
        family: A key of :data:`FAMILY_SPECS` (supported or not).

    Returns:
        The folder holding ``config.json``.

    Raises:
        DePassError: Unknown family.
    """
    if family not in FAMILY_SPECS:
        raise DePassError(f"unknown family {family!r}; pick one of {tuple(FAMILY_SPECS)}")
    folder = _neutral_dir() / "model"
    _hf_config(family).save_pretrained(folder)
    return folder


@functools.cache
def _build_hf(family: str, dtype: torch.dtype, seed: int) -> nn.Module:
    spec = {**FAMILY_SPECS, **TWIN_SPECS}[family]
    torch.manual_seed(seed)
    hf_model = getattr(tr, spec.hf_class)(_hf_config(family))
    _randomise_hf(hf_model, seed=seed)
    hf_model = hf_model.to(dtype).eval()
    hf_model.requires_grad_(False)
    return hf_model


def _cast_moe_experts(model: HookedTransformer) -> None:
    """Give the MoE router and experts the model's dtype (TL 3.9 bug workaround).

    TL 3.9's ``MoE`` builds its router and experts as ``nn.Linear`` in torch's default dtype
    (float32) whatever ``cfg.dtype`` is, so a float64 MoE model fails with "expected m1 and m2 to
    have the same dtype". This fixes our own freshly built model only; nothing else is touched.
    """
    if not model.cfg.num_experts:
        return
    for block in model.blocks:
        block.mlp.to(model.cfg.dtype)


@functools.cache
def build_family(
    family: str,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = SEED,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
) -> tuple[HookedTransformer, nn.Module]:
    """Build a tiny random HF model of a family and its TL conversion (cached per arguments).

    Args:
        family: One of :data:`FAMILIES`.
        dtype: ``torch.float32`` or ``torch.float64``, for both models.
        seed: Seed of the HF model's weights.
        fold_ln: Passed to ``load_and_process_state_dict``.
        center_writing_weights: Passed to ``load_and_process_state_dict``.
        center_unembed: Passed to ``load_and_process_state_dict``.
        fold_value_biases: Passed to ``load_and_process_state_dict``.

    Returns:
        ``(model, hf_model)``: the ``HookedTransformer`` and the HF model it was converted from, both
        in eval mode. They are cached and shared: do not modify them.

    Raises:
        UnsupportedModelError: The family is one TL cannot convert (see :data:`UNSUPPORTED_FAMILIES`).
        DePassError: Unknown family, unsupported dtype, or ``center_unembed`` with a logit soft cap.
    """
    if family in UNSUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"family {family!r} cannot be converted by this TransformerLens version: "
            f"{UNSUPPORTED_FAMILIES[family]}; pick one of {FAMILIES}"
        )
    if family not in FAMILY_SPECS:
        raise DePassError(f"unknown family {family!r}; pick one of {FAMILIES}")
    if dtype not in (torch.float32, torch.float64):
        raise DePassError(f"dtype {dtype} is not supported here; use torch.float32 or torch.float64")
    spec = FAMILY_SPECS[family]
    hf_model = _build_hf(family, dtype, seed)
    if not HAS_HOOKED:
        if center_unembed and not from_pretrained_flags(family)["center_unembed"]:
            raise DePassError(
                f"center_unembed=True with an output logit soft cap ({family}) changes the capped logits; pass "
                "center_unembed=False (HookedTransformer.from_pretrained does the same)"
            )
        flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
                     fold_value_biases=fold_value_biases)
        return _boot_family(family, dtype, seed, _compat_mode(family, flags)), hf_model
    folder = hf_config_folder(family)

    if spec.tl_config is None:
        cfg_dict = tl_loading.convert_hf_model_config(str(folder))
    else:
        cfg_dict = spec.tl_config(hf_model.config)
    cfg_dict.update(device="cpu", init_weights=False, dtype=dtype, tokenizer_name=None, seed=seed)
    if center_unembed and cfg_dict.get("output_logits_soft_cap", -1.0) > 0:
        raise DePassError(
            f"center_unembed=True with output_logits_soft_cap={cfg_dict['output_logits_soft_cap']} "
            f"({family}) changes the capped logits; pass center_unembed=False "
            "(HookedTransformer.from_pretrained does the same)"
        )
    cfg = HookedTransformerConfig.from_dict(cfg_dict)

    if spec.tl_config is None:
        state_dict = tl_loading.get_pretrained_state_dict(str(folder), cfg, hf_model=hf_model,
                                                          dtype=dtype)
    else:
        state_dict = convert_gemma_weights(hf_model, cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        model = HookedTransformer(cfg)
    _cast_moe_experts(model)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    model.eval()
    model.requires_grad_(False)
    return model, hf_model


def _compat_mode(family: str, flags: dict[str, bool]) -> bool:
    """TL 4: no processing (raw Bridge) or all of from_pretrained's (compatibility mode); nothing between."""
    if not any(flags.values()):
        return False
    if flags == from_pretrained_flags(family):
        return True
    import pytest

    pytest.skip(
        f"impossible on TransformerLens {TL_VERSION}: a TransformerBridge processes weights all together "
        f"(enable_compatibility_mode); the single HookedTransformer processing flags {flags} do not exist there"
    )


@functools.cache
def _boot_family(family: str, dtype: torch.dtype, seed: int, compat: bool) -> Any:
    """TL 4: the family's HF model (same weights as :func:`_build_hf`) booted as a ``TransformerBridge``."""
    from tests.bridge_models import boot_folder, save_hf_model

    folder = save_hf_model(_build_hf(family, dtype, seed))
    bridge = boot_folder(folder, compat=compat, dtype=dtype)
    hf_config = bridge.original_model.config
    if getattr(hf_config, "_experts_implementation", None):  # grouped_mm has no float64 (as in _hf_config)
        hf_config._experts_implementation = "eager"
    return bridge


# --------------------------------------------------------------------------------------------------
# Config-built HookedTransformers, one per TL config feature.

_BASE: dict[str, Any] = {"n_layers": 2, "d_model": 32, "d_head": 8, "n_heads": 4, "d_mlp": 64,
                         "n_ctx": 32, "d_vocab": 50}
_LLAMA: dict[str, Any] = {
    **_BASE, "normalization_type": "RMS", "act_fn": "silu", "gated_mlp": True,
    "positional_embedding_type": "rotary", "rotary_dim": 8, "n_key_value_heads": 2,
    "final_rms": True,
}

#: Small HookedTransformerConfig dicts (2 layers, d_model 32, d_vocab 50), one per TL feature.
#: ``build_ht(name)`` builds one with seeded random weights (norm weights and biases included).
HT_CONFIG_FEATURES: dict[str, dict[str, Any]] = {
    # GPT-2-like: LN, gelu_new, learned absolute positions.
    "gpt2_like": {**_BASE, "act_fn": "gelu_new", "normalization_type": "LN"},
    # Llama-like: RMS, gated SiLU MLP, rotary, GQA (4 query / 2 kv heads), final RMS.
    "llama_like": dict(_LLAMA),
    # Attention only (no MLP, no ln2).
    "attn_only": {**_BASE, "attn_only": True, "act_fn": "gelu", "normalization_type": "LN"},
    # LayerNormPre (folded LN: no weights), ReLU.
    "ln_pre": {**_BASE, "act_fn": "relu", "normalization_type": "LNPre"},
    # RMSNormPre with a gated GELU MLP.
    "rms_pre": {**_BASE, "act_fn": "gelu", "normalization_type": "RMSPre", "gated_mlp": True},
    # Plain ReLU MLP with LN.
    "relu": {**_BASE, "act_fn": "relu", "normalization_type": "LN"},
    # No normalisation at all.
    "no_norm": {**_BASE, "act_fn": "gelu", "normalization_type": None},
    # SoLU with the inner MLP LayerNorm.
    "solu_ln": {**_BASE, "act_fn": "solu_ln", "normalization_type": "LN"},
    # Parallel attention and MLP (GPT-J / NeoX topology), partial rotary.
    "parallel_attn_mlp": {**_BASE, "act_fn": "gelu", "parallel_attn_mlp": True,
                          "positional_embedding_type": "rotary", "rotary_dim": 4},
    # Shortformer positions: pos-embed only on the q/k inputs.
    "shortformer": {**_BASE, "act_fn": "gelu", "positional_embedding_type": "shortformer"},
    # ALiBi attention bias.
    "alibi": {**_BASE, "act_fn": "gelu", "positional_embedding_type": "alibi"},
    # BLOOM-style LayerNorm right after the embedding, with ALiBi.
    "post_embedding_ln": {**_BASE, "act_fn": "gelu_fast", "positional_embedding_type": "alibi",
                          "post_embedding_ln": True},
    # Gemma-2-like: pre+post RMS norms, both soft caps, GQA, local/global attention.
    "gemma2_like": {
        **_LLAMA, "act_fn": "gelu_pytorch_tanh", "use_normalization_before_and_after": True,
        "attn_scores_soft_cap": 5.0, "output_logits_soft_cap": 3.0, "use_local_attn": True,
        "window_size": 3, "attn_types": ["local", "global"],
    },
    # Mixtral-like MoE: 4 experts, top-2, renormalised routing weights.
    "moe": {**_LLAMA, "num_experts": 4, "experts_per_token": 2, "norm_topk_prob": True},
    # Per-head q/k/v inputs and per-head results, plus hook_mlp_in.
    "split_qkv_attn_result": {**_BASE, "act_fn": "gelu", "use_split_qkv_input": True,
                              "use_attn_result": True, "use_hook_mlp_in": True},
    # GPT-OSS-style attention sinks (pattern rows sum to < 1).
    "attention_sinks": {**_LLAMA, "use_attention_sinks": True},
    # OLMo-style clamp of q/k/v (nonlinear on the value path).
    "clip_qkv": {**_BASE, "act_fn": "gelu", "clip_qkv": 0.5},
    # Sliding-window (local) attention on every layer.
    "local_attn": {**_BASE, "act_fn": "gelu", "use_local_attn": True, "window_size": 3,
                   "attn_types": ["local", "local"]},
    # Gemma-3-style RMS norm on queries and keys.
    "qk_norm": {**_LLAMA, "use_qk_norm": True},
}


#: TL 4: config features the TL-native Bridge cannot build, tested on the HF family that has them (booted
#: as a TransformerBridge in the requested dtype, unprocessed) by :func:`build_ht`.
HT_FEATURE_TWINS: dict[str, str] = {} if HAS_HOOKED else {
    "parallel_attn_mlp": "neox",  # parallel attention and MLP, partial rotary
    "gemma2_like": "gemma2",  # pre+post RMS norms, both soft caps, GQA, local/global attention
    "moe": "mixtral",  # mixture of experts (depass_tl refuses it on the Bridge)
    "local_attn": "mistral",  # sliding-window attention
    "alibi": "bloom",  # ALiBi
    "post_embedding_ln": "bloom",  # LayerNorm after the embedding
    "qk_norm": "qwen3",  # RMS norms on queries and keys
    "clip_qkv": "olmo",  # q/k/v clamped (depass_tl refuses it on the Bridge)
}


@functools.cache
def build_ht(name: str, *, dtype: torch.dtype = torch.float64, seed: int = SEED) -> HookedTransformer:
    """Build a seeded random HookedTransformer for one entry of :data:`HT_CONFIG_FEATURES`.

    TL initialises norm weights to 1 and biases to 0; here every norm weight becomes
    ``1 + NORM_STD * N(0, 1)`` and every norm bias and layer bias (``b_Q, b_K, b_V, b_O, b_in,
    b_out, b_U``, attention sinks) gets std ``BIAS_STD``. Parameters a config does not create are
    left alone.

    Args:
        name: A key of :data:`HT_CONFIG_FEATURES`.
        dtype: ``torch.float32`` or ``torch.float64``.
        seed: Seed of the weights.

    Returns:
        The model in eval mode (cached and shared: do not modify it).

    Raises:
        DePassError: Unknown name or unsupported dtype.
    """
    if name not in HT_CONFIG_FEATURES:
        raise DePassError(f"unknown config {name!r}; pick one of {sorted(HT_CONFIG_FEATURES)}")
    if dtype not in (torch.float32, torch.float64):
        raise DePassError(f"dtype {dtype} is not supported here; use torch.float32 or torch.float64")
    if name in HT_FEATURE_TWINS:
        return _boot_family(HT_FEATURE_TWINS[name], dtype, seed, False)
    model = config_model(**HT_CONFIG_FEATURES[name], dtype=dtype, seed=seed, init_weights=True)
    if HAS_HOOKED:
        _cast_moe_experts(model)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(dtype)
            if _is_norm_weight(model, param_name, param):  # norm gains
                param.copy_(1.0 + NORM_STD * noise)
            elif _is_bias(model, param_name) or param_name.endswith("sinks"):
                param.copy_(BIAS_STD * noise)
    model.eval()
    model.requires_grad_(False)
    return model
