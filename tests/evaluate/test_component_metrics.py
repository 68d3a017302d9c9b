"""Component-level protocol on one-layer models whose logit is a known sum over heads / neurons."""

from __future__ import annotations

import pytest
import torch

from depass_tl.errors import DePassError
from depass_tl.evaluate import (
    ablate,
    ablation_curve,
    attribution_patching,
    depass_head_attributions,
    depass_neuron_attributions,
    mean_activations,
)
from tests.evaluate.known_models import TARGET, THETA, WRONG, linear_head_model, linear_neuron_model
from tests.models import make_model, random_tokens

# heads: c = (3, -1, 2), prefix mean of w over [1, 2, 3] is 2 at the last position: logit = 4·2 = 8
HEAD_TOKENS = torch.tensor([[1, 2, 3]])
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
