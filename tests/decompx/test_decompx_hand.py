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


def _phi(x: float) -> float:
    """Standard normal CDF: GELU(x) / x for the exact GELU."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.fixture(scope="module")
def hand_model():
    from transformer_lens import HookedEncoder, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        d_model=2, d_head=2, n_heads=1, d_mlp=1, n_layers=1, n_ctx=2, d_vocab=2, act_fn="gelu",
        attention_dir="bidirectional", eps=1e-12, dtype=torch.float64, device="cpu",
    )
    enc = HookedEncoder(cfg, move_to_device=False)
    sd = {k: torch.zeros_like(v) for k, v in enc.state_dict().items()}
    for k in ("embed.ln.w", "blocks.0.ln1.w", "blocks.0.ln2.w", "mlm_head.ln.w"):
        sd[k] = torch.ones(2, dtype=torch.float64)
    sd["embed.embed.W_E"] = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    sd["blocks.0.attn.W_V"] = torch.eye(2, dtype=torch.float64)[None]
    sd["blocks.0.attn.W_O"] = torch.eye(2, dtype=torch.float64)[None]
    sd["blocks.0.attn.b_V"] = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    sd["blocks.0.attn.b_O"] = torch.tensor([0.5, 0.0], dtype=torch.float64)
    sd["blocks.0.mlp.W_in"] = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    sd["blocks.0.mlp.W_out"] = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    enc.load_state_dict(sd)
    head = SequenceClassificationHead(
        W_pool=torch.eye(2, dtype=torch.float64),
        b_pool=torch.tensor([0.5, 0.0], dtype=torch.float64),
        W_cls=torch.eye(2, dtype=torch.float64),
        b_cls=torch.tensor([0.25, -0.5], dtype=torch.float64),
    )
    return enc.eval(), head


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
