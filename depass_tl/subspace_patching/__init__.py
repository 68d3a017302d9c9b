"""Subspace activation patching, a DAS trainer and the interpretability-illusion report.

* :func:`subspace_patch`, :func:`subspace_patch_hook`, :func:`subspace_patch_setter`: the patch
  ``h + V Vᵀ (h' − h)`` for ``model.run_with_hooks`` and ``transformer_lens.patching``.
* :func:`train_das`: learn a basis by interchange intervention (orthogonal parametrisation, Adam).
* :func:`illusion_report`: rowspace/nullspace split, component patches, dormancy and a DePass flow
  check, with a verdict (Makelov, Lange, Nanda, *Is This the Subspace You Are Looking For?*, ICLR 2024).
"""

from __future__ import annotations

from depass_tl.subspace_patching.das import DASResult, train_das
from depass_tl.subspace_patching.dormancy import DormancyStats, dormancy_stats
from depass_tl.subspace_patching.flow import FlowCheck, subspace_flow
from depass_tl.subspace_patching.illusion import IllusionReport, Thresholds, illusion_report
from depass_tl.subspace_patching.linalg import ORTHONORMAL_ATOL, RowNullSplit, as_basis, orthonormalize, row_null_split
from depass_tl.subspace_patching.setters import subspace_patch, subspace_patch_hook, subspace_patch_setter

__all__ = [
    "ORTHONORMAL_ATOL",
    "DASResult",
    "DormancyStats",
    "FlowCheck",
    "IllusionReport",
    "RowNullSplit",
    "Thresholds",
    "as_basis",
    "dormancy_stats",
    "illusion_report",
    "orthonormalize",
    "row_null_split",
    "subspace_flow",
    "subspace_patch",
    "subspace_patch_hook",
    "subspace_patch_setter",
    "train_das",
]
