"""Plots of DePass results: they read a :class:`~depass_tl.cache.DePassCache` (or a comparison) and
never compute attributions.

=================================  ================================================================
function                           shows
=================================  ================================================================
``token_heatmap(dc, tokens)``      the prompt's tokens coloured by signed contribution (``tokens()``)
``head_grid(dc, tokens)``          ``[layer × head]`` heatmap (``heads()`` or ``sources()``)
``flow(dc, tokens)``               top-k components, layer by layer (residual projection) + logit attribution
``side_by_side(comparison, lay)``  DePass next to activation patching (from ``depass_tl.compare``)
``rule_sensitivity_plot(result)``  agreement of every MLP rule variant (``depass_tl.evaluate.rule_sensitivity``)
``save(fig, path)``                ``.html`` (plotly, interactive) or ``.png``/``.svg``/``.pdf``
``save_explorer(data, path)``      the explorer: one interactive page (no plotting library; see below)
=================================  ================================================================

Each plot has a ``*_data`` twin returning the plain numbers it draws. ``tokens`` /
``incorrect_tokens`` are passed to ``dc.logit_attrs``; or pass ``attrs=`` (``[component, batch]``)
you already computed. Titles say in words what is shown (``Which tokens drive logit(“Mary”) −
logit(“John”)``), colour bars are labelled ``logit contribution`` and centred at 0 on a symmetric
range, and token strings (``str_tokens=``, else the cache's) label the tokens. Plotly figures are
interactive and follow their container's width; ``backend="matplotlib"`` draws the same words as
static figures sized for print (at most 7.2 in wide). Install with ``pip install "depass_tl[viz]"``.

The explorer (:mod:`depass_tl.viz.explorer`): ``capture`` once with ``extra_hooks=explorer_hooks(n_layers)``,
``explorer_caches(run)`` (one replay set per MLP rule), ``explorer_data(caches, target=..., contrast=...)``
(plain JSON-able numbers), ``save_explorer(data, "page.html")``; ``depass-tl attribute ... --html`` does this.

Examples:
    >>> import torch, depass_tl
    >>> from depass_tl import viz
    >>> from depass_tl.toy import random_model
    >>> cfg = dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2,
    ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
    >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]))
    >>> viz.token_heatmap_data(dc, 4, incorrect_tokens=5).title
    'Which tokens drive logit(#4) − logit(#5)'
"""

from depass_tl.viz._backend import INSTALL_HINT, resolve_backend, save, save_html_page
from depass_tl.viz.compare import heatmap_panels, side_by_side
from depass_tl.viz.explorer import (
    ExplorerCaches, RuleCaches, explorer_caches, explorer_data, explorer_hooks, explorer_html, save_explorer,
)
from depass_tl.viz.flow import FlowData, flow, flow_data, plain_hook_labels, residual_hooks
from depass_tl.viz.heads import HeadGridData, head_grid, head_grid_data
from depass_tl.viz.rule_sensitivity import RuleSensitivityData, rule_sensitivity_data, rule_sensitivity_plot
from depass_tl.viz.tokens import TokenHeatmapData, token_heatmap, token_heatmap_data

__all__ = [
    "INSTALL_HINT", "ExplorerCaches", "FlowData", "HeadGridData", "RuleCaches", "TokenHeatmapData", "explorer_caches",
    "explorer_data", "explorer_hooks", "explorer_html", "flow", "flow_data", "head_grid", "head_grid_data",
    "heatmap_panels", "plain_hook_labels", "residual_hooks", "resolve_backend", "RuleSensitivityData",
    "rule_sensitivity_data", "rule_sensitivity_plot", "save", "save_explorer",
    "save_html_page", "side_by_side", "token_heatmap", "token_heatmap_data",
]
