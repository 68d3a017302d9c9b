"""Component-level protocol on one-layer models whose logit is a known sum over heads / neurons.

TransformerLens's own activation patching is the independent reference for resample ablation. The
captum layer-IG tests are skipped without captum (the optional [eval] extra).
"""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp

from depass_tl.errors import DePassError
from depass_tl.evaluate import (
    ablate,
    ablation_curve,
    activation_patching,
    attribution_patching,
    component_methods,
    depass_head_attributions,
    depass_neuron_attributions,
    exact_ablation_scores,
    layer_integrated_gradients,
    mean_activations,
    run_counted,
)
from tests.evaluate.known_models import TARGET, THETA, WRONG, linear_head_model, linear_neuron_model
from tests.models import make_model, random_tokens

from tests.evaluate._captum import needs_captum

# heads: c = (3, -1, 2), prefix mean of w over [1, 2, 3] is 2 at the last position: logit = 4·2 = 8
HEAD_TOKENS = torch.tensor([[1, 2, 3]])
HEAD_CORRUPT = torch.tensor([[1, 1, 1]])  # prefix mean 1: head h writes c_h instead of 2 c_h
# neurons: last token w = 2, b = (0, -1, -3) -> post = (2, 1, 0), c = (1, 3, 5): logit = 2 + 3 = 5
NEURON_TOKENS = torch.tensor([[1, 3, 2]])


@pytest.fixture(scope="module")
def heads():
    return linear_head_model()


@pytest.fixture(scope="module")
def neurons():
    return linear_neuron_model()


def test_depass_head_attributions_are_c_times_z(heads):
    torch.testing.assert_close(depass_head_attributions(heads, HEAD_TOKENS, TARGET),
                               torch.tensor([[[6.0, -2.0, 4.0]]], dtype=torch.float64))
    diff = depass_head_attributions(heads, HEAD_TOKENS, TARGET, incorrect=WRONG)
    torch.testing.assert_close(diff, torch.tensor([[[6.0, -2.0, 4.0]]], dtype=torch.float64))  # THETA is bias


def test_depass_neuron_attributions(neurons):
    torch.testing.assert_close(depass_neuron_attributions(neurons, NEURON_TOKENS, TARGET),
                               torch.tensor([[[2.0, 3.0, 0.0]]], dtype=torch.float64))


def test_attribution_patching_is_exact_on_a_linear_model(heads, neurons):
    corrupt = torch.tensor([[1, 1, 1]])  # prefix mean 1: each head changes by c_h · (2 - 1)
    got = attribution_patching(heads, HEAD_TOKENS, TARGET, incorrect=WRONG, corrupt_tokens=corrupt)
    torch.testing.assert_close(got, torch.tensor([[[3.0, -1.0, 2.0]]], dtype=torch.float64))
    zero = attribution_patching(heads, HEAD_TOKENS, TARGET)  # a · ∂m/∂a at the clean run
    torch.testing.assert_close(zero, torch.tensor([[[6.0, -2.0, 4.0]]], dtype=torch.float64))
    torch.testing.assert_close(attribution_patching(neurons, NEURON_TOKENS, TARGET, level="neurons"),
                               torch.tensor([[[2.0, 3.0, 0.0]]], dtype=torch.float64))


def test_zero_ablation_curve_top_and_bottom(heads):
    scores = depass_head_attributions(heads, HEAD_TOKENS, TARGET)
    top = ablation_curve(heads, HEAD_TOKENS, scores, TARGET, incorrect=WRONG, fractions=(1 / 3, 2 / 3, 1.0))
    assert top.k == (1, 2, 3)
    # remove h0 (c=3): 2·(−1+2) − 5 = −3; then h2: −2 − 5 = −7; then all: −5
    torch.testing.assert_close(top.metric[0], torch.tensor([-3.0, -7.0, -5.0], dtype=torch.float64))
    torch.testing.assert_close(top.clean_metric, torch.tensor([8.0 - THETA], dtype=torch.float64))
    assert top.correct.tolist() == [[False, False, False]] and top.clean_correct.tolist() == [True]
    bottom = ablation_curve(heads, HEAD_TOKENS, scores, TARGET, incorrect=WRONG, fractions=(1 / 3, 2 / 3),
                            direction="bottom")
    # remove h1 (c=−1): 5·2 − 5 = 5; then h2: 3·2 − 5 = 1
    torch.testing.assert_close(bottom.metric[0], torch.tensor([5.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(bottom.accuracy, torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_mean_ablation_uses_the_reference_mean(heads):
    ref = torch.tensor([[1, 2, 3], [3, 3, 3]])  # prefix means (1, 1.5, 2) and (3, 3, 3): mean 2.25
    means = mean_activations(heads, ref)
    torch.testing.assert_close(means[0, :, 0], torch.full((3,), 2.25, dtype=torch.float64))
    scores = torch.tensor([[1.0, 0.0, 0.0]])  # shared ranking [n_layers, n_heads]: h0 first
    curve = ablation_curve(heads, HEAD_TOKENS, scores, TARGET, fractions=(1 / 3,), ablation="mean",
                           reference_tokens=ref)
    # h0 writes 3·2.25 instead of 3·2: logit = 6.75 + (−2 + 4) = 8.75; argmax still TARGET
    torch.testing.assert_close(curve.metric[0], torch.tensor([8.75], dtype=torch.float64))
    assert curve.correct.tolist() == [[True]]


def test_neuron_ablation(neurons):
    scores = depass_neuron_attributions(neurons, NEURON_TOKENS, TARGET)
    top = ablation_curve(neurons, NEURON_TOKENS, scores, TARGET, incorrect=WRONG, level="neurons", fractions=(1 / 3,))
    bottom = ablation_curve(neurons, NEURON_TOKENS, scores, TARGET, incorrect=WRONG, level="neurons",
                            fractions=(1 / 3,), direction="bottom")
    torch.testing.assert_close(top.metric[0], torch.tensor([2.0 - THETA], dtype=torch.float64))
    torch.testing.assert_close(bottom.metric[0], torch.tensor([5.0 - THETA], dtype=torch.float64))
    assert top.correct.tolist() == [[False]] and bottom.correct.tolist() == [[False]]  # 5 − 5 is not > 0


def test_per_prompt_masks_and_hooks_removed():
    m = make_model("gpt2")
    toks = random_tokens(m, batch=2, pos=5)
    mask = torch.zeros(2, 2, 4, dtype=torch.bool)
    mask[1, 0, 2] = True  # only prompt 1 is ablated
    clean = m(toks)
    out = ablate(m, toks, mask)
    torch.testing.assert_close(out[0], clean[0])
    assert not torch.allclose(out[1], clean[1])
    assert not any(hp.fwd_hooks or hp.bwd_hooks for hp in m.hook_dict.values())


def test_last_layer_neurons_match_direct_logit_attribution_on_a_random_model():
    """Neurons of the last layer reach the logits only through the frozen final LayerNorm."""
    m = make_model("gpt2")
    toks = random_tokens(m, batch=2, pos=5)
    a = depass_neuron_attributions(m, toks, 3)
    assert a.shape == (2, 2, 32) and torch.isfinite(a).all()
    _, cache = m.run_with_cache(toks)
    post = cache["blocks.1.mlp.hook_post"][:, -1]  # [batch, d_mlp]
    per_neuron = post[:, :, None] * m.W_out[1][None] / cache["ln_final.hook_scale"][:, -1, :, None]
    per_neuron = per_neuron - per_neuron.mean(-1, keepdim=True)  # [batch, d_mlp, d_model]
    torch.testing.assert_close(a[:, 1], per_neuron @ (m.ln_final.w * m.W_U[:, 3]))
    heads = depass_head_attributions(m, toks, 3)
    assert heads.shape == (2, 2, 4) and torch.isfinite(heads).all()


def test_errors(heads):
    with pytest.raises(DePassError, match="attention-only"):
        depass_neuron_attributions(heads, HEAD_TOKENS, TARGET)
    with pytest.raises(DePassError, match="level must be"):
        ablation_curve(heads, HEAD_TOKENS, torch.zeros(1, 3), TARGET, level="layers")  # type: ignore[arg-type]
    with pytest.raises(DePassError, match=r"scores must have shape"):
        ablation_curve(heads, HEAD_TOKENS, torch.zeros(2, 3), TARGET)
    with pytest.raises(DePassError, match="direction must be"):
        ablation_curve(heads, HEAD_TOKENS, torch.zeros(1, 3), TARGET, direction="middle")  # type: ignore[arg-type]
    with pytest.raises(DePassError, match="needs means"):
        ablate(heads, HEAD_TOKENS, torch.zeros(1, 3, dtype=torch.bool), ablation="mean")
    with pytest.raises(DePassError, match="corrupt_tokens must have the shape"):
        attribution_patching(heads, HEAD_TOKENS, TARGET, corrupt_tokens=torch.tensor([[1, 2]]))


def test_exact_single_head_ablation_by_hand(heads):
    zero = exact_ablation_scores(heads, HEAD_TOKENS, TARGET, incorrect=WRONG)  # head h removes c_h · 2
    torch.testing.assert_close(zero, torch.tensor([[[6.0, -2.0, 4.0]]], dtype=torch.float64))
    resample = exact_ablation_scores(heads, HEAD_TOKENS, TARGET, incorrect=WRONG, ablation="resample",
                                     corrupt_tokens=HEAD_CORRUPT)  # c_h · (2 − 1)
    torch.testing.assert_close(resample, torch.tensor([[[3.0, -1.0, 2.0]]], dtype=torch.float64))
    means = mean_activations(heads, torch.tensor([[3, 3, 3]]))  # z = 3 everywhere: c_h · (2 − 3)
    mean = exact_ablation_scores(heads, HEAD_TOKENS, TARGET, ablation="mean", means=means, batch_size=1)
    torch.testing.assert_close(mean, torch.tensor([[[-3.0, 1.0, -2.0]]], dtype=torch.float64))


def test_exact_neuron_ablation_by_hand(neurons):
    # post = (2, 1, 0), c = (1, 3, 5): zero-ablating neuron n removes c_n · post_n
    got = exact_ablation_scores(neurons, NEURON_TOKENS, TARGET, level="neurons")
    torch.testing.assert_close(got, torch.tensor([[[2.0, 3.0, 0.0]]], dtype=torch.float64))


def test_resample_ablation_matches_transformer_lens_patching():
    """Our batched per-prompt resample ablation = TL's activation patching of the corrupted head into the clean run."""
    m = make_model("gpt2")
    clean, corrupt = random_tokens(m, batch=2, pos=5, seed=1), random_tokens(m, batch=2, pos=5, seed=2)
    ours = exact_ablation_scores(m, clean, [3, 4], incorrect=[5, 6], ablation="resample", corrupt_tokens=corrupt,
                                 batch_size=5)  # chunks that split a layer's heads
    for b, (t, i) in enumerate(((3, 5), (4, 6))):
        def metric(logits, t=t, i=i):
            return logits[0, -1, t] - logits[0, -1, i]

        with torch.no_grad():
            _, corrupt_cache = m.run_with_cache(corrupt[b : b + 1])
            tl = tlp.get_act_patch_attn_head_out_all_pos(m, clean[b : b + 1], corrupt_cache, metric)
            clean_m = float(metric(m(clean[b : b + 1])))
        torch.testing.assert_close(ours[b], clean_m - tl.double(), atol=2e-5, rtol=1e-5)


def test_activation_patching_denoising_by_hand(heads):
    got = activation_patching(heads, HEAD_TOKENS, TARGET, corrupt_tokens=HEAD_CORRUPT, incorrect=WRONG)
    torch.testing.assert_close(got, torch.tensor([[[3.0, -1.0, 2.0]]], dtype=torch.float64))


def test_resample_ablation_curve(heads):
    scores = torch.tensor([[2.0, 0.0, 1.0]])  # h0, then h2
    curve = ablation_curve(heads, HEAD_TOKENS, scores, TARGET, incorrect=WRONG, k=(1, 2), ablation="resample",
                           corrupt_tokens=HEAD_CORRUPT)
    # clean 8 − 5 = 3; resampling h0 removes 3, then h2 removes 2 more
    torch.testing.assert_close(curve.metric[0], torch.tensor([0.0, -2.0], dtype=torch.float64))
    assert curve.k == (1, 2) and curve.fractions == (1 / 3, 2 / 3)


@needs_captum
def test_layer_integrated_gradients_is_exact_on_linear_models(heads, neurons):
    r = layer_integrated_gradients(heads, HEAD_TOKENS, TARGET, baseline_tokens=HEAD_CORRUPT, incorrect=WRONG)
    torch.testing.assert_close(r.scores, torch.tensor([[[3.0, -1.0, 2.0]]], dtype=torch.float64))
    assert r.converged and r.delta < 1e-6 and r.steps == 8  # captum's quadrature weights are float32
    # neurons: baseline last token w = 3 -> post (3, 2, 0); the path moves post linearly, m = Σ c_n post_n
    r = layer_integrated_gradients(neurons, NEURON_TOKENS, TARGET, baseline_tokens=torch.tensor([[1, 3, 3]]),
                                   level="neurons")
    torch.testing.assert_close(r.scores, torch.tensor([[[-1.0, -3.0, 0.0]]], dtype=torch.float64))


@needs_captum
def test_layer_integrated_gradients_completeness_per_layer_on_a_random_model():
    """Per layer, the scores sum to m(clean) − m(clean with that layer's z from the baseline run)."""
    m = make_model("gpt2")
    clean, base = random_tokens(m, batch=2, pos=5, seed=1), random_tokens(m, batch=2, pos=5, seed=2)
    r = layer_integrated_gradients(m, clean, [3, 4], baseline_tokens=base, incorrect=[5, 6], delta_tol=1e-4)
    assert r.converged and r.delta <= 1e-4
    _, cache = m.run_with_cache(base)
    ids, bad = torch.tensor([3, 4]), torch.tensor([5, 6])

    def ld(logits):
        return (logits[:, -1].gather(1, ids[:, None]) - logits[:, -1].gather(1, bad[:, None]))[:, 0].double()

    for layer in range(m.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        patched = ld(m.run_with_hooks(clean, fwd_hooks=[(name, lambda act, hook: cache[name])]))
        torch.testing.assert_close(r.scores[:, layer].sum(1), (ld(m(clean)) - patched).detach(), atol=2e-4, rtol=0)


def test_compute_counts_of_component_methods(heads):
    methods = component_methods(attn_only=True, captum=False)
    kw = dict(level="heads", incorrect=WRONG, corrupt_tokens=HEAD_CORRUPT, means=mean_activations(heads, HEAD_TOKENS))
    counts = {}
    for name, fn in methods.items():
        _, c = run_counted(heads, fn, HEAD_TOKENS, TARGET, **kw)
        counts[name] = (c.forward, c.backward, c.replay)
    assert counts["depass (no MLP: every rule)"] == (1, 0, 5)  # one capture; 3 heads + rest + bias
    assert counts["exact ablation (zero)"] == (1 + 3, 0, 0)  # clean run + one per head
    assert counts["exact ablation (resample)"] == (1 + 1 + 3, 0, 0)  # + the corrupted run
    assert counts["attribution patching (resample)"] == (2, 1, 0)
    assert counts["activation patching (TL, denoising)"] == (1 + 1 + 3, 0, 0)
    assert counts["random"] == (0, 0, 0)


def test_resample_errors(heads):
    with pytest.raises(DePassError, match="needs corrupt_tokens"):
        exact_ablation_scores(heads, HEAD_TOKENS, TARGET, ablation="resample")
    with pytest.raises(DePassError, match="ablation must be one of"):
        exact_ablation_scores(heads, HEAD_TOKENS, TARGET, ablation="noise")  # type: ignore[arg-type]
    with pytest.raises(DePassError, match="corrupt_tokens must have the shape"):
        ablate(heads, HEAD_TOKENS, torch.zeros(1, 3, dtype=torch.bool), ablation="resample",
               corrupt_tokens=torch.tensor([[1, 2]]))
    with pytest.raises(DePassError, match="give fractions or k"):
        ablation_curve(heads, HEAD_TOKENS, torch.zeros(1, 3), TARGET, fractions=(0.5,), k=(1,))
    with pytest.raises(DePassError, match="k must be unit counts"):
        ablation_curve(heads, HEAD_TOKENS, torch.zeros(1, 3), TARGET, k=(4,))


@needs_captum
def test_layer_ig_errors(heads):
    with pytest.raises(DePassError, match="steps must be a positive integer"):
        layer_integrated_gradients(heads, HEAD_TOKENS, TARGET, baseline_tokens=HEAD_CORRUPT, steps=0)
    with pytest.raises(DePassError, match="delta_tol must be positive"):
        layer_integrated_gradients(heads, HEAD_TOKENS, TARGET, baseline_tokens=HEAD_CORRUPT, delta_tol=0.0)
    with pytest.raises(DePassError, match="baseline_tokens must have the shape"):
        layer_integrated_gradients(heads, HEAD_TOKENS, TARGET, baseline_tokens=torch.tensor([[1, 2]]))
    with pytest.raises(DePassError, match="attention-only"):
        layer_integrated_gradients(heads, HEAD_TOKENS, TARGET, baseline_tokens=HEAD_CORRUPT, level="neurons")
