"""depass_tl: exact attribution for TransformerLens models by a decomposed forward pass (DePass).

>>> import depass_tl
>>> sorted(depass_tl.__all__)[:3]
['CompletenessError', 'ComponentSpec', 'DePassCache']
"""

from __future__ import annotations

from depass_tl.api import replay, run_with_depass
from depass_tl.attention_scores import ScoreAttribution, attention_score_attrs
from depass_tl.cache import DePassCache
from depass_tl.capture import capture
from depass_tl.coefficients import FrozenRun
from depass_tl.dataset import read_results, run_dataset
from depass_tl.components import ComponentSpec, custom, heads, modules, neurons, sources, subspace, tokens
from depass_tl.decomposition import Decomposition
from depass_tl.errors import (
    CompletenessError, DePassError, DePassTypeError, DePassValueError, ForeignHookError, HookNotFoundError,
    ModelStateError, UnsupportedModelError,
)
from depass_tl.reverse import ScalarAttribution, attribute, attribute_run, direction_target, logit_target
from depass_tl import subspace_patching
from depass_tl.install import install_methods

__all__ = [
    "CompletenessError",
    "ComponentSpec",
    "DePassCache",
    "DePassError",
    "DePassTypeError",
    "DePassValueError",
    "Decomposition",
    "ForeignHookError",
    "FrozenRun",
    "HookNotFoundError",
    "ModelStateError",
    "ScalarAttribution",
    "ScoreAttribution",
    "UnsupportedModelError",
    "attention_score_attrs",
    "attribute",
    "attribute_run",
    "capture",
    "custom",
    "direction_target",
    "heads",
    "logit_target",
    "modules",
    "read_results",
    "neurons",
    "sources",
    "subspace",
    "subspace_patching",
    "replay",
    "run_dataset",
    "run_with_depass",
    "tokens",
]

__version__ = "0.1.0"

install_methods()
