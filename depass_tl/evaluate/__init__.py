"""Faithfulness evaluation: token-level and component-level protocols, baselines, statistics.

* Token level (:mod:`~depass_tl.evaluate.token_metrics`): Disrupt/Recover-top-k (the DePass paper),
  deletion/insertion curves and AOPC, ERASER comprehensiveness/sufficiency; masking by deletion or
  by a replacement token (:mod:`~depass_tl.evaluate.masking`).
* Component level (:mod:`~depass_tl.evaluate.component_metrics`): ablate the top-k / bottom-k heads
  or neurons (zero or mean ablation), DePass unit attributions, attribution patching.
* Baselines (:mod:`~depass_tl.evaluate.baselines`): gradient × input, integrated gradients,
  attention rollout, last-layer attention, random; DePass with each MLP rule.
* :mod:`~depass_tl.evaluate.suite` runs all of it; :mod:`~depass_tl.evaluate.stats` summarises
  (mean ± 1.96·SE, or a seeded percentile bootstrap).
"""

from __future__ import annotations

from depass_tl.evaluate.baselines import (
    attention_rollout,
    depass_token_attributions,
    gradient_x_input,
    integrated_gradients,
    last_layer_attention,
    random_attributions,
    token_methods,
)
from depass_tl.evaluate.component_metrics import (
    AblationCurve,
    ablate,
    ablation_curve,
    attribution_patching,
    depass_head_attributions,
    depass_neuron_attributions,
    mean_activations,
)
from depass_tl.evaluate.masking import apply_mask, maskable_positions, rank_positions, score_rows, top_k_count
from depass_tl.evaluate.stats import bootstrap_ci, mean_ci
from depass_tl.evaluate.suite import (
    TOKEN_MEASURES,
    TOKEN_MEASURES_HELP,
    ComponentReport,
    TokenReport,
    component_faithfulness,
    component_methods,
    format_table,
    token_faithfulness,
)
from depass_tl.evaluate.token_metrics import (
    DeletionInsertion,
    Erasure,
    TopKChange,
    comprehensiveness_sufficiency,
    deletion_insertion,
    disrupt_recover,
)

__all__ = [
    "AblationCurve",
    "ComponentReport",
    "DeletionInsertion",
    "Erasure",
    "TOKEN_MEASURES",
    "TOKEN_MEASURES_HELP",
    "TokenReport",
    "TopKChange",
    "ablate",
    "ablation_curve",
    "apply_mask",
    "attention_rollout",
    "attribution_patching",
    "bootstrap_ci",
    "component_faithfulness",
    "component_methods",
    "comprehensiveness_sufficiency",
    "deletion_insertion",
    "depass_head_attributions",
    "depass_neuron_attributions",
    "depass_token_attributions",
    "disrupt_recover",
    "format_table",
    "gradient_x_input",
    "integrated_gradients",
    "last_layer_attention",
    "maskable_positions",
    "mean_activations",
    "mean_ci",
    "random_attributions",
    "rank_positions",
    "score_rows",
    "token_faithfulness",
    "token_methods",
    "top_k_count",
]
