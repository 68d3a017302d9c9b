"""The evaluation suite on ``TransformerBridge`` models (TL 3.x / 4.x): every method, counts, hygiene.

Everything in depass_tl.evaluate drives the model through hooks only (``run_with_cache``,
``run_with_hooks``, ``hooks()``, ``hook_dict``, ``cfg``), so it must run unchanged on a Bridge. The
references are independent of our code: TransformerLens's activation patching for resample
ablation, the layer-patched run for captum's layer IG, and, on TL 3, the HookedTransformer converted
from the same weights. The captum tests are skipped without captum (the optional [eval] extra).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tests._tl_version import HAS_HOOKED, TL_VERSION, requires_bridge

pytestmark = [requires_bridge, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

import transformer_lens.patching as tlp  # noqa: E402

from depass_tl.evaluate import (  # noqa: E402
    ablation_curve,
    component_methods,
    exact_ablation_scores,
    integrated_gradients_with_delta,
    layer_integrated_gradients,
    mean_activations,
    run_counted,
    token_methods,
)
from tests.bridge_models import build_bridge  # noqa: E402

from tests.evaluate._captum import HAS_CAPTUM, needs_captum  # noqa: E402

CLEAN = torch.tensor([[1, 5, 9, 13, 17, 21], [2, 6, 10, 14, 18, 22]])
CORRUPT = torch.tensor([[1, 7, 9, 15, 17, 23], [2, 8, 10, 16, 18, 24]])
TARGET, WRONG = [30, 31], [40, 41]


def _n_hooks(model) -> int:
    points = {id(hp): hp for hp in model.hook_dict.values()}.values()
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in points)


@pytest.mark.parametrize("compat", [False, True], ids=["raw", "compat"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_every_token_method_on_a_bridge(family, compat):
    bridge, _ = build_bridge(family, compat=compat)
    methods = token_methods(temperatures=(0.1,), captum=HAS_CAPTUM)
    if family == "llama":  # see test_ig_on_llama_says_it_did_not_converge
        methods.pop("integrated gradients (captum)", None)
    for name, fn in methods.items():
        scores, cost = run_counted(bridge, fn, CLEAN, TARGET)
        assert scores.shape == CLEAN.shape and torch.isfinite(scores).all(), name
        assert cost.forward >= (0 if name == "random" else 2), name
    assert _n_hooks(bridge) == 0 and all(p.grad is None for p in bridge.parameters())


@needs_captum
def test_ig_on_llama_says_it_did_not_converge():
    """Llama has no positional embeddings: scaling the token embeddings to 0 sends the RMSNorm input to 0, a
    step at alpha ~ 1e-3 that integrated gradients from the zero baseline does not resolve (|delta| ~ 2 at 512
    steps). The method says so instead of returning unconverged numbers silently."""
    bridge, _ = build_bridge("llama", compat=True)
    with pytest.warns(UserWarning, match="did not reach"):
        r = integrated_gradients_with_delta(bridge, CLEAN, TARGET, min_steps=8, max_steps=32)
    assert not r.converged and r.steps == 32 and r.delta > 0.01


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_every_head_method_on_a_bridge(family):
    bridge, _ = build_bridge(family, compat=True)
    means = mean_activations(bridge, CLEAN)
    shape = (2, bridge.cfg.n_layers, bridge.cfg.n_heads)
    for name, fn in component_methods(temperatures=(0.1,), captum=HAS_CAPTUM).items():
        scores, _ = run_counted(bridge, fn, CLEAN, TARGET, level="heads", incorrect=WRONG, corrupt_tokens=CORRUPT,
                                means=means)
        assert tuple(scores.shape) == shape and torch.isfinite(scores).all(), name
        curve = ablation_curve(bridge, CLEAN, scores, TARGET, incorrect=WRONG, k=(1, 2), ablation="resample",
                               corrupt_tokens=CORRUPT)
        assert curve.metric.shape == (2, 2), name
    assert _n_hooks(bridge) == 0


def test_resample_ablation_on_a_bridge_matches_transformer_lens_patching():
    bridge, _ = build_bridge("gpt2", compat=True)
    ours = exact_ablation_scores(bridge, CLEAN[:1], TARGET[0], incorrect=WRONG[0], ablation="resample",
                                 corrupt_tokens=CORRUPT[:1])

    def metric(logits):
        return logits[0, -1, TARGET[0]] - logits[0, -1, WRONG[0]]

    with torch.no_grad():
        _, corrupt_cache = bridge.run_with_cache(CORRUPT[:1])
        tl = tlp.get_act_patch_attn_head_out_all_pos(bridge, CLEAN[:1], corrupt_cache, metric)
        clean_m = float(metric(bridge(CLEAN[:1])))
    torch.testing.assert_close(ours[0], clean_m - tl.double(), atol=5e-5, rtol=1e-5)


@needs_captum
def test_layer_ig_completeness_on_a_bridge():
    bridge, _ = build_bridge("llama", compat=True)
    r = layer_integrated_gradients(bridge, CLEAN, TARGET, baseline_tokens=CORRUPT, incorrect=WRONG, level="neurons",
                                   delta_tol=1e-3)
    assert r.converged and r.scores.shape == (2, bridge.cfg.n_layers, bridge.cfg.d_mlp)
    _, cache = bridge.run_with_cache(CORRUPT)
    ids, bad = torch.tensor(TARGET), torch.tensor(WRONG)

    def ld(logits):
        return (logits[:, -1].gather(1, ids[:, None]) - logits[:, -1].gather(1, bad[:, None]))[:, 0].double()

    name = "blocks.1.mlp.hook_post"
    with torch.no_grad():
        patched = ld(bridge.run_with_hooks(CLEAN, fwd_hooks=[(name, lambda act, hook: cache[name])]))
        full = ld(bridge(CLEAN))
    torch.testing.assert_close(r.scores[:, 1].sum(1), full - patched, atol=2e-3, rtol=0)


@pytest.mark.skipif(not HAS_HOOKED, reason=f"needs HookedTransformer (TL < 4); installed TransformerLens {TL_VERSION}")
def test_bridge_and_hooked_transformer_give_the_same_rankings():
    """TL 3: the compat Bridge and the HookedTransformer from the same weights give the same head scores."""
    from tests.bridge_models import boot_folder, save_hf_model
    from tests.families import build_family, from_pretrained_flags

    model, hf_model = build_family("gpt2", **from_pretrained_flags("gpt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = boot_folder(save_hf_model(hf_model), compat=True)
    toks = CLEAN % model.cfg.d_vocab
    target, wrong = [t % model.cfg.d_vocab for t in TARGET], [t % model.cfg.d_vocab for t in WRONG]
    corrupt = CORRUPT % model.cfg.d_vocab
    methods = component_methods(temperatures=(0.1,), captum=HAS_CAPTUM, ablations=("zero", "resample"))
    for name in methods:
        if name == "random":
            continue
        kw = dict(level="heads", incorrect=wrong, corrupt_tokens=corrupt)
        a, _ = run_counted(model, methods[name], toks, target, **kw)
        b, _ = run_counted(bridge, methods[name], toks, target, **kw)
        # per head, not only summed: the Bridge's raw hook_z layout (heads flattened) is mapped right
        torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4, msg=name)
