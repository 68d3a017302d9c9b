"""The on-disk format of a toy model, and the one function that writes it: :func:`save`.

A toy model is a folder (``depass_tl/toy/weights/<name>/`` for the shipped ones)::

    toy.json               format version, name, description, model config, vocabulary, metrics, training
    model.safetensors      the HookedTransformer parameters (TL's own names and shapes), float32
    tokenizer.json         the word-level tokenizer (depass_tl.toy.tokenizer)
    tokenizer_config.json

``model.safetensors`` holds a ``HookedTransformer`` state dict without its buffers, so TL 2.x / 3.x
load it as it is, and :func:`hooked_to_bridge_state` renames and reshapes it for TL's native
``TransformerBridge`` (``TransformerBridge.boot_native``, TL >= 3.5), the same mapping as TL 4's
``convert_tl_checkpoint``, ``b_U`` included (:func:`bridge_to_hooked_state` is the way back, so
:func:`save` also takes a native Bridge, e.g. on TL 4). The model config is restricted to what both classes
compute identically (:data:`PORTABLE_DEFAULTS`), so the two are the same function. Nothing is
pickled.

Examples:
    Save a trained (here: untrained) model with its vocabulary, then load it back by path::

        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from depass_tl import toy

        vocab = ["<|BOS|>", " a", " b"]
        cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=8,
                                      d_vocab=len(vocab), act_fn="gelu", normalization_type="LN")
        toy.save(HookedTransformer(cfg), vocab, "my_toy", description="an example")
        model, encoder = toy.load("my_toy")       # a folder path works wherever a name does
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from depass_tl.errors import DePassError
from depass_tl.toy.encoder import ToyEncoder
from depass_tl.toy.tokenizer import write_tokenizer

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "MODEL_CONFIG_KEYS",
    "MODEL_FILE",
    "PORTABLE_DEFAULTS",
    "bridge_to_hooked_state",
    "convert_v1",
    "hooked_to_bridge_state",
    "read_config",
    "save",
]

FORMAT_VERSION = 2
CONFIG_FILE = "toy.json"
MODEL_FILE = "model.safetensors"

#: The config fields a toy model stores (``HookedTransformerConfig`` / ``TransformerBridgeConfig`` names).
MODEL_CONFIG_KEYS = (
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "act_fn", "normalization_type",
    "positional_embedding_type", "attn_only",
)
#: Other ``HookedTransformerConfig`` fields, at the values under which a HookedTransformer and TL's
#: native Bridge compute the same function (a model with another value cannot be saved as a toy).
PORTABLE_DEFAULTS: dict[str, Any] = {
    "gated_mlp": False, "final_rms": False, "n_key_value_heads": None, "parallel_attn_mlp": False,
    "use_attn_scale": True, "scale_attn_by_inverse_layer_idx": False, "use_local_attn": False,
    "post_embedding_ln": False, "use_normalization_before_and_after": False, "eps": 1e-5,
    "output_logits_soft_cap": -1.0, "attn_scores_soft_cap": -1.0, "attention_dir": "causal",  # not stored: refused
    "default_prepend_bos": True,
}
_NORMS = ("LN", "RMS", None)
_ACTS = ("gelu", "gelu_new", "relu", "silu")


def _portable_config(cfg: Any) -> dict[str, Any]:
    """The stored config of a HookedTransformerConfig; raises if the native Bridge would compute otherwise."""
    config = {key: getattr(cfg, key) for key in MODEL_CONFIG_KEYS}
    if config["attn_only"]:
        config["d_mlp"], config["act_fn"] = None, None
    problems = [f"{k}={getattr(cfg, k, v)!r} (needs {v!r})" for k, v in PORTABLE_DEFAULTS.items()
                if getattr(cfg, k, v) != v]
    if config["normalization_type"] not in _NORMS:
        problems.append(f"normalization_type={config['normalization_type']!r} (needs one of {_NORMS})")
    if config["positional_embedding_type"] != "standard":
        problems.append(f"positional_embedding_type={config['positional_embedding_type']!r} (needs 'standard')")
    if not config["attn_only"] and config["act_fn"] not in _ACTS:
        problems.append(f"act_fn={config['act_fn']!r} (needs one of {_ACTS})")
    scale = float(cfg.attn_scale)  # a Bridge's config keeps -1 for "sqrt(d_head)" (TL's native model reads it so)
    if not math.isclose(scale if scale > 0 else math.sqrt(cfg.d_head), math.sqrt(cfg.d_head)):
        problems.append(f"attn_scale={cfg.attn_scale!r} (needs sqrt(d_head))")
    if getattr(cfg, "d_vocab_out", cfg.d_vocab) not in (-1, cfg.d_vocab):
        problems.append(f"d_vocab_out={cfg.d_vocab_out!r} (needs d_vocab)")
    if problems:
        raise DePassError(
            "this model cannot be saved as a toy model, which must load identically as a HookedTransformer and "
            f"as TL's native TransformerBridge: {'; '.join(problems)}"
        )
    return config


def _write(folder: Path, state: Mapping[str, Tensor], config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(folder / MODEL_FILE), metadata={"format": "pt"})  # one key: byte-identical rewrites
    (folder / MODEL_FILE).chmod(0o644)  # safetensors writes 0600; package data must be world-readable
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    write_tokenizer(config["vocab"], folder, n_ctx=int(config["model_config"]["n_ctx"]))
    return folder


def _is_native_bridge(model: Any) -> bool:
    """A ``TransformerBridge`` around TL's own native model (``TransformerBridge.boot_native``)."""
    return (any(c.__name__ == "TransformerBridge" for c in type(model).__mro__)
            and type(getattr(model, "original_model", None)).__name__ == "NativeModel")


def save(
    model: Any,
    vocab: Sequence[str],
    folder: str | Path,
    *,
    name: str | None = None,
    description: str = "",
    metrics: Mapping[str, float] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Save a trained model and its vocabulary as a toy model folder.

    The folder then loads with ``depass_tl.toy.load(folder)`` as a ``HookedTransformer`` (TL 2.x /
    3.x) or a ``TransformerBridge`` (TL 3.x / 4.x), each with the tokenizer attached. The model is a
    ``HookedTransformer`` or a ``TransformerBridge`` around TL's native model (``boot_native``, e.g.
    :func:`depass_tl.toy.random_model` or ``toy.load(..., model_class="bridge")`` on TL 4), whose
    parameters are stored in HookedTransformer layout (:func:`bridge_to_hooked_state`).

    Args:
        model: A ``HookedTransformer`` or TL-native ``TransformerBridge`` whose config fits
            :data:`PORTABLE_DEFAULTS`.
        vocab: The token strings by id, ``"<|BOS|>"`` first, ``len(vocab) == model.cfg.d_vocab``.
        folder: Where to write (created if needed; existing files are overwritten).
        name: The model's name (default: the folder's name).
        description: One line saying what the model does.
        metrics: Evaluation numbers to store with it (e.g. held-out accuracy).
        training: Training settings to store with it.

    Returns:
        The folder.

    Raises:
        DePassError: If the model is neither of those two, its config is not portable, or the
            vocabulary does not fit it.

    Examples:
        >>> import tempfile, torch
        >>> from depass_tl import toy
        >>> vocab = ["<|BOS|>", " a", " b"]
        >>> model = toy.random_model(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=8,
        ...                          d_vocab=len(vocab), act_fn="gelu", normalization_type="LN", seed=0)
        >>> folder = toy.save(model, vocab, tempfile.mkdtemp() + "/my_toy", description="an example")
        >>> loaded, encoder = toy.load(folder)
        >>> tokens = torch.tensor([[0, 1, 2]])
        >>> torch.allclose(loaded(tokens), model(tokens), atol=1e-5), encoder.vocab == vocab
        (True, True)
    """
    native = _is_native_bridge(model)
    if not native and type(model).__name__ != "HookedTransformer":
        inner = getattr(model, "original_model", None)
        around = f" around {type(inner).__name__}" if inner is not None else ""
        raise DePassError(
            f"toy.save takes a HookedTransformer (TL 2.x / 3.x) or a TransformerBridge around TL's native model "
            f"(TransformerBridge.boot_native, toy.random_model on TL 4); got {type(model).__name__}{around}"
        )
    encoder = ToyEncoder(vocab)  # validates BOS first and uniqueness
    if len(encoder) != model.cfg.d_vocab:
        raise DePassError(f"the vocabulary has {len(encoder)} tokens, the model's d_vocab is {model.cfg.d_vocab}")
    folder = Path(folder)
    model_config = _portable_config(model.cfg)
    config = {
        "format_version": FORMAT_VERSION,
        "name": name or folder.name,
        "description": description,
        "model_config": model_config,
        "vocab": encoder.vocab,
        "metrics": dict(metrics or {}),
        "training": dict(training or {}),
    }
    state = bridge_to_hooked_state(model.state_dict(), model_config) if native else dict(model.named_parameters())
    return _write(folder, state, config)


def convert_v1(json_path: str | Path, folder: str | Path) -> Path:
    """Rewrite a format-1 toy model (``name.json`` + ``name.safetensors`` side by side) as a format-2 folder.

    Format 1 (depass_tl 0.1) stored the TL 3 state dict with its causal-mask buffers and no tokenizer.
    """
    json_path = Path(json_path)
    old = json.loads(json_path.read_text())
    if old.get("format_version") != 1:
        raise DePassError(f"{json_path} is not a format-1 toy config (format_version {old.get('format_version')!r})")
    state = load_file(str(json_path.with_suffix(".safetensors")))
    state = {k: v for k, v in state.items() if not k.endswith((".attn.mask", ".attn.IGNORE"))}
    model_config = dict(old["hooked_transformer_config"])
    if model_config.get("attn_only"):
        model_config["d_mlp"] = None
    model_config = {key: model_config.get(key, False if key == "attn_only" else None) for key in MODEL_CONFIG_KEYS}
    config = {"format_version": FORMAT_VERSION, "name": old["name"], "description": old["description"],
              "model_config": model_config, "vocab": old["vocab"], "metrics": old["metrics"],
              "training": old["training"]}
    return _write(Path(folder), state, config)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The ``toy.json`` of a toy model folder.

    Raises:
        DePassError: If the folder has no ``toy.json`` or it has another format version.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise DePassError(f"{Path(folder)} is not a toy model folder (no {CONFIG_FILE}); write one with toy.save")
    config = json.loads(path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise DePassError(
            f"toy model {config.get('name')!r} has format {config.get('format_version')!r}, this version of depass_tl "
            f"reads format {FORMAT_VERSION}; retrain it with scripts/train_toy.py or convert it with "
            "depass_tl.toy.checkpoint.convert_v1"
        )
    return config


#: HookedTransformer parameter -> (suffix of the native Bridge's nn.Linear, weight or bias).
_LINEAR = {"W_in": (".in", "weight"), "b_in": (".in", "bias"), "W_out": (".out", "weight"),
           "b_out": (".out", "bias"), "W_U": ("", "weight"), "b_U": ("", "bias")}


def hooked_to_bridge_state(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename and reshape a HookedTransformer state dict for TL's native ``TransformerBridge``.

    Per-head attention weights ``[head, d_model, d_head]`` become ``nn.Linear`` weights
    ``[head·d_head, d_model]``; ``W_in``/``W_out``/``W_U`` are transposed; ``b_U`` becomes the
    unembedding bias, which the Bridge adds.

    Raises:
        DePassError: On a key this mapping does not know.
    """
    n_heads, d_head = int(config["n_heads"]), int(config["d_head"])
    out: dict[str, Tensor] = {}
    for key, t in state.items():
        stem, _, leaf = key.rpartition(".")
        if leaf in ("W_Q", "W_K", "W_V"):  # [head, d_model, d_head] -> [head*d_head, d_model]
            out[f"{stem}.{leaf[-1].lower()}.weight"] = t.permute(0, 2, 1).reshape(n_heads * d_head, -1)
        elif leaf in ("b_Q", "b_K", "b_V"):  # [head, d_head] -> [head*d_head]
            out[f"{stem}.{leaf[-1].lower()}.bias"] = t.reshape(-1)
        elif leaf == "W_O":  # [head, d_head, d_model] -> [d_model, head*d_head]
            out[f"{stem}.o.weight"] = t.reshape(n_heads * d_head, -1).T
        elif leaf == "b_O":
            out[f"{stem}.o.bias"] = t
        elif leaf in _LINEAR:  # W_in [d_model, d_mlp] etc. -> nn.Linear [out, in]; b_* as they are
            module, kind = _LINEAR[leaf]
            out[f"{stem}{module}.{kind}"] = t.T if kind == "weight" else t
        elif leaf in ("W_E", "W_pos", "w"):
            out[f"{stem}.weight"] = t
        elif leaf == "b":
            out[f"{stem}.bias"] = t
        else:
            raise DePassError(f"cannot map {key!r} onto TL's native TransformerBridge")
    return {k: v.contiguous() for k, v in out.items()}


#: The native Bridge's ``nn.Linear`` (suffix, weight or bias) -> HookedTransformer parameter (inverse of ``_LINEAR``).
_LINEAR_BACK = {(module, kind): leaf for leaf, (module, kind) in _LINEAR.items()}


def bridge_to_hooked_state(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> dict[str, Tensor]:
    """The inverse of :func:`hooked_to_bridge_state`: a TL-native ``TransformerBridge`` state dict in
    HookedTransformer names and shapes (per-head ``W_Q`` ``[head, d_model, d_head]``, ``W_in`` ``[d_model,
    d_mlp]``, ...).

    Raises:
        DePassError: On a key this mapping does not know (e.g. a model whose weights were processed).

    Examples:
        >>> import torch
        >>> state = {"blocks.0.attn.q.weight": torch.arange(24.).reshape(6, 4), "unembed.weight": torch.zeros(5, 4)}
        >>> {k: tuple(v.shape) for k, v in bridge_to_hooked_state(state, {"n_heads": 2, "d_head": 3}).items()}
        {'blocks.0.attn.W_Q': (2, 4, 3), 'unembed.W_U': (4, 5)}
    """
    n_heads, d_head = int(config["n_heads"]), int(config["d_head"])
    out: dict[str, Tensor] = {}
    for key, t in state.items():
        stem, _, kind = key.rpartition(".")
        parent, _, module = stem.rpartition(".")
        if parent.endswith(".attn") and module in ("q", "k", "v") and kind == "weight":
            out[f"{parent}.W_{module.upper()}"] = t.reshape(n_heads, d_head, -1).permute(0, 2, 1)
        elif parent.endswith(".attn") and module in ("q", "k", "v") and kind == "bias":
            out[f"{parent}.b_{module.upper()}"] = t.reshape(n_heads, d_head)
        elif parent.endswith(".attn") and module == "o":
            out[f"{parent}.{'W_O' if kind == 'weight' else 'b_O'}"] = (
                t.T.reshape(n_heads, d_head, -1) if kind == "weight" else t)
        elif parent.endswith(".mlp") and (f".{module}", kind) in _LINEAR_BACK:
            out[f"{parent}.{_LINEAR_BACK[(f'.{module}', kind)]}"] = t.T if kind == "weight" else t
        elif stem == "unembed" and ("", kind) in _LINEAR_BACK:
            out[f"unembed.{_LINEAR_BACK[('', kind)]}"] = t.T if kind == "weight" else t
        elif stem in ("embed", "pos_embed") and kind == "weight":
            out[f"{stem}.{'W_E' if stem == 'embed' else 'W_pos'}"] = t
        elif module in ("ln1", "ln2", "ln_final") and kind in ("weight", "bias"):
            out[f"{stem}.{'w' if kind == 'weight' else 'b'}"] = t
        else:
            raise DePassError(f"cannot map {key!r} of TL's native TransformerBridge onto a HookedTransformer")
    return {k: v.contiguous() for k, v in out.items()}
