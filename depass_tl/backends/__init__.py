"""Backend adapters: read a TransformerLens model's config and weights into a ModelView.

Two backends, one output. :mod:`depass_tl.backends.hooked` reads a ``HookedTransformer``
(TL 2.x / 3.x) and :mod:`depass_tl.backends.bridge` a ``TransformerBridge`` (TL 3.x / 4.x, with
or without compatibility mode). Everything downstream (capture's hook names, the replay) is the same
for both: the Bridge registers the HookedTransformer hook names in both of its modes.

Neither module imports a TL model class at import time, so importing depass_tl never fails because
a class is missing from the installed TL version.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_act_name", "is_bridge", "tl_version"]


def tl_version() -> str:
    """The installed TransformerLens version string (``"not installed"`` if it is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("transformer-lens", "transformer_lens"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "not installed"


def is_bridge(model: Any) -> bool:
    """True for a ``transformer_lens.model_bridge.TransformerBridge`` (or subclass).

    Matched by class name along the MRO, so the check needs no TL import and works on every TL
    version (TL 2.x has no Bridge at all).
    """
    return any(cls.__name__ == "TransformerBridge" for cls in type(model).__mro__)


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """TL's ``get_act_name`` (``("resid_post", 3)`` -> ``blocks.3.hook_resid_post``) on every TL version.

    It is ``transformer_lens.utilities.get_act_name`` on TL 3.x / 4.x (TL 4 removed ``transformer_lens.utils``)
    and ``transformer_lens.utils.get_act_name`` on TL 2.x.
    """
    try:
        from transformer_lens.utilities import get_act_name as tl_get_act_name
    except ImportError:  # TL 2.x
        from transformer_lens.utils import get_act_name as tl_get_act_name  # type: ignore[no-redef]
    return tl_get_act_name(name, layer, layer_type)
