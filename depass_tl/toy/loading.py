"""Load the shipped toy models, offline, as the model class the installed TransformerLens has.

Each toy model is a folder (:mod:`depass_tl.toy.checkpoint`): HookedTransformer weights in
safetensors, a JSON config and a Hugging Face tokenizer. :func:`load` builds

* a ``HookedTransformer`` (TL 2.x / 3.x), or
* a ``TransformerBridge`` around TL's native model (``TransformerBridge.boot_native``; TL 3.5+ and 4.x),

with identical logits, and attaches the tokenizer as ``model.tokenizer``. Nothing is downloaded or
unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from depass_tl.errors import DePassError
from depass_tl.toy.checkpoint import MODEL_FILE, hooked_to_bridge_state, read_config
from depass_tl.toy.encoder import ToyEncoder
from depass_tl.toy.tokenizer import load_tokenizer

__all__ = [
    "MODEL_CLASSES", "WEIGHTS_DIR", "available", "build_model", "default_model_class", "folder", "info", "load",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"
ModelClass = Literal["auto", "hooked", "bridge"]
#: The values of ``load(..., model_class=)``.
MODEL_CLASSES = ("auto", "hooked", "bridge")


def available() -> list[str]:
    """Names of the shipped toy models, sorted.

    Examples:
        >>> available()
        ['facts', 'induction', 'ioi']
    """
    return sorted(p.parent.name for p in WEIGHTS_DIR.glob(f"*/{MODEL_FILE}"))


def folder(name: str | Path) -> Path:
    """The folder of toy model ``name`` (a shipped name, or the path of a folder written by ``toy.save``).

    Raises:
        DePassError: If ``name`` is neither.
    """
    if isinstance(name, str) and name in available():
        return WEIGHTS_DIR / name
    path = Path(name)
    if (path / MODEL_FILE).is_file():
        return path
    raise DePassError(
        f"no toy model called {str(name)!r}; available toy models: {available()} (or the path of a folder "
        "written by depass_tl.toy.save)"
    )


def info(name: str | Path) -> dict[str, Any]:
    """The JSON config of toy model ``name``: model config, vocabulary, metrics, training settings.

    Raises:
        DePassError: If there is no toy model called ``name``.
    """
    return read_config(folder(name))


def default_model_class() -> Literal["hooked", "bridge"]:
    """``"hooked"`` where TransformerLens has ``HookedTransformer`` (TL 2.x / 3.x), else ``"bridge"`` (TL 4)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401  (TL 4 raises ImportError)
    except ImportError:
        return "bridge"
    return "hooked"


def load(
    name: str | Path, *, device: str | torch.device = "cpu", model_class: ModelClass = "auto"
) -> tuple[Any, ToyEncoder]:
    """Load a toy model, its tokenizer and its encoder (offline; never unpickles anything).

    Args:
        name: One of :func:`available` (``"induction"``, ``"ioi"``, ``"facts"``), or the folder of a
            model written by :func:`depass_tl.toy.save`.
        device: Where to put the model.
        model_class: ``"hooked"`` for a ``HookedTransformer`` (TL 2.x / 3.x), ``"bridge"`` for a
            ``TransformerBridge`` (TL 3.5+ / 4.x), ``"auto"`` (default) for the first of the two the
            installed TransformerLens has (:func:`default_model_class`). TL 3.x offers both.

    Returns:
        ``(model, encoder)``: the float32 model in eval mode, with its Hugging Face tokenizer attached
        as ``model.tokenizer`` (so strings work: ``model.to_tokens("When Mary ...")``), and the
        :class:`~depass_tl.toy.encoder.ToyEncoder` with the same vocabulary, which names unknown
        words in its errors.

    Raises:
        DePassError: If there is no such toy model, or the installed TransformerLens lacks the class.

    Examples:
        >>> model, enc = load("ioi")
        >>> tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")
        >>> model.to_str_tokens(model(tokens)[0, -1].argmax(-1, keepdim=True))
        [' Mary']
    """
    path = folder(name)
    config = read_config(path)
    state = load_file(str(path / MODEL_FILE), device=str(device))
    model = build_model(config["model_config"], state, tokenizer=load_tokenizer(path), model_class=model_class,
                        device=device)
    return model, ToyEncoder(config["vocab"])


def build_model(
    model_config: dict[str, Any],
    state: dict[str, torch.Tensor],
    *,
    tokenizer: Any = None,
    model_class: ModelClass = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A model of either class from a config (:data:`~depass_tl.toy.checkpoint.MODEL_CONFIG_KEYS`) and
    HookedTransformer-format weights, in eval mode.

    This is how the toys load, and how hand-set test models (e.g.
    :func:`depass_tl.subspace_patching.examples.distilled_model`) run on every TL version.

    Raises:
        DePassError: On an unknown ``model_class`` or one the installed TransformerLens lacks.
    """
    if model_class not in MODEL_CLASSES:
        raise DePassError(f"model_class must be one of {MODEL_CLASSES}, got {model_class!r}")
    kind = default_model_class() if model_class == "auto" else model_class
    build = _load_hooked if kind == "hooked" else _load_bridge
    model = build(model_config, {k: v.to(device, dtype) for k, v in state.items()}, tokenizer, str(device), dtype)
    model.eval()
    return model


def _load_hooked(
    model_config: dict[str, Any], state: dict[str, torch.Tensor], tokenizer: Any, device: str, dtype: torch.dtype
) -> Any:
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        raise DePassError(
            "model_class='hooked' needs HookedTransformer, which TransformerLens 4 removed; use "
            "model_class='bridge' (or 'auto'), or install transformer-lens<4"
        ) from None
    cfg = HookedTransformerConfig(**model_config, device=device, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    result = model.load_state_dict(state, strict=False)
    # the file holds the parameters; the causal-mask buffers (attn.mask / attn.IGNORE) are the model's own
    missing = [k for k in result.missing_keys if not k.endswith((".attn.mask", ".attn.IGNORE"))]
    if missing or result.unexpected_keys:
        raise DePassError(f"the toy weights do not fit the config: missing {missing}, unexpected {result.unexpected_keys}")
    return model


def _load_bridge(
    model_config: dict[str, Any], state: dict[str, torch.Tensor], tokenizer: Any, device: str, dtype: torch.dtype
) -> Any:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        raise DePassError(
            "model_class='bridge' needs TransformerBridge (TransformerLens >= 3.5); use model_class='hooked' "
            "(or 'auto') on TransformerLens 2.x"
        ) from None
    try:  # TL 4 attaches boot_native when this module is imported; TL 3.x defines it on the class
        import transformer_lens.model_bridge.sources.native  # noqa: F401
    except ImportError:
        pass
    if not hasattr(TransformerBridge, "boot_native"):
        raise DePassError("this TransformerLens has no TransformerBridge.boot_native (added in 3.5); upgrade it")
    # init_weights=False: the weights are loaded below, so skip TL's random initialisation
    bridge = TransformerBridge.boot_native(
        dict(model_config, init_weights=False), tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.load_state_dict(hooked_to_bridge_state(state, model_config), strict=True)
    return bridge
