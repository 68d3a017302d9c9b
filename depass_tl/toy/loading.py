"""Load the shipped toy models: safetensors weights + a JSON config, no network, no pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from depass_tl.errors import DePassError
from depass_tl.toy.encoder import ToyEncoder

__all__ = ["WEIGHTS_DIR", "available", "info", "load"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
_FORMAT_VERSION = 1


def available() -> list[str]:
    """Names of the shipped toy models, sorted.

    Examples:
        >>> available()
        ['facts', 'induction', 'ioi']
    """
    return sorted(
        p.stem for p in WEIGHTS_DIR.glob("*.json") if (WEIGHTS_DIR / f"{p.stem}.safetensors").is_file()
    )


def info(name: str) -> dict[str, Any]:
    """The JSON config of toy model ``name``: model config, vocabulary, metrics, training settings.

    Raises:
        DePassError: If there is no toy model called ``name``.
    """
    names = available()
    if name not in names:
        raise DePassError(f"no toy model called {name!r}; available toy models: {names}")
    config = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    if config.get("format_version") != _FORMAT_VERSION:
        raise DePassError(
            f"toy model {name!r} has config format {config.get('format_version')!r}, this version "
            f"of depass_tl reads format {_FORMAT_VERSION}; retrain it with scripts/train_toy.py"
        )
    return config


def load(name: str, *, device: str | torch.device = "cpu") -> tuple[HookedTransformer, ToyEncoder]:
    """Load a shipped toy model and its encoder by name (offline; never unpickles anything).

    Args:
        name: One of :func:`available` (``"induction"``, ``"ioi"``, ``"facts"``).
        device: Where to put the model.

    Returns:
        ``(model, encoder)``: a float32 :class:`~transformer_lens.HookedTransformer` in eval mode and
        the :class:`~depass_tl.toy.encoder.ToyEncoder` whose ids the model was trained on.

    Raises:
        DePassError: If there is no toy model called ``name``.

    Examples:
        >>> model, enc = load("ioi")
        >>> tokens = enc.encode("When Mary and John went to the store, John gave a drink to")
        >>> enc.to_str_tokens(model(tokens)[0, -1].argmax(-1, keepdim=True))
        [' Mary']
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # here: importing the package works on TL 4

    config = info(name)
    cfg = HookedTransformerConfig(**config["hooked_transformer_config"], device=str(device), dtype=torch.float32)
    model = HookedTransformer(cfg)
    state = load_file(str(WEIGHTS_DIR / f"{name}.safetensors"), device=str(device))
    # The causal-mask buffers are not weights: TL 3 saves them empty ([0, 0]) where TL 2 builds them
    # [n_ctx, n_ctx], so keep the model's own buffer whenever the shapes differ.
    own = model.state_dict()
    state = {
        k: own[k] if k.endswith((".attn.mask", ".attn.IGNORE")) and k in own and v.shape != own[k].shape else v
        for k, v in state.items()
    }
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, ToyEncoder(config["vocab"])
