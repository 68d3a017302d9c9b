"""Token baselines on the linear token model (known answers), captum's convergence control, hygiene.

The captum-backed baselines are skipped without captum (the optional ``[eval]`` extra): they cannot
run there; the error users then get is tested in ``test_missing_captum_says_how_to_install``.
"""

from __future__ import annotations

import sys

import pytest
import torch

from depass_tl.errors import DePassError
from depass_tl.evaluate import (
    CaptumMissingError,
    attention_rollout,
    count_compute,
    depass_token_attributions,
    depass_variants,
    gradient_x_input,
    integrated_gradients,
    integrated_gradients_with_delta,
    last_layer_attention,
    mlp_rules,
    occlusion,
    random_attributions,
    run_counted,
    token_methods,
)
from tests.evaluate.known_models import REPLACE, TARGET, WEIGHTS, linear_token_model, token_prob
from tests.models import make_model, random_tokens

from tests.evaluate._captum import HAS_CAPTUM, needs_captum

TOKENS = torch.tensor([[0, 1, 2, 3, 4, 5]])
# logit = w[last] + mean_j w_j: token j's share is w_j / 6 = (0, 4, 1, 3, 2, 0) / 6
LOGIT_SHARES = torch.tensor([[0, 4, 1, 3, 2, 0]], dtype=torch.float64) / 6


@pytest.fixture(scope="module")
def model():
    return linear_token_model()


def _logp(m, toks, target, scale):
    """log p(target) at the last position with the token embeddings scaled by ``scale``."""
    with torch.no_grad():
        logits = m.run_with_hooks(toks, fwd_hooks=[("hook_embed", lambda act, hook: act * scale)])
    return logits[:, -1].log_softmax(-1)[:, target].double()


@pytest.mark.parametrize("rule", mlp_rules())
def test_depass_gives_each_tokens_share_of_the_logit(model, rule):
    torch.testing.assert_close(depass_token_attributions(model, TOKENS, TARGET, mlp_rule=rule), LOGIT_SHARES)


@needs_captum
def test_gradient_x_input_and_ig_on_a_linear_logit(model):
    torch.testing.assert_close(gradient_x_input(model, TOKENS, TARGET, metric="logit"), LOGIT_SHARES)
    torch.testing.assert_close(integrated_gradients(model, TOKENS, TARGET, metric="logit", steps=3), LOGIT_SHARES)
    # log p: d log p / d logit = 1 - p, the same for every token
    p = token_prob([0, 1, 2, 3, 4, 5])
    torch.testing.assert_close(gradient_x_input(model, TOKENS, TARGET), LOGIT_SHARES * (1 - p))


@needs_captum
def test_gradient_x_input_matches_autograd_on_a_random_model():
    m = make_model("gpt2", n_layers=1)
    toks = random_tokens(m, batch=2, pos=4)
    _, cache = m.run_with_cache(toks, names_filter="hook_embed")
    leaf = cache["hook_embed"].detach().requires_grad_(True)
    logits = m.run_with_hooks(toks, fwd_hooks=[("hook_embed", lambda act, hook: leaf)])
    (grad,) = torch.autograd.grad(logits[:, -1].log_softmax(-1)[:, 3].sum(), leaf)
    torch.testing.assert_close(gradient_x_input(m, toks, 3), (grad * leaf).sum(-1).detach().double())


@needs_captum
def test_ig_reaches_the_stated_delta_on_a_nonlinear_metric():
    """Σ_i IG_i = log p(x) − log p(embeddings = 0) within the delta the search reports."""
    m = make_model("gpt2", n_layers=1)
    toks = random_tokens(m, batch=2, pos=4)
    r = integrated_gradients_with_delta(m, toks, 3, delta_tol=1e-4, min_steps=2)
    assert r.converged and r.delta <= 1e-4 and r.steps >= 2
    gap = _logp(m, toks, 3, 1.0) - _logp(m, toks, 3, 0.0)
    assert float((r.scores.sum(1) - gap).abs().max()) <= 1e-4 + 1e-5  # float32 model
    assert all(p.grad is None for p in m.parameters())  # no parameter gradient was accumulated
    assert not any(hp.fwd_hooks or hp.bwd_hooks for hp in m.hook_dict.values())


@needs_captum
def test_ig_that_cannot_converge_says_so():
    m = make_model("gpt2", n_layers=1)
    toks = random_tokens(m, batch=1, pos=4)
    with pytest.warns(UserWarning, match="did not reach"):
        r = integrated_gradients_with_delta(m, toks, 3, delta_tol=1e-12, min_steps=1, max_steps=2)
    assert not r.converged and r.steps == 2 and r.delta > 1e-12


@needs_captum
def test_occlusion_replaces_one_token_at_a_time(model):
    # replacing token j (w_j) by REPLACE (w = 0) lowers the logit by w_j / 6; the last token also
    # loses its direct term w[last] (here 0)
    got = occlusion(model, TOKENS, TARGET, replace_with=REPLACE, metric="logit")
    torch.testing.assert_close(got, LOGIT_SHARES)
    toks = torch.tensor([[0, 1, 2, 3]])  # last token w = 3: its occlusion removes 3 + 3/4
    expected = torch.tensor([[0.0, 4 / 4, 1 / 4, 3 + 3 / 4]], dtype=torch.float64)
    torch.testing.assert_close(occlusion(model, toks, TARGET, replace_with=REPLACE, metric="logit"), expected)
    assert WEIGHTS[REPLACE] == 0.0


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


def test_random_is_seeded_per_prompt(model):
    a = random_attributions(model, TOKENS, seed=1)
    assert torch.equal(a, random_attributions(model, TOKENS, seed=1))
    assert not torch.equal(a, random_attributions(model, TOKENS, seed=2))
    two = torch.tensor([[0, 3, 2, 1, 4, 5], [0, 1, 2, 3, 4, 5]])
    assert torch.equal(random_attributions(model, two, seed=1)[1], a[0])  # the same whatever the batch


def test_method_lists_follow_the_rule_registry():
    variants = depass_variants((0.1, 1.0))
    rules = {kw["mlp_rule"] for kw in variants.values()}
    assert rules == set(mlp_rules())  # a new rule (e.g. taylor) joins every table by itself
    assert [n for n in variants if "softmax" in n] == ["depass softmax T=0.1", "depass softmax T=1"]
    assert list(depass_variants(attn_only=True)) == ["depass (no MLP: every rule)"]
    names = list(token_methods(temperatures=(0.1,), captum=False))
    assert names[-3:] == ["attention rollout", "last-layer attention", "random"]


def test_missing_captum_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # `import captum.attr` now raises ImportError
    with pytest.raises(CaptumMissingError, match=r'pip install "depass_tl\[eval\]"'):
        token_methods()
    with pytest.raises(ImportError):  # also an ImportError, by Python convention
        gradient_x_input(linear_token_model(), TOKENS, TARGET)
    assert len(token_methods(captum=False)) > 0  # the non-captum methods still work


@pytest.mark.parametrize("captum_methods", [pytest.param(True, marks=needs_captum), False], ids=["captum", "own"])
def test_every_standard_method_returns_batch_pos_on_a_random_model(captum_methods):
    m = make_model("gpt2")
    toks = random_tokens(m, batch=2, pos=5)
    methods = token_methods(temperatures=(0.1,), captum=captum_methods)
    for name, fn in methods.items():
        out, cost = run_counted(m, fn, toks, [1, 2])
        assert out.shape == (2, 5), name
        assert torch.isfinite(out).all(), name
        assert cost.seconds > 0 and cost.forward >= (0 if name == "random" else 2), name
    assert not any(hp.fwd_hooks or hp.bwd_hooks for hp in m.hook_dict.values())


def test_compute_counts_by_hand(model):
    with count_compute(model) as cost:
        model(TOKENS.repeat(3, 1))
    assert (cost.forward, cost.backward) == (3, 0)
    _, c = run_counted(model, token_methods(captum=False)["depass ratio"], TOKENS.repeat(2, 1), TARGET)
    assert (c.forward, c.backward, c.replay) == (2, 0, 2 * 7)  # one capture; 6 tokens + bias per prompt
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())


@needs_captum
def test_compute_counts_of_gradient_methods(model):
    _, c = run_counted(model, gradient_x_input, TOKENS.repeat(2, 1), TARGET)
    assert (c.forward, c.backward) == (4, 2)  # clean embeddings, then one forward + backward
    _, c = run_counted(model, token_methods()["integrated gradients (captum)"], TOKENS, TARGET)
    steps = int(c.info["ig_steps"])
    assert c.info["ig_delta"] <= 1e-2 and c.info["ig_converged"] == 1.0
    assert c.backward == steps and c.forward == 1 + steps + 2  # embeddings, the path, captum's two end points


def test_errors(model):
    with pytest.raises(DePassError, match=r"tokens must be a \[batch, pos\] integer tensor"):
        attention_rollout(model, TOKENS.float())
    if HAS_CAPTUM:
        with pytest.raises(DePassError, match="steps must be a positive integer"):
            integrated_gradients(model, TOKENS, TARGET, steps=0)
        with pytest.raises(DePassError, match="metric must be"):
            gradient_x_input(model, TOKENS, TARGET, metric="loss")  # type: ignore[arg-type]
        with pytest.raises(DePassError, match="replace_with must be a token id"):
            occlusion(model, TOKENS, TARGET, replace_with=99)
