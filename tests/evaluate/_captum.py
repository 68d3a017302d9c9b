"""Whether captum (the optional ``[eval]`` extra) is installed, and the skip mark for tests that need it."""

from __future__ import annotations

import pytest

try:
    import captum  # noqa: F401

    HAS_CAPTUM = True
except ImportError:
    HAS_CAPTUM = False

#: captum baselines cannot run without captum; the error users get then is tested in test_baselines.py
needs_captum = pytest.mark.skipif(not HAS_CAPTUM, reason="captum is not installed (the optional [eval] extra)")
