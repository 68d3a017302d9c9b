"""A one-layer, d_model = 2 BERT with hand-set weights; expected numbers worked out on paper.

Model (float64, LN eps 1e-12, all weights not listed are 0, all LN weights 1):
  W_E = [[2, 0], [0, 2]], tokens [0, 1]   -> embedding LN gives e0 = (1, -1), e1 = (-1, 1)
  attention: W_Q = W_K = 0 (uniform pattern 1/2), W_V = W_O = I, b_V = (1/2, 0), b_O = (1/2, 0)
  MLP (d_mlp = 1): W_in = [[1], [0]], W_out = [[1, -1]], GELU
  head: W_pool = I, b_pool = (1/2, 0); W_cls = I, b_cls = (1/4, -1/2)
In d_model = 2 a LayerNorm maps a component (a, b) to ((a - b) / 2) / σ · (1, -1), where σ is the
frozen scale of the whole vector, so every step can be done by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from depass_tl.decompx import SequenceClassificationHead, run_decompx
from tests.decompx.conftest import BACKENDS, tl_encoder


def _phi(x: float) -> float:
    """Standard normal CDF: GELU(x) / x for the exact GELU."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _gelu_slope(x: float) -> float:
    """GELU'(x) = Φ(x) + x φ(x): the tangent line's slope (DecompX "GeLU_LA")."""
    return _phi(x) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _hand_hf():
    """The model as a transformers ``BertForSequenceClassification`` (HF ``Linear`` weights are [out, in])."""
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=2, hidden_size=2, num_hidden_layers=1, num_attention_heads=1, intermediate_size=1,
        max_position_embeddings=2, type_vocab_size=2, layer_norm_eps=1e-12, num_labels=2,
        attn_implementation="eager",
    )
    hf = transformers.BertForSequenceClassification(cfg).eval().double()
    eye = torch.eye(2, dtype=torch.float64)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.ones_like(p) if name.endswith("LayerNorm.weight") else torch.zeros_like(p))
        hf.bert.embeddings.word_embeddings.weight.copy_(2 * eye)
        layer = hf.bert.encoder.layer[0]
        layer.attention.self.value.weight.copy_(eye)
        layer.attention.self.value.bias.copy_(torch.tensor([0.5, 0.0]))
        layer.attention.output.dense.weight.copy_(eye)
        layer.attention.output.dense.bias.copy_(torch.tensor([0.5, 0.0]))
        layer.intermediate.dense.weight.copy_(torch.tensor([[1.0, 0.0]]))
        layer.output.dense.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        hf.bert.pooler.dense.weight.copy_(eye)
        hf.bert.pooler.dense.bias.copy_(torch.tensor([0.5, 0.0]))
        hf.classifier.weight.copy_(eye)
        hf.classifier.bias.copy_(torch.tensor([0.25, -0.5]))
    return hf


@pytest.fixture(scope="module", params=BACKENDS)
def hand_model(request):
    """``(model, head)`` through each backend: the transformers model, or it through the installed TL."""
    hf = _hand_hf()
    return tl_encoder(hf, request.param), SequenceClassificationHead.from_hf_state_dict(hf.state_dict())


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_bias_policy_by_hand(hand_model):
    enc, head = hand_model
    logits, r = run_decompx(enc, torch.tensor([[0, 1]]), head=head, bias_policy="bias")
    assert r.labels == ("tok0", "tok1", "bias")
    # attention: token k contributes A·e_k = e_k / 2 to every row; the bias component b_V W_O + b_O
    attn = r["blocks.0.hook_attn_out"][:, 0]  # [component, pos, d]
    assert torch.allclose(attn, _t([[[0.5, -0.5]] * 2, [[-0.5, 0.5]] * 2, [[1.0, 0.0]] * 2]), atol=1e-10)
    # LN1 (σ = 3/2 at pos 0, 1/2 at pos 1): u[pos] = (tok0, tok1, bias) multiples of (1, -1)
    u = _t([[1.0, -1 / 3, 1 / 3], [1.0, -3.0, 1.0]])  # [pos, component]
    # MLP: pre = (1, -1), ratio θ = Φ(pre); out_k = θ_i u_k (1, -1)
    theta = _t([_phi(1.0), _phi(-1.0)])
    mlp = r["blocks.0.hook_mlp_out"][:, 0]
    assert torch.allclose(mlp[..., 0], (theta[:, None] * u).T, atol=1e-10)
    assert torch.allclose(mlp[..., 1], -(theta[:, None] * u).T, atol=1e-10)
    # LN2 undoes the common factor (1 + θ_i): the block output is u_k (1, -1)
    out = r["blocks.0.hook_normalized_resid_post"][:, 0]
    assert torch.allclose(out[..., 0], u.T, atol=1e-10) and torch.allclose(out[..., 1], -u.T, atol=1e-10)
    # pooler pre-tanh p = (3/2, -1), slopes r = tanh(p)/p; classifier = identity + b_cls
    r0, r1 = math.tanh(1.5) / 1.5, math.tanh(1.0)
    want = _t([[[r0, -r1]], [[-r0 / 3, r1 / 3]], [[(1 / 3 + 0.5) * r0 + 0.25, -r1 / 3 - 0.5]]])
    assert torch.allclose(r.class_logits, want, atol=1e-10)
    assert torch.allclose(logits, _t([[math.tanh(1.5) + 0.25, math.tanh(-1.0) - 0.5]]), atol=1e-10)
    assert torch.allclose(r.explanation(1), _t([[-r1, r1 / 3]]), atol=1e-10)


def test_absdot_policy_by_hand(hand_model):
    enc, head = hand_model
    logits, r = run_decompx(enc, torch.tensor([[0, 1]]), head=head, bias_policy="absdot")
    assert r.labels == ("tok0", "tok1")
    # Layer 0: b_V rides with the attended token: token k adds (e_k + b_V)/2 to every row, and the
    # residual adds e_i to row i. Before b_O: pos0 (1.75, -1.5), (-0.25, 0.5); pos1 (0.75, -0.5),
    # (-1.25, 1.5). b_O = (1/2, 0) is split by |R_k · b_O|: pos0 (7/8, 1/8), pos1 (3/8, 5/8).
    R = _t([[[2.1875, -1.5], [0.9375, -0.5]], [[-0.1875, 0.5], [-0.9375, 1.5]]])  # [component, pos, d]
    assert torch.allclose(r["blocks.0.hook_resid_mid"][:, 0], R, atol=1e-10)
    e = _t([[[1.0, -1.0], [0.0, 0.0]], [[0.0, 0.0], [-1.0, 1.0]]])
    assert torch.allclose(r["blocks.0.hook_attn_out"][:, 0], R - e, atol=1e-10)
    # LN1: u = ((a - b)/2)/σ: pos0 (59/48, -11/48), pos1 (23/16, -39/16); the remaining biases are 0,
    # and as in the "bias" case the block output is u_k (1, -1).
    u = _t([[59 / 48, -11 / 48], [23 / 16, -39 / 16]])  # [pos, component]
    out = r["blocks.0.hook_normalized_resid_post"][:, 0]
    assert torch.allclose(out[..., 0], u.T, atol=1e-10) and torch.allclose(out[..., 1], -u.T, atol=1e-10)
    # Pooler: b_pool = (1/2, 0) split by |u_k / 2|: (59/70, 11/70); then the tanh slopes.
    r0, r1 = math.tanh(1.5) / 1.5, math.tanh(1.0)
    P = [(59 / 48 + 0.5 * 59 / 70, -59 / 48), (-11 / 48 + 0.5 * 11 / 70, 11 / 48)]
    Y = [(a * r0, b * r1) for a, b in P]
    assert torch.allclose(r.pooler[:, 0], _t([[a * r0, b * r1] for a, b in P]), atol=1e-10)
    # Classifier: b_cls = (1/4, -1/2) split by |Y_k · b_cls|.
    w = [abs(0.25 * a - 0.5 * b) for a, b in Y]
    share = [x / sum(w) for x in w]
    want = _t([[[a + s * 0.25, b - s * 0.5]] for (a, b), s in zip(Y, share)])
    assert torch.allclose(r.class_logits, want, atol=1e-10)
    assert torch.allclose(r.class_logits.sum(0), logits, atol=1e-10)


# --------------------------------------------------------------------------- the ablation variants
# Shared by hand (see test_bias_policy_by_hand): LN1 gives u_k (1, -1) per position with
# u = (tok0, tok1, bias) = (1, -1/3, 1/3) at pos 0 and (1, -3, 1) at pos 1, so the FFN's
# pre-activation is ζ = (1, -1) and each component's key is u_k. The clean layer output is
# s_i (1, -1) / σ2_i with s_i = ζ_i + GELU(ζ_i) and σ2_i = |s_i|; a component whose pre-LN#2 part is
# t_k (1, -1) ends at t_k / σ2_i (1, -1). The pooler's pre-tanh is p = (3/2, -1).
U = [[1.0, -1 / 3, 1 / 3], [1.0, -3.0, 1.0]]
ZETA = (1.0, -1.0)
SIGMA2 = (1 + _phi(1.0), 1 + _phi(-1.0))


def _layer_out(a):
    """Block outputs [component, pos, 2] from each component's FFN share a[pos][component]."""
    return _t([[[(U[i][k] + a[i][k]) / SIGMA2[i] * s for s in (1, -1)] for i in range(2)] for k in range(3)])


def test_gelu_tangent_line_and_tanh_tangent_line_by_hand(hand_model):
    enc, head = hand_model
    logits, r = run_decompx(enc, torch.tensor([[0, 1]]), head=head, bias_policy="bias",
                            ffn_approx="gelu_la", tanh_approx="la")
    assert r.exact
    # FFN share: slope m_i = GELU'(ζ_i) times the key, and the offset GELU(ζ_i) − m_i ζ_i to the bias
    m = [_gelu_slope(z) for z in ZETA]
    c = [z * _phi(z) - mi * z for z, mi in zip(ZETA, m)]
    a = [[m[i] * U[i][k] + (c[i] if k == 2 else 0.0) for k in range(3)] for i in range(2)]
    mlp = r["blocks.0.hook_mlp_out"][:, 0]
    assert torch.allclose(mlp, _t([[[a[i][k], -a[i][k]] for i in range(2)] for k in range(3)]), atol=1e-10)
    out = _layer_out(a)
    assert torch.allclose(r["blocks.0.hook_normalized_resid_post"][:, 0], out, atol=1e-10)
    # pooler: tanh's tangent at p: slope 1 − tanh²(p), offset tanh(p) − slope p to the bias
    p = (1.5, -1.0)
    mt = [1 - math.tanh(x) ** 2 for x in p]
    ct = [math.tanh(x) - s * x for x, s in zip(p, mt)]
    x = [float(out[k, 0, 0]) for k in range(3)]
    want = _t([[[x[0] * mt[0], -x[0] * mt[1]]], [[x[1] * mt[0], -x[1] * mt[1]]],
               [[(x[2] + 0.5) * mt[0] + ct[0] + 0.25, -x[2] * mt[1] + ct[1] - 0.5]]])
    assert torch.allclose(r.class_logits, want, atol=1e-10)
    assert torch.allclose(r.class_logits.sum(0), logits, atol=1e-12)


def test_relu_variant_reports_what_it_misses_by_hand(hand_model):
    enc, head = hand_model
    _, r = run_decompx(enc, torch.tensor([[0, 1]]), head=head, ffn_approx="relu")
    assert not r.exact and "exact=False" in repr(r)
    # slope 1[ζ > 0]: the whole key at pos 0, nothing at pos 1
    a = [[U[0][k] for k in range(3)], [0.0, 0.0, 0.0]]
    assert torch.allclose(r["blocks.0.hook_normalized_resid_post"][:, 0], _layer_out(a), atol=1e-10)
    # the residual is GELU(ζ) − ReLU(ζ) at the FFN and what LN#2 makes of it at the block output
    gelu = [z * _phi(z) for z in ZETA]
    miss_mlp = [gelu[0] - 1.0, gelu[1] - 0.0]
    assert torch.allclose(r.residual("blocks.0.hook_mlp_out")[0], _t([[d, -d] for d in miss_mlp]), atol=1e-10)
    miss_out = [1 - 2 / SIGMA2[0], -1 + 1 / SIGMA2[1]]
    assert torch.allclose(r.residual("blocks.0.hook_normalized_resid_post")[0], _t([[d, -d] for d in miss_out]),
                          atol=1e-10)
    errors = r.completeness_error()
    assert errors["blocks.0.hook_mlp_out"] == pytest.approx(max(abs(d) for d in miss_mlp), abs=1e-10)
    assert errors["blocks.0.hook_resid_mid"] < 1e-12  # before the FFN everything is exact


def test_without_the_ffn_by_hand(hand_model):
    enc, head = hand_model
    _, r = run_decompx(enc, torch.tensor([[0, 1]]), head=head, include_ffn=False)
    assert not r.exact
    assert torch.equal(r["blocks.0.hook_mlp_out"], torch.zeros_like(r["blocks.0.hook_mlp_out"]))
    # the whole FFN output is missing, and LN#2 keeps the real run's scale
    gelu = [z * _phi(z) for z in ZETA]
    assert torch.allclose(r.residual("blocks.0.hook_mlp_out")[0], _t([[g, -g] for g in gelu]), atol=1e-10)
    a = [[0.0] * 3, [0.0] * 3]
    assert torch.allclose(r["blocks.0.hook_normalized_resid_post"][:, 0], _layer_out(a), atol=1e-10)
    miss_out = [1 - 1 / SIGMA2[0], -1 + 1 / SIGMA2[1]]
    assert torch.allclose(r.residual("blocks.0.hook_normalized_resid_post")[0], _t([[d, -d] for d in miss_out]),
                          atol=1e-10)
