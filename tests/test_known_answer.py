"""Golden tests: hand-set one-layer models whose DePass decomposition is derived on paper.

Every expected number below is derived in the comments from the hand-set weights (no code under
test is used to produce it). Numbers are chosen dyadic where exact ties or exact zeros matter.
Also: causality of the engine (a token's component is exactly 0 at earlier positions, at every
hook) on hand-set and random models.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch

import depass_tl
from depass_tl.replay.rules import rule_names
from tests._tl_version import HAS_HOOKED, TL_VERSION
from tests.models import config_model
from tests.tl_cases import cases_unless_bridge, norm_tol
from tests.reference import randomise_norms_and_biases, reference_depass

warnings.filterwarnings("ignore", category=DeprecationWarning)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
torch.set_num_threads(1)

ATOL = 1e-12
RULES = rule_names()  # where the expected value does not depend on the rule
LN3 = math.log(3.0)
TOKENS = torch.tensor([[0, 1]])


def _hand_model(
    gated: bool = False,
    d_mlp: int = 3,
    act_fn: str = "relu",
    normalization_type: str | None = None,
    attn_only: bool = False,
) -> Any:
    """1 layer, d_model 2, one head (d_head 2), no attention scale; every weight zeroed."""
    cfg = dict(
        n_layers=1,
        d_model=2,
        n_heads=1,
        d_head=2,
        d_mlp=d_mlp,
        d_vocab=2,
        n_ctx=2,
        act_fn=act_fn,
        normalization_type=normalization_type,
        attn_only=attn_only,
        eps=1e-5,
        gated_mlp=gated,
        seed=0,
        dtype=torch.float64,
    )
    if HAS_HOOKED:
        cfg["use_attn_scale"] = False  # the TL-native Bridge always divides by sqrt(d_head): see Q_SCALE
    model = config_model(**cfg)
    model.eval()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    return model


#: What the hand models' attention divides the scores by: 1 (use_attn_scale=False) on a HookedTransformer,
#: sqrt(d_head) on the TL-native Bridge (it has no unscaled attention). W_Q carries it, so the scores are the same.
Q_SCALE = 1.0 if HAS_HOOKED else math.sqrt(2)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _set_attention(model: Any, *, skewed: bool, tok1_embed: float) -> None:
    """Embeddings e(0) = [1, 0], e(1) = [0, tok1_embed], no positional embedding.

    skewed: q(pos 1) = [1, 0], k(pos 0) = [0, 0], k(pos 1) = [ln 3, 0] (with tok1_embed == 2), so
    the scores of query 1 are (0, ln 3) and its pattern is (1/4, 3/4). Otherwise W_Q = W_K = 0 and
    the pattern of query 1 is exactly (1/2, 1/2). Query 0 sees only key 0 (causal mask).
    W_V = W_O = I, b_V = [0.2, 0] (skewed) or 0, b_O = [0, 0.5].
    """
    with torch.no_grad():
        model.embed.W_E.copy_(_t([[1.0, 0.0], [0.0, tok1_embed]]))
        attn = model.blocks[0].attn
        if skewed:
            attn.W_Q[0].copy_(_t([[0.0, 0.0], [0.5, 0.0]]) * Q_SCALE)
            attn.W_K[0].copy_(_t([[0.0, 0.0], [LN3 / 2, 0.0]]))
            attn.b_V[0].copy_(_t([0.2, 0.0]))
        attn.W_V[0].copy_(torch.eye(2, dtype=torch.float64))
        attn.W_O[0].copy_(torch.eye(2, dtype=torch.float64))
        attn.b_O.copy_(_t([0.0, 0.5]))
        model.unembed.W_U.copy_(torch.eye(2, dtype=torch.float64))


def _softmax(values: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def _attrs(model, rule, temperature, token, pos):
    logits, dc = depass_tl.run_with_depass(model, TOKENS, mlp_rule=rule, temperature=temperature)
    assert tuple(dc.labels) == ("tok0", "tok1", "bias")
    attrs = dc.logit_attrs(token, pos=pos)  # [component, batch]
    assert attrs.shape == (3, 1)
    assert not torch.isnan(attrs).any()
    for hook in dc.keys():
        assert not torch.isnan(dc[hook]).any(), hook
    return logits, dc, attrs[:, 0].tolist()


# ---------------------------------------------------------------------------------------------
# Model K (attention + standard ReLU MLP)
#
# Attention (skewed, tok1_embed = 2): resid_pre: pos0 = tok0 [1, 0]; pos1 = tok1 [0, 2].
#   Bias value b_V = [0.2, 0] at every key; rows of the pattern sum to 1, so the bias z is
#   [0.2, 0] at each query, and bias attn_out = [0.2, 0] + b_O = [0.2, 0.5].
#   pos0: pattern (1): tok0 attn_out = [1, 0].
#   pos1: pattern (1/4, 3/4): tok0 attn_out = 1/4 [1, 0] = [0.25, 0]; tok1 = 3/4 [0, 2] = [0, 1.5].
# resid_mid:
#   pos0: tok0 [2, 0], tok1 [0, 0], bias [0.2, 0.5]
#   pos1: tok0 [0.25, 0], tok1 [0, 3.5], bias [0.2, 0.5]       (total [0.45, 4.0])
# MLP (relu), W_in columns / b_in:
#   n0: [1, 0.1], b_in -0.15 -> gammas pos1: tok0 0.25, tok1 0.35, bias 0.2 + 0.05 - 0.15 = 0.1;
#       pre = post = 0.7.  pos0: tok0 2, tok1 0 (exact: inactive), bias 0.1; pre = post = 2.1.
#   n1: [-1, -1], b_in 0 -> pre < 0 at both positions, post 0: contributes 0 under every rule.
#   n2: [0, 0],  b_in 0 -> every gamma exactly 0 (nothing active), pre = post = 0.
#   W_out rows: n0 -> [0, 1], n1 -> [5, 5], n2 -> [7, 7]; b_out = [0, 0.25].
# Unembed: W_U = I, b_U = [0, 0.125].
# Logit 1 at pos1 = resid_post[1, dim 1] = 3.5 + 0.5 + 0.7 + 0.25 + 0.125 = 5.075:
#   tok0: a0 * 0.7;  tok1: 3.5 + a1 * 0.7;  bias: 0.5 + ab * 0.7 + 0.25 + 0.125
#   with (a0, a1, ab) the split of neuron n0 at pos1 over gammas (0.25, 0.35, 0.1):
#   softmax T: exp(g / T) normalised; ratio: post/pre = 1 -> post_c = gamma_c; max: tok1.
# Logit 0 at pos1 = 0.45: tok0 0.25, tok1 0, bias 0.2 (MLP writes nothing to dim 0).
# Logit 1 at pos0 = 0.5 + 2.1 + 0.375 = 2.975: tok1 0; tok0 a0' * 2.1; bias 0.875 + ab' * 2.1,
#   split of n0 at pos0 over the active set {tok0: 2, bias: 0.1} (tok1 is exactly 0 there).
# ---------------------------------------------------------------------------------------------


def _model_k() -> Any:
    model = _hand_model()
    _set_attention(model, skewed=True, tok1_embed=2.0)
    mlp = model.blocks[0].mlp
    with torch.no_grad():
        mlp.W_in.copy_(_t([[1.0, -1.0, 0.0], [0.1, -1.0, 0.0]]))
        mlp.b_in.copy_(_t([-0.15, 0.0, 0.0]))
        mlp.W_out.copy_(_t([[0.0, 1.0], [5.0, 5.0], [7.0, 7.0]]))
        mlp.b_out.copy_(_t([0.0, 0.25]))
        model.unembed.b_U.copy_(_t([0.0, 0.125]))
    return model


def _expected_k(rule: str, temperature: float) -> dict[tuple[int, int], list[float]]:
    if rule == "softmax":
        a1 = _softmax([0.25, 0.35, 0.1], temperature)
        a0_tok0, a0_bias = _softmax([2.0, 0.1], temperature)
        a0 = [a0_tok0, 0.0, a0_bias]
    elif rule in ("ratio", "taylor"):  # a non-gated MLP: taylor is ratio
        a1 = [0.25 / 0.7, 0.35 / 0.7, 0.1 / 0.7]
        a0 = [2.0 / 2.1, 0.0, 0.1 / 2.1]
    else:
        a1 = [0.0, 1.0, 0.0]
        a0 = [1.0, 0.0, 0.0]
    return {
        # (token, pos): [tok0, tok1, bias]
        (1, 1): [a1[0] * 0.7, 3.5 + a1[1] * 0.7, 0.875 + a1[2] * 0.7],
        (0, 1): [0.25, 0.0, 0.2],
        (1, 0): [a0[0] * 2.1, 0.0, 0.875 + a0[2] * 2.1],
        (0, 0): [2.0, 0.0, 0.2],
    }


def test_model_k_clean_forward_is_as_derived() -> None:
    """The hand derivation of the clean forward itself (guards the derivation, not the engine)."""
    model = _model_k()
    _, cache = model.run_with_cache(TOKENS)
    torch.testing.assert_close(
        cache["blocks.0.attn.hook_pattern"][0, 0],
        _t([[1.0, 0.0], [0.25, 0.75]]),
        atol=1e-15,
        rtol=0,
    )
    torch.testing.assert_close(
        cache["blocks.0.mlp.hook_pre"][0],
        _t([[2.1, -2.7, 0.0], [0.7, -4.45, 0.0]]),
        atol=1e-14,
        rtol=0,
    )
    torch.testing.assert_close(
        model(TOKENS)[0], _t([[2.2, 2.975], [0.45, 5.075]]), atol=1e-14, rtol=0
    )


@pytest.mark.parametrize(
    ("rule", "temperature"),
    [("softmax", 0.1), ("softmax", 1.0), ("ratio", 0.1), ("max", 0.1), ("taylor", 0.1)],
)
def test_model_k_logit_attribution(rule: str, temperature: float) -> None:
    model = _model_k()
    expected = _expected_k(rule, temperature)
    for (token, pos), want in expected.items():
        _, _, got = _attrs(model, rule, temperature, token, pos)
        assert got == pytest.approx(want, abs=ATOL), (rule, token, pos)


def test_model_k_resid_mid_and_attn_out() -> None:
    """Per-component attention output and resid_mid, as derived above (rule-independent)."""
    _, dc = depass_tl.run_with_depass(_model_k(), TOKENS, mlp_rule="softmax")
    attn_out = _t(
        [
            [[1.0, 0.0], [0.25, 0.0]],  # tok0 at pos0, pos1
            [[0.0, 0.0], [0.0, 1.5]],  # tok1
            [[0.2, 0.5], [0.2, 0.5]],  # bias
        ]
    )
    resid_mid = _t(
        [
            [[2.0, 0.0], [0.25, 0.0]],
            [[0.0, 0.0], [0.0, 3.5]],
            [[0.2, 0.5], [0.2, 0.5]],
        ]
    )
    torch.testing.assert_close(dc["blocks.0.hook_attn_out"][:, 0], attn_out, atol=ATOL, rtol=0)
    torch.testing.assert_close(dc["blocks.0.hook_resid_mid"][:, 0], resid_mid, atol=ATOL, rtol=0)


@pytest.mark.parametrize("rule", RULES)
def test_model_k_dead_and_inactive_neurons_contribute_nothing(rule: str) -> None:
    """n1 (post 0) and n2 (pre 0, no active component) write nothing: only n0 -> dim 1.

    So every component's MLP output is (0, x): its dim-0 entry is exactly 0 (n1 and n2 would write
    5 or 7 times their share to dim 0), and the MLP outputs sum to [0, post_n0 + b_out].
    """
    _, dc = depass_tl.run_with_depass(_model_k(), TOKENS, mlp_rule=rule)
    mlp_out = dc["blocks.0.hook_mlp_out"][:, 0]  # [component, pos, d_model]
    assert torch.all(mlp_out[:, :, 0].abs() <= ATOL)
    torch.testing.assert_close(
        mlp_out.sum(0), _t([[0.0, 2.1 + 0.25], [0.0, 0.7 + 0.25]]), atol=ATOL, rtol=0
    )


# ---------------------------------------------------------------------------------------------
# Model T (ties): uniform attention (W_Q = W_K = 0), e(1) = [0, 1], b_V = 0, b_O = [0, 0.5].
#   pos1 pattern (1/2, 1/2): tok0 attn_out [0.5, 0]; tok1 attn_out [0, 0.5]; bias [0, 0.5].
#   resid_mid pos1: tok0 [0.5, 0], tok1 [0, 1.5], bias [0, 0.5]; pos0: tok0 [2, 0], bias [0, 0.5].
# MLP: one relu neuron, W_in = [3, 1], b_in = 0: gammas pos1 = (1.5, 1.5, 0.5) -- an exact tie;
#   pre = post = 3.5. W_out = [0, 1], b_out = 0, W_U = I, b_U = 0.
# Logit 1 at pos1 = 1.5 + 0.5 + 3.5 = 5.5:
#   max: tie -> the lowest index, tok0, takes all 3.5: (3.5, 1.5, 0.5)
#   softmax T: weights exp(15), exp(15), exp(5) (T = 0.1): (a * 3.5, 1.5 + a * 3.5, 0.5 + b * 3.5)
#   ratio, taylor (not gated: the same rule): post_c = gamma_c: (1.5, 3.0, 1.0)
# ---------------------------------------------------------------------------------------------


def _model_t() -> Any:
    model = _hand_model(d_mlp=1)
    _set_attention(model, skewed=False, tok1_embed=1.0)
    mlp = model.blocks[0].mlp
    with torch.no_grad():
        mlp.W_in.copy_(_t([[3.0], [1.0]]))
        mlp.W_out.copy_(_t([[0.0, 1.0]]))
    return model


@pytest.mark.parametrize("rule", ["softmax", "ratio", "max", "taylor"])
def test_model_t_ties(rule: str) -> None:
    model = _model_t()
    torch.testing.assert_close(model(TOKENS)[0, 1, 1], torch.tensor(5.5, dtype=torch.float64))
    if rule == "max":
        want = [3.5, 1.5, 0.5]
    elif rule in ("ratio", "taylor"):
        want = [1.5, 3.0, 1.0]
    else:
        a, a_same, b = _softmax([1.5, 1.5, 0.5], 0.1)
        assert a == a_same
        want = [a * 3.5, 1.5 + a * 3.5, 0.5 + b * 3.5]
    _, _, got = _attrs(model, rule, 0.1, 1, 1)
    assert got == pytest.approx(want, abs=ATOL)


# Large pre-activations: the same model with W_in = [300, 100]: gammas pos1 = (150, 150, 50), so
#   gamma / T = (1500, 1500, 500) at T = 0.1 (exp overflows float64 unless the maximum is taken out
#   first). post = 350. softmax: a = 1 / (2 + exp(-1000)) = 1/2 to float precision, bias weight
#   exp(-1000) = 0 in float64: (175, 1.5 + 175, 0.5). Logit 1 at pos1 = 352.
def test_model_t_softmax_is_stable_for_large_preactivations() -> None:
    model = _model_t()
    with torch.no_grad():
        model.blocks[0].mlp.W_in.copy_(_t([[300.0], [100.0]]))
    torch.testing.assert_close(model(TOKENS)[0, 1, 1], torch.tensor(352.0, dtype=torch.float64))
    _, _, got = _attrs(model, "softmax", 0.1, 1, 1)
    assert got == pytest.approx([175.0, 176.5, 0.5], abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Model G (gated MLP, relu gate), attention and resid_mid as in model K (bias [0.2, 0.5]).
#   W_gate = [4, 0]: gate contributions pos1: tok0 1.0, tok1 0 * 4 + 3.5 * 0 = 0 (exact, so tok1
#   is NOT active for softmax / max), bias 0.8; gate = 1.8, relu(gate) = 1.8.
#   W_in = [0, 2]: linear contributions pos1: tok0 0, tok1 7, bias 1.0; pre_linear = 8.
#   b_in = 0.3 (added after gating): post = 1.8 * 8 + 0.3 = 14.7.
#   W_out = [0, 1], b_out = 0, b_U = 0.
# Logit 1 at pos1 = 0 + 3.5 + 0.5 + 14.7 = 18.7 (resid_mid dim 1: tok0 0, tok1 3.5, bias 0.5):
#   ratio:   post_c = 1.8 * lin_c (+ b_in): tok0 0, tok1 3.5 + 12.6, bias 0.5 + 1.8 + 0.3
#   softmax: post - b_in = 14.4 over {tok0: 1.0, bias: 0.8}; b_in to bias:
#            tok0 a * 14.4, tok1 3.5, bias 0.5 + 0.3 + b * 14.4
#   max:     tok0 14.4, tok1 3.5, bias 0.8
#   taylor:  post_c = relu(1.8) / 1.8 * 8 * gate_c = 8 * gate_c (+ b_in): tok0 8, tok1 3.5,
#            bias 0.5 + 6.4 + 0.3 = 7.2
# pos0: resid_mid tok0 [2, 0], bias [0.2, 0.5]: gate contributions tok0 8, bias 0.8 -> gate 8.8;
#   lin tok0 0, bias 1.0 -> post = 8.8 + 0.3 = 9.1; logit 1 at pos0 = 0.5 + 9.1 = 9.6:
#   ratio: tok0 0, bias 9.6;  softmax: tok0 a' * 8.8, bias 0.8 + b' * 8.8 over (8, 0.8);
#   max: tok0 8.8, bias 0.8;  taylor: slope relu(8.8) / 8.8 * 1.0 = 1: tok0 8, bias 0.5 + 0.8 + 0.3 = 1.6.
# ---------------------------------------------------------------------------------------------


#: Why model G's known answers cannot be checked on TL 4.
NO_GATED_BIAS = (f"impossible on TransformerLens {TL_VERSION}: the TL-native Bridge's gated MLP has no biases, "
                 "and model G's known answer needs b_in")


def _model_g(*, need_b_in: bool = True) -> Any:
    """Model G; without ``need_b_in`` a Bridge's bias-free gated MLP is kept (for checks that need no b_in)."""
    model = _hand_model(gated=True, d_mlp=1)
    _set_attention(model, skewed=True, tok1_embed=2.0)
    mlp = model.blocks[0].mlp
    if mlp.b_in is None and need_b_in:
        pytest.skip(NO_GATED_BIAS)
    with torch.no_grad():
        mlp.W_gate.copy_(_t([[4.0], [0.0]]))
        mlp.W_in.copy_(_t([[0.0], [2.0]]))
        if mlp.b_in is not None:
            mlp.b_in.copy_(_t([0.3]))
        mlp.W_out.copy_(_t([[0.0, 1.0]]))
    return model


@cases_unless_bridge("rule", ["softmax", "ratio", "max", "taylor"])  # TL 4: skipped once (NO_GATED_BIAS)
def test_model_g_gated(rule: str) -> None:
    model = _model_g()
    torch.testing.assert_close(model(TOKENS)[0, :, 1], _t([9.6, 18.7]), atol=1e-13, rtol=0)
    if rule == "ratio":
        want1 = [0.0, 3.5 + 12.6, 0.5 + 1.8 + 0.3]
        want0 = [0.0, 0.0, 9.6]
    elif rule == "softmax":
        a, b = _softmax([1.0, 0.8], 0.1)
        want1 = [a * 14.4, 3.5, 0.8 + b * 14.4]
        a0, b0 = _softmax([8.0, 0.8], 0.1)
        want0 = [a0 * 8.8, 0.0, 0.8 + b0 * 8.8]
    elif rule == "max":
        want1 = [14.4, 3.5, 0.8]
        want0 = [8.8, 0.0, 0.8]
    else:
        want1 = [8.0, 3.5, 7.2]
        want0 = [8.0, 0.0, 1.6]
    _, _, got1 = _attrs(model, rule, 0.1, 1, 1)
    _, _, got0 = _attrs(model, rule, 0.1, 1, 0)
    assert got1 == pytest.approx(want1, abs=ATOL)
    assert got0 == pytest.approx(want0, abs=ATOL)


# ---------------------------------------------------------------------------------------------
# Causality: component tok{p} is exactly 0 at every position < p, at every hook.
# ---------------------------------------------------------------------------------------------


def _random_model(kind: str) -> tuple[Any, torch.Tensor]:
    extra = {
        "gpt2": dict(act_fn="gelu_new", normalization_type="LN"),
        "llama": dict(
            act_fn="silu",
            normalization_type="RMS",
            gated_mlp=True,
            positional_embedding_type="rotary",
            rotary_dim=4,
            n_key_value_heads=2,
        ),
    }[kind]
    cfg = dict(
        n_layers=2,
        d_model=16,
        n_heads=4,
        d_head=4,
        d_mlp=32,
        d_vocab=20,
        n_ctx=8,
        dtype=torch.float64,
        seed=3,
        **extra,
    )
    model = config_model(**cfg)
    model.eval()
    randomise_norms_and_biases(model, seed=4)
    tokens = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(5))
    return model, tokens


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", ["gpt2", "llama", "hand_k", "hand_g"])
def test_engine_causality(kind: str, rule: str) -> None:
    if kind == "hand_k":
        model, tokens = _model_k(), TOKENS
    elif kind == "hand_g":
        model, tokens = _model_g(need_b_in=False), TOKENS
    else:
        model, tokens = _random_model(kind)
    _, dc = depass_tl.run_with_depass(model, tokens, mlp_rule=rule)
    n_pos = tokens.shape[1]
    assert len(dc.keys()) > 0
    for hook in dc.keys():
        comps = dc[hook]
        for p in range(1, n_pos):
            assert torch.all(comps[p, :, :p] == 0), (hook, p)
        # each token is present at its own position in the residual stream
        if "resid" in hook:
            for p in range(n_pos):
                assert comps[p, :, p].abs().max() > 0, (hook, p)
    attrs = [dc.logit_attrs(int(tokens[0, 0]), pos=q) for q in range(n_pos)]
    for q in range(n_pos):
        assert torch.all(attrs[q][q + 1 : n_pos] == 0)


@pytest.mark.parametrize("rule", ["softmax", "ratio", "max", "taylor"])
def test_reference_agrees_with_hand_derivation(rule: str) -> None:
    """The loop reference (tests/reference.py) reproduces the paper numbers of model K and G."""
    ref, labels = reference_depass(_model_k(), TOKENS, mlp_rule=rule, temperature=0.1)
    assert labels == ["tok0", "tok1", "bias"]
    for (token, pos), want in _expected_k(rule, 0.1).items():
        got = ref["logits"][:, 0, pos, token].tolist()
        assert got == pytest.approx(want, abs=ATOL), (token, pos)
    model_g = _model_g(need_b_in=False)
    if model_g.blocks[0].mlp.b_in is None:  # TL 4 (model K above is checked there too)
        pytest.skip(NO_GATED_BIAS)
    ref_g, _ = reference_depass(model_g, TOKENS, mlp_rule=rule, temperature=0.1)
    total = ref_g["logits"][:, 0, 1, 1].sum().item()
    assert total == pytest.approx(18.7, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Final norm with frozen scale (attention-only model; W_Q = W_K = W_V = 0, b_V = 0, so attention
#   writes only b_O = [0, 0.5] into the bias component). ln_final w = [2, 3], b = [0.1, -0.1]
#   (LN) / w = [2, 3] (RMS); W_U = I, b_U = 0; eps = 1e-5.
# resid_post: pos0 tok0 [1, 0], bias [0, 0.5] (total [1, 0.5]);
#             pos1 tok1 [0, 2], bias [0, 0.5] (total [0, 2.5]); tok0 is 0 at pos1 (no value path).
# LN: s0 = sqrt(0.25^2 + eps) (centred total [0.25, -0.25]); s1 = sqrt(1.25^2 + eps).
#   logit 0 at pos0: tok0 2 * 0.5 / s0, tok1 0, bias 2 * (-0.25) / s0 + 0.1
#   logit 1 at pos1: tok0 0, tok1 3 * 1 / s1, bias 3 * 0.25 / s1 - 0.1
# RMS: s0 = sqrt((1 + 0.25) / 2 + eps), s1 = sqrt(6.25 / 2 + eps).
#   logit 0 at pos0: tok0 2 / s0, tok1 0, bias 0
#   logit 1 at pos1: tok0 0, tok1 3 * 2 / s1, bias 3 * 0.5 / s1
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["LN", "RMS"])
def test_final_norm_frozen_scale(norm: str) -> None:
    model = _hand_model(normalization_type=norm, attn_only=True)
    _set_attention(model, skewed=False, tok1_embed=2.0)
    with torch.no_grad():
        model.blocks[0].attn.W_V[0].zero_()
        model.ln_final.w.copy_(_t([2.0, 3.0]))
        if norm == "LN":
            model.ln_final.b.copy_(_t([0.1, -0.1]))
    eps = 1e-5
    if norm == "LN":
        s0, s1 = math.sqrt(0.25**2 + eps), math.sqrt(1.25**2 + eps)
        want00 = [2 * 0.5 / s0, 0.0, 2 * -0.25 / s0 + 0.1]
        want11 = [0.0, 3 * 1.0 / s1, 3 * 0.25 / s1 - 0.1]
    else:
        s0, s1 = math.sqrt(1.25 / 2 + eps), math.sqrt(6.25 / 2 + eps)
        want00 = [2 / s0, 0.0, 0.0]
        want11 = [0.0, 3 * 2 / s1, 3 * 0.5 / s1]
    logits = model(TOKENS)[0]
    exact = norm_tol(model, 1e-13)  # the TL-native Bridge's RMS norm computes its scale in float32
    assert logits[0, 0].item() == pytest.approx(sum(want00), abs=exact)
    assert logits[1, 1].item() == pytest.approx(sum(want11), abs=exact)
    for rule in RULES:
        _, _, got00 = _attrs(model, rule, 0.1, 0, 0)
        _, _, got11 = _attrs(model, rule, 0.1, 1, 1)
        assert got00 == pytest.approx(want00, abs=norm_tol(model, ATOL)), rule
        assert got11 == pytest.approx(want11, abs=ATOL), rule
