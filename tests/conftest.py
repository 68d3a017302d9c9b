"""Shared test settings: one thread, seeded, warnings from TL silenced, hypothesis profiles."""

from __future__ import annotations

import os
import warnings

import torch
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=DeprecationWarning)

# Test selection per installed TransformerLens version (tests/_tl_version.py, docs/support_matrix.md)
from tests._tl_version import collect_ignore, pytest_collection_modifyitems  # noqa: E402, F401

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
