"""The analysis layer on the toys, on whichever model class the installed TransformerLens gives.

On TL 4 these run on a ``TransformerBridge`` (the only class there): ``compare`` next to TL's own
activation patching, subspace patching and DAS, reverse mode, the faithfulness suite and the figures.
Each result is checked against something computed independently (a patch done by hand, the forward
replay, TL's own forward).
"""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl import toy, viz
from depass_tl.compare import compare
from depass_tl.reverse import attribute, logit_target
from depass_tl.subspace_patching import subspace_patch_hook, train_das

PROMPT = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"  # the subject swapped at S2


@pytest.fixture(scope="module")
def ioi():
    model, _ = toy.load("ioi")
    return model


def _logit_diff(model, tokens) -> torch.Tensor:
    logits = model(tokens)[:, -1]
    return logits[:, model.to_single_token(" Mary")] - logits[:, model.to_single_token(" John")]


@torch.no_grad()
def test_compare_runs_tls_patching_and_depass_on_this_class(ioi) -> None:
    cmp = compare(ioi, PROMPT, CORRUPTED, answer_tokens=" Mary", incorrect_tokens=" John",
                  layouts=["resid_pre", "attn_head_out_all_pos"])
    resid = cmp["resid_pre"]
    n_layers, n_heads = ioi.cfg.n_layers, ioi.cfg.n_heads
    assert resid.patching.shape == (n_layers, 15) and cmp["attn_head_out_all_pos"].patching.shape == (n_layers, n_heads)
    # one patching cell by hand: the clean layer-0 residual at S2 (position 10) patched into the corrupted run
    clean, corrupted = ioi.to_tokens(PROMPT), ioi.to_tokens(CORRUPTED)
    _, cache = ioi.run_with_cache(clean, names_filter="blocks.0.hook_resid_pre")

    def patch(act, hook):
        act[:, 10] = cache["blocks.0.hook_resid_pre"][:, 10]
        return act

    patched = ioi.run_with_hooks(corrupted, fwd_hooks=[("blocks.0.hook_resid_pre", patch)])
    effect = float(_metric(ioi, patched)[0] - _logit_diff(ioi, corrupted)[0])
    assert float(resid.patching[0, 10]) == pytest.approx(effect, abs=1e-4)
    # DePass: the layer-0 cells plus the rest add up to the clean metric
    assert float(resid.depass_clean[0].sum() + resid.rest_clean[0]) == pytest.approx(cmp.metric_clean, abs=1e-4)
    assert cmp.metric_clean == pytest.approx(float(_logit_diff(ioi, clean)[0]), abs=1e-4)


@torch.no_grad()
def test_subspace_patching_of_the_whole_space_is_activation_patching(ioi) -> None:
    clean, corrupted = ioi.to_tokens(PROMPT), ioi.to_tokens(CORRUPTED)
    site = "blocks.1.hook_resid_pre"
    _, cache = ioi.run_with_cache(clean, names_filter=site)
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))[0]
    hook = subspace_patch_hook(basis, cache[site], pos=10)
    patched = ioi.run_with_hooks(corrupted, fwd_hooks=[(site, hook)])

    def full(act, hook):
        act[:, 10] = cache[site][:, 10]
        return act

    expected = ioi.run_with_hooks(corrupted, fwd_hooks=[(site, full)])
    torch.testing.assert_close(patched, expected, rtol=0, atol=1e-4)


def test_das_trains_on_this_class_and_leaves_the_model_as_it_was(ioi) -> None:
    clean, corrupted = ioi.to_tokens(PROMPT), ioi.to_tokens(CORRUPTED)
    before = [p.detach().clone() for p in ioi.parameters()]
    result = train_das(ioi, corrupted, clean, "blocks.1.hook_resid_pre", lambda logits: _metric(ioi, logits), k=1,
                       pos=10, steps=30, progress=False)
    assert result.basis.shape == (64, 1)
    assert torch.allclose(result.basis.T @ result.basis, torch.eye(1), atol=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(before, ioi.parameters()))
    assert all(not p.requires_grad or p.grad is None for p in ioi.parameters())


def _metric(model, logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, model.to_single_token(" Mary")] - logits[:, -1, model.to_single_token(" John")]


def test_reverse_mode_equals_the_forward_replay(ioi) -> None:
    target = logit_target(" Mary", incorrect_tokens=" John")
    reverse = attribute(ioi, PROMPT, target=target, mode="reverse")
    forward = attribute(ioi, PROMPT, target=target, mode="forward")
    _, dc = depass_tl.run_with_depass(ioi, PROMPT, mlp_rule="ratio")
    torch.testing.assert_close(reverse.values, forward.values, rtol=0, atol=1e-4)
    torch.testing.assert_close(forward.values, dc.logit_attrs(" Mary", incorrect_tokens=" John"), rtol=0, atol=1e-4)
    assert reverse.completeness_error() < 1e-4


def test_faithfulness_suite_runs_on_this_class(ioi) -> None:
    from depass_tl.evaluate import token_faithfulness, token_methods
    from depass_tl.toy.data import ioi_prompts

    prompts = ioi_prompts(40, split="heldout", seed=0)
    length = len(ioi.to_tokens(prompts[0].text)[0])
    prompts = [p for p in prompts if len(ioi.to_tokens(p.text)[0]) == length][:3]
    tokens = ioi.to_tokens([p.text for p in prompts])
    io = torch.tensor([ioi.to_single_token(p.io) for p in prompts])
    methods = {k: v for k, v in token_methods(temperatures=(0.1,), captum=False).items()
               if k in ("depass softmax T=0.1", "attention rollout")}
    assert len(methods) == 2
    report = token_faithfulness(ioi, tokens, io, methods=methods, topk_fractions=(0.5, 1.0), eraser_fractions=(0.2,),
                                progress=False)
    assert list(report.table().index) == list(methods)
    for name in methods:  # keeping every token changes nothing
        assert torch.all(report.recover[name][:, -1] == 0), name


def test_figures_show_token_strings(ioi, tmp_path) -> None:
    pytest.importorskip("plotly", reason="the figures need the viz extra (plotly)")
    _, dc = depass_tl.run_with_depass(ioi, PROMPT)
    _, dh = depass_tl.run_with_depass(ioi, PROMPT, components=depass_tl.heads())
    figs = {"tokens": viz.token_heatmap(dc, " Mary", incorrect_tokens=" John", backend="plotly"),
            "heads": viz.head_grid(dh, " Mary", incorrect_tokens=" John", backend="plotly"),
            "flow": viz.flow(dc, " Mary", incorrect_tokens=" John", backend="plotly")}
    page = viz.save_html_page(figs, tmp_path / "page.html", title="toy")
    text = page.read_text()
    assert text.count("<h2>") == 3 and " drink" in text and "Mary" in text
    shown = " ".join(str(t) for row in figs["tokens"].data[0].text for t in row)  # the heatmap's cell labels
    assert all(token in shown for token in ("BOS", "Mary", "drink", "store")), shown
