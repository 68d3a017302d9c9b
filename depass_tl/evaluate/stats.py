"""Summaries over prompts: the mean with a normal-approximation or a bootstrap confidence interval.

They live in :mod:`depass_tl.stats`, with the agreement statistics of :mod:`depass_tl.compare`.
"""

from __future__ import annotations

from depass_tl.stats import bootstrap_ci, mean_ci

__all__ = ["bootstrap_ci", "mean_ci"]
