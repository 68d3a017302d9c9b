"""DePass next to activation patching, on the axes of ``transformer_lens.patching``.

**Activation patching** (TL's ``transformer_lens.patching``) runs the model on a *corrupted* input and
overwrites one activation (a residual-stream position, a module output at a position, a head's
``hook_z`` at a position or at every position) with its value from the *clean* run. Here its result
is the **effect** ``metric(patched logits) − metric(corrupted logits)``, one forward pass per cell,
from TL's own ``get_act_patch_*`` functions (called, not re-implemented). Divide by
``metric_clean − metric_corrupted`` to get TL's usual normalised score.

**DePass** (Hong et al., NeurIPS 2025) decomposes a *single* run: the activation at a hook is split
into additive components, each is replayed through the rest of the model with attention patterns,
norm scales and MLP activations frozen at that run's values, and the metric is the exact sum of the
components' contributions. :func:`compare` builds, per patching cell, the component that the patch
would overwrite (:mod:`depass_tl.compare.layouts`: e.g. position p of ``resid_pre[L]``; head h's
output ``z_h W_O[h]`` at position p, with ``b_V`` riding with the head and ``b_O`` in ``rest``) and
reports its contribution to the same metric. Per layer, cells + ``rest`` + ``bias`` = the metric.

**Metric.** A logit difference ``logit[answer] − logit[incorrect]`` (or a single logit) at one
position, averaged over the batch, with one answer per prompt allowed. It is linear in the logits,
so DePass attributes it exactly (``DePassCache.logit_attrs``); patching evaluates the same function
on the patched logits.

**When they agree.** DePass is run on the clean and on the corrupted input; ``depass_diff`` is clean
minus corrupted. If every nonlinear coefficient downstream of the patched activation is the same in
the clean, the corrupted and the patched runs (same attention patterns, no norm or a constant scale,
no MLP in the path), the model is the same affine map in all three, and the patching effect of a
cell equals its ``depass_diff`` exactly. When patching changes a later attention pattern (a QK
effect), a norm scale or an MLP activation, the two differ: DePass freezes those coefficients
(the paper's stated limitation: frozen attention cannot see QK-circuit interactions), patching
does not. Compare the two by rank (:meth:`Comparison.agreement`), not by value.

Layout: :mod:`~depass_tl.compare.comparison` (:func:`compare`, :class:`Comparison`, the metric),
:mod:`~depass_tl.compare.layouts` (each patching layout's DePass components), the agreement statistics
in :mod:`depass_tl.stats`, and the plots in :mod:`depass_tl.viz.compare` (``Comparison.plot``).
"""

from __future__ import annotations

from depass_tl.compare.comparison import Comparison, LayoutComparison, compare, logit_diff_metric
from depass_tl.compare.layouts import LAYOUTS, depass_layout, layout_hooks, layout_shape

__all__ = [
    "LAYOUTS", "Comparison", "LayoutComparison", "compare", "depass_layout", "layout_hooks", "layout_shape",
    "logit_diff_metric",
]
