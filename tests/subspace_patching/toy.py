"""Short names for the distilled example models used by these tests (depass_tl.subspace_patching.examples)."""

from __future__ import annotations

from depass_tl.subspace_patching.examples import ANSWER, OTHER, SITE, distilled_model, distilled_tokens, logit_diff

build_toy = distilled_model
tokens = distilled_tokens

__all__ = ["ANSWER", "OTHER", "SITE", "build_toy", "logit_diff", "tokens"]
