"""Find ``transformer_lens.HookedEncoder`` lazily; TransformerLens 4.0 removed it."""

from __future__ import annotations

from depass_tl.backends import tl_version
from depass_tl.errors import UnsupportedModelError

__all__ = ["hooked_encoder_class"]


def hooked_encoder_class() -> type:
    """Return ``transformer_lens.HookedEncoder``, or raise a clear error where it does not exist.

    Raises:
        UnsupportedModelError: TransformerLens is missing, or is 4.x (``HookedEncoder`` removed).
    """
    try:
        import transformer_lens

        cls = transformer_lens.HookedEncoder
    except (ImportError, AttributeError) as e:
        raise UnsupportedModelError(
            "transformer_lens.HookedEncoder is not available (installed TransformerLens: "
            f"{tl_version()}); it was removed in TransformerLens 4.0. To convert a BERT into one, install "
            "'transformer-lens<4'; DecompX itself does not need it: pass the transformers "
            "BertForSequenceClassification / BertForMaskedLM to depass_tl.run_with_depass"
        ) from e
    if not isinstance(cls, type):
        raise UnsupportedModelError(
            f"transformer_lens.HookedEncoder is a {type(cls).__name__}, not a class; "
            "DecompX needs TransformerLens 2.16-3.x"
        )
    return cls
