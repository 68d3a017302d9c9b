"""Doctest selection per installed TransformerLens version (the tests' own is in tests/_tl_version.py).

TL 4 removed ``HookedEncoder``, which the converter's doctest builds (``hooked_encoder_from_hf_bert``).
Everything else under ``depass_tl/`` builds its models with ``depass_tl.toy.random_model`` or
transformers, so it runs on TL 4.
"""

from tests._tl_version import TL_MAJOR

#: Paths (relative to the repository root) whose doctests are not collected on this TL version.
collect_ignore = ["depass_tl/decompx/convert.py"] if TL_MAJOR >= 4 else []
