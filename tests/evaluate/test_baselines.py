"""Baselines on the linear token model (known answers) and hygiene on a random model."""

from __future__ import annotations

import pytest
import torch

from depass_tl.errors import DePassError
from depass_tl.evaluate import (
    attention_rollout,
    depass_token_attributions,
    gradient_x_input,
    integrated_gradients,
    last_layer_attention,
    random_attributions,
    token_methods,
)
from tests.evaluate.known_models import TARGET, linear_token_model, token_prob
from tests.models import make_model, random_tokens

TOKENS = torch.tensor([[0, 1, 2, 3, 4, 5]])
# logit = w[last] + mean_j w_j: token j's share is w_j / 6 = (0, 4, 1, 3, 2, 0) / 6
LOGIT_SHARES = torch.tensor([[0, 4, 1, 3, 2, 0]], dtype=torch.float64) / 6


@pytest.fixture(scope="module")
def model():
    return linear_token_model()


@pytest.mark.parametrize("rule", ["softmax", "ratio", "max"])
def test_depass_gives_each_tokens_share_of_the_logit(model, rule):
    torch.testing.assert_close(depass_token_attributions(model, TOKENS, TARGET, mlp_rule=rule), LOGIT_SHARES)


def test_gradient_x_input_and_ig_on_a_linear_logit(model):
    torch.testing.assert_close(gradient_x_input(model, TOKENS, TARGET, metric="logit"), LOGIT_SHARES)
    torch.testing.assert_close(integrated_gradients(model, TOKENS, TARGET, metric="logit", steps=3), LOGIT_SHARES)
    # log p: d log p / d logit = 1 - p, the same for every token
    p = token_prob([0, 1, 2, 3, 4, 5])
    torch.testing.assert_close(gradient_x_input(model, TOKENS, TARGET), LOGIT_SHARES * (1 - p))


def test_ig_completeness_on_a_nonlinear_metric():
    """Σ_i IG_i ≈ f(x) − f(embeddings = 0) (the path integral), here with log p on a random model."""
    m = make_model("gpt2", n_layers=1)
    toks = random_tokens(m, batch=1, pos=4)
    ig = integrated_gradients(m, toks, 3, steps=64)

    def logp(scale: float) -> float:
        def hook(act, hook):
            return act * scale

        with torch.no_grad():
            logits = m.run_with_hooks(toks, fwd_hooks=[("hook_embed", hook)])
        return float(logits[0, -1].log_softmax(-1)[3])

    assert abs(float(ig.sum()) - (logp(1.0) - logp(0.0))) < 2e-2
    assert all(p.grad is None for p in m.parameters())  # no parameter gradient was accumulated
    assert not any(hp.fwd_hooks or hp.bwd_hooks for hp in m.hook_dict.values())


def test_rollout_and_last_layer_attention_uniform_attention(model):
    # one layer, uniform causal attention over 6 tokens: 0.5/6 everywhere, plus 0.5 on itself
    expected = torch.full((1, 6), 0.5 / 6, dtype=torch.float64)
    expected[0, -1] += 0.5
    torch.testing.assert_close(attention_rollout(model, TOKENS), expected)
    torch.testing.assert_close(last_layer_attention(model, TOKENS), torch.full((1, 6), 1 / 6, dtype=torch.float64))


def test_rollout_two_layers_by_hand():
    m = make_model("attn_only", n_layers=2)
    with torch.no_grad():
        for b in m.blocks:
            b.attn.W_Q.zero_(); b.attn.b_Q.zero_()  # noqa: E702 - uniform causal attention
    got = attention_rollout(m, torch.tensor([[1, 2, 3]]))
    # Â = 0.5 A + 0.5 I, A uniform lower-triangular; last row of Â² = (23, 17, 32) / 72
    torch.testing.assert_close(got, torch.tensor([[23, 17, 32]], dtype=torch.float64) / 72)


def test_random_is_seeded(model):
    a = random_attributions(model, TOKENS, seed=1)
    assert torch.equal(a, random_attributions(model, TOKENS, seed=1))
    assert not torch.equal(a, random_attributions(model, TOKENS, seed=2))


def test_every_standard_method_returns_batch_pos_on_a_random_model():
    m = make_model("gpt2")
    toks = random_tokens(m, batch=2, pos=5)
    methods = token_methods(temperatures=(0.1,), ig_steps=2)
    for name, fn in methods.items():
        out = fn(m, toks, [1, 2])
        assert out.shape == (2, 5), name
        assert torch.isfinite(out).all(), name


def test_errors(model):
    with pytest.raises(DePassError, match="steps must be a positive integer"):
        integrated_gradients(model, TOKENS, TARGET, steps=0)
    with pytest.raises(DePassError, match=r"tokens must be a \[batch, pos\] integer tensor"):
        gradient_x_input(model, TOKENS.float(), TARGET)
    with pytest.raises(DePassError, match="metric must be"):
        gradient_x_input(model, TOKENS, TARGET, metric="loss")  # type: ignore[arg-type]
