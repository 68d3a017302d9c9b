"""Faithfulness evaluation: token-level and component-level protocols, baselines, statistics.

* Token level (:mod:`~depass_tl.evaluate.token_metrics`): Disrupt/Recover-top-k (the DePass paper),
  deletion/insertion curves and AOPC, ERASER comprehensiveness/sufficiency; masking by deletion or
  by a replacement token (:mod:`~depass_tl.evaluate.masking`).
* Component level (:mod:`~depass_tl.evaluate.ablation`): ablate the top-k / bottom-k heads or
  neurons (zero, mean or resample ablation); rankings from DePass, exact single-unit ablation,
  attribution patching, TransformerLens activation patching and captum's layer integrated gradients
  (:mod:`~depass_tl.evaluate.unit_methods`, :mod:`~depass_tl.evaluate.component_metrics`).
* Token baselines (:mod:`~depass_tl.evaluate.baselines`): DePass with every MLP rule; from captum
  (:mod:`~depass_tl.evaluate.captum_methods`, the optional ``[eval]`` extra) integrated gradients
  with a convergence-delta-controlled step count, gradient × input and occlusion; our own attention
  rollout, last-layer attention and random.
* Which MLP rule to trust (:mod:`~depass_tl.evaluate.rule_sensitivity`): every rule and a softmax
  temperature sweep on one capture; rank correlation and top-k overlap of the components.
* Cost (:mod:`~depass_tl.evaluate.budget`): forward / backward passes, replay streams and wall time
  of every method, reported next to its scores.
* :mod:`~depass_tl.evaluate.suite` runs all of it; :mod:`~depass_tl.evaluate.stats` summarises
  (mean ± 1.96·SE, or a seeded percentile bootstrap); :mod:`~depass_tl.evaluate.toy_benchmark`
  runs it on the shipped toy models and writes the README / docs tables.
"""

from __future__ import annotations

from depass_tl.evaluate.ablation import (
    ABLATIONS,
    AblationCurve,
    ablate,
    ablation_curve,
    exact_ablation_scores,
    mean_activations,
)
from depass_tl.evaluate.baselines import (
    Attribution,
    attention_rollout,
    depass_token_attributions,
    depass_variants,
    last_layer_attention,
    mlp_rules,
    random_attributions,
    token_methods,
)
from depass_tl.evaluate.budget import Compute, count_compute
from depass_tl.evaluate.captum_methods import (
    CaptumMissingError,
    IGResult,
    gradient_x_input,
    integrated_gradients,
    integrated_gradients_with_delta,
    layer_integrated_gradients,
    occlusion,
)
from depass_tl.evaluate.component_metrics import (
    attribution_patching,
    depass_head_attributions,
    depass_neuron_attributions,
)
from depass_tl.evaluate.masking import apply_mask, maskable_positions, rank_positions, score_rows, top_k_count
from depass_tl.evaluate.rule_sensitivity import RuleSensitivity, rule_sensitivity
from depass_tl.evaluate.stats import bootstrap_ci, mean_ci
from depass_tl.evaluate.suite import (
    TOKEN_MEASURES,
    TOKEN_MEASURES_HELP,
    ComponentReport,
    TokenReport,
    component_faithfulness,
    format_table,
    run_counted,
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
from depass_tl.evaluate.unit_methods import activation_patching, component_methods

__all__ = [
    "ABLATIONS",
    "AblationCurve",
    "Attribution",
    "CaptumMissingError",
    "ComponentReport",
    "Compute",
    "DeletionInsertion",
    "Erasure",
    "IGResult",
    "RuleSensitivity",
    "TOKEN_MEASURES",
    "TOKEN_MEASURES_HELP",
    "TokenReport",
    "TopKChange",
    "ablate",
    "ablation_curve",
    "activation_patching",
    "apply_mask",
    "attention_rollout",
    "attribution_patching",
    "bootstrap_ci",
    "component_faithfulness",
    "component_methods",
    "comprehensiveness_sufficiency",
    "count_compute",
    "deletion_insertion",
    "depass_head_attributions",
    "depass_neuron_attributions",
    "depass_token_attributions",
    "depass_variants",
    "disrupt_recover",
    "exact_ablation_scores",
    "format_table",
    "gradient_x_input",
    "integrated_gradients",
    "integrated_gradients_with_delta",
    "last_layer_attention",
    "layer_integrated_gradients",
    "maskable_positions",
    "mean_activations",
    "mean_ci",
    "mlp_rules",
    "occlusion",
    "random_attributions",
    "rank_positions",
    "rule_sensitivity",
    "run_counted",
    "score_rows",
    "token_faithfulness",
    "token_methods",
    "top_k_count",
]
