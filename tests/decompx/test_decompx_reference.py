"""The DecompX policies against an independent, loop-style oracle of the official recurrence.

The oracle below is written from the published recurrence (paper Eq. 5-14 and the official code's
semantics as summarised in /work/shared/reference/decompx.md §1.4-1.5): it works on the HF model's
own weights (HF ``[out, in]`` layout), takes the attention probabilities and pre-LN / pre-activation
states from the HF forward pass, keeps the official ``[batch, i, k, d]`` layout, projects every head
into d_model before mixing, and uses the official ``+1e-12`` guards. It shares no code with
``depass_tl.decompx``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from depass_tl.decompx import run_decompx


def _bias_decomp(V: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """Official bias_decomposer: weights over axis -2 (the token axis k). ``b`` is a bias ``[D]``, or a
    per-row offset with a singleton k axis (``[B, i, 1, D]``, the LA paths)."""
    if mode == "absdot":
        w = (V * b).sum(-1).abs()
    elif mode == "norm":
        w = V.norm(dim=-1)
    elif mode == "equal":
        w = (V.norm(dim=-1) != 0).to(V.dtype)
    else:
        raise ValueError(mode)
    w = w / (w.sum(-1, keepdim=True) + 1e-12)
    return V + w.unsqueeze(-1) * b


def _gelu_tangent(zeta: torch.Tensor, post: torch.Tensor, X: torch.Tensor, mode: str) -> torch.Tensor:
    """Official GeLU_LA: slope Φ(ζ) + ζ φ(ζ), offset GELU(ζ) − slope ζ split with the bias weights of m·X."""
    m = 0.5 * (1 + torch.erf(zeta / math.sqrt(2))) + zeta * torch.exp(-zeta**2 / 2) / math.sqrt(2 * math.pi)
    return _bias_decomp(X * m.unsqueeze(2), (post - m * zeta).unsqueeze(2), mode)


def _oracle(hf, tokens, token_type_ids, attention_mask, mode, ffn_approx="zo", tanh_approx="zo", include_ffn=True):
    """Returns per layer (R after bias, X^{l+1}) in [batch, i, k, d], and the classifier [batch, k, C].

    ``ffn_approx`` / ``tanh_approx`` / ``include_ffn``: the official ``FFN_approx_type`` (GeLU_ZO,
    GeLU_LA, ReLU), ``tanh_approx_type`` (ZO, LA) and ``include_FFN``."""
    bert = hf.bert
    grabbed: dict[str, torch.Tensor] = {}
    handles = []

    def grab_input(name):
        def fn(module, args):
            grabbed[name] = args[0].detach()

        return fn

    def grab_output(name):
        def fn(module, args, out):
            grabbed[name] = out.detach()

        return fn

    for l, layer in enumerate(bert.encoder.layer):
        handles.append(layer.attention.output.LayerNorm.register_forward_pre_hook(grab_input(f"pre_ln1.{l}")))
        handles.append(layer.output.LayerNorm.register_forward_pre_hook(grab_input(f"pre_ln2.{l}")))
        handles.append(layer.intermediate.dense.register_forward_hook(grab_output(f"zeta.{l}")))
    handles.append(bert.pooler.dense.register_forward_hook(grab_output("pool_pre")))
    try:
        with torch.no_grad():
            out = hf(
                input_ids=tokens,
                token_type_ids=token_type_ids,
                attention_mask=attention_mask,
                output_attentions=True,
                output_hidden_states=True,
            )
    finally:
        for h in handles:
            h.remove()

    n_heads = hf.config.num_attention_heads
    e = out.hidden_states[0]
    B, N, d = e.shape
    dh = d // n_heads
    X = None
    layers = []
    for l, layer in enumerate(bert.encoder.layer):
        A = out.attentions[l]  # [B, H, i, k]
        Wv, bv = layer.attention.self.value.weight, layer.attention.self.value.bias
        Wo, bo = layer.attention.output.dense.weight, layer.attention.output.dense.bias
        if X is None:
            x = e
            value = (x @ Wv.T + bv).view(B, N, n_heads, dh)  # b_V rides with token k
            tr = torch.stack(
                [value[:, :, h] @ Wo[:, h * dh : (h + 1) * dh].T for h in range(n_heads)], dim=1
            )  # [B, H, k, d]
            Z = torch.einsum("bhik,bhkd->bikd", A, tr)
            R = Z + torch.diag_embed(x.transpose(1, 2)).permute(0, 2, 3, 1)  # δ_ik x_i
            b_att = bo
        else:
            value = (X @ Wv.T).view(B, N, N, n_heads, dh)  # [B, j, k, H, dh]
            tr = torch.stack(
                [value[:, :, :, h] @ Wo[:, h * dh : (h + 1) * dh].T for h in range(n_heads)], dim=1
            )  # [B, H, j, k, d]
            Z = torch.einsum("bhij,bhjkd->bikd", A, tr)
            R = Z + X
            b_att = Wo @ bv + bo
        R = _bias_decomp(R, b_att, mode)
        z1 = grabbed[f"pre_ln1.{l}"]
        s1 = ((z1 - z1.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True).add(hf.config.layer_norm_eps).sqrt()
        ln1 = layer.attention.output.LayerNorm
        L1 = (R - R.mean(-1, keepdim=True)) / s1.unsqueeze(2) * ln1.weight
        L1 = _bias_decomp(L1, ln1.bias, mode)
        U = _bias_decomp(L1 @ layer.intermediate.dense.weight.T, layer.intermediate.dense.bias, mode)
        zeta = grabbed[f"zeta.{l}"]
        if ffn_approx == "zo":
            act = U * (F.gelu(zeta) / (zeta + 1e-12)).unsqueeze(2)
        elif ffn_approx == "relu":
            act = U * (zeta > 0).unsqueeze(2)
        else:
            act = _gelu_tangent(zeta, F.gelu(zeta), U, mode)
        Fm = _bias_decomp(act @ layer.output.dense.weight.T, layer.output.dense.bias, mode)
        S = L1 + Fm if include_ffn else L1
        z2 = grabbed[f"pre_ln2.{l}"]
        s2 = ((z2 - z2.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True).add(hf.config.layer_norm_eps).sqrt()
        ln2 = layer.output.LayerNorm
        X = _bias_decomp((S - S.mean(-1, keepdim=True)) / s2.unsqueeze(2) * ln2.weight, ln2.bias, mode)
        layers.append((R, X))
    p = grabbed["pool_pre"]
    P = _bias_decomp(X[:, 0] @ bert.pooler.dense.weight.T, bert.pooler.dense.bias, mode)
    if tanh_approx == "zo":
        P = P * (torch.tanh(p) / (p + 1e-12)).unsqueeze(1)
    else:  # official tanh LA: slope 1 − tanh², offset split like a bias over the tokens
        m = 1 - torch.tanh(p) ** 2
        P = _bias_decomp(P * m.unsqueeze(1), (torch.tanh(p) - m * p).unsqueeze(1), mode)
    Y = _bias_decomp(P @ hf.classifier.weight.T, hf.classifier.bias, mode)
    return layers, P, Y, out.logits


@pytest.mark.parametrize("mode", ["absdot", "norm", "equal"])
def test_matches_official_recurrence(clf64, mode):
    clf = clf64
    layers, P, Y, logits = _oracle(clf.hf, clf.tokens, clf.token_type_ids, clf.attention_mask, mode)
    assert (Y.sum(1) - logits).abs().max() < 1e-9  # the oracle itself is complete
    _, result = run_decompx(
        clf.encoder,
        clf.tokens,
        head=clf.head,
        token_type_ids=clf.token_type_ids,
        attention_mask=clf.attention_mask,
        bias_policy=mode,
    )
    real = clf.attention_mask.bool()  # compare real query rows; pad rows are not used downstream
    for l, (R, X) in enumerate(layers):
        ours_R = result[f"blocks.{l}.hook_resid_mid"].permute(1, 2, 0, 3)  # -> [batch, i, k, d]
        ours_X = result[f"blocks.{l}.hook_normalized_resid_post"].permute(1, 2, 0, 3)
        assert (ours_R - R)[real].abs().max() < 1e-8, l
        assert (ours_X - X)[real].abs().max() < 1e-8, l
    assert (result.pooler.permute(1, 0, 2) - P).abs().max() < 1e-8
    assert (result.class_logits.permute(1, 0, 2) - Y).abs().max() < 1e-8


VARIANTS = [
    ("gelu_la", "zo", True),
    ("relu", "zo", True),
    ("zo", "la", True),
    ("gelu_la", "la", True),
    ("zo", "zo", False),
]


@pytest.mark.parametrize("ffn_approx,tanh_approx,include_ffn", VARIANTS)
@pytest.mark.parametrize("mode", ["absdot", "norm"])
def test_ablation_variants_match_official_recurrence(clf64, mode, ffn_approx, tanh_approx, include_ffn):
    clf = clf64
    options = dict(ffn_approx=ffn_approx, tanh_approx=tanh_approx, include_ffn=include_ffn)
    layers, P, Y, logits = _oracle(clf.hf, clf.tokens, clf.token_type_ids, clf.attention_mask, mode, **options)
    complete = ffn_approx != "relu" and include_ffn
    assert ((Y.sum(1) - logits).abs().max() < 1e-9) == complete  # the oracle's own (in)completeness
    _, result = run_decompx(
        clf.encoder, clf.tokens, head=clf.head, token_type_ids=clf.token_type_ids,
        attention_mask=clf.attention_mask, bias_policy=mode, **options,
    )
    assert result.exact == complete and dict(result.options) == options
    real = clf.attention_mask.bool()
    for l, (R, X) in enumerate(layers):
        assert (result[f"blocks.{l}.hook_resid_mid"].permute(1, 2, 0, 3) - R)[real].abs().max() < 1e-8, l
        assert (result[f"blocks.{l}.hook_normalized_resid_post"].permute(1, 2, 0, 3) - X)[real].abs().max() < 1e-8, l
    assert (result.pooler.permute(1, 0, 2) - P).abs().max() < 1e-8
    assert (result.class_logits.permute(1, 0, 2) - Y).abs().max() < 1e-8
    # what the components miss is reported, not hidden
    assert torch.allclose(result.residual("logits"), logits - Y.sum(1), atol=1e-8)
    assert (result.completeness_error()["logits"] > 1e-3) == (not complete)


def test_first_layer_value_bias_rides_with_the_attended_token(hf64):
    """Moving b_V of layer 0 into b_O (same clean output) must change the DecompX split."""
    clf = hf64
    hf2 = copy.deepcopy(clf.hf)
    attn = hf2.bert.encoder.layer[0].attention
    with torch.no_grad():
        attn.output.dense.bias += attn.output.dense.weight @ attn.self.value.bias
        attn.self.value.bias.zero_()
    kw = dict(token_type_ids=clf.token_type_ids, attention_mask=clf.attention_mask)
    l1, r1 = run_decompx(clf.hf, clf.tokens, bias_policy="absdot", **kw)
    l2, r2 = run_decompx(hf2, clf.tokens, bias_policy="absdot", **kw)
    assert (l1 - l2).abs().max() < 1e-10  # same function
    assert (r1.class_logits - r2.class_logits).abs().max() > 1e-4  # different allocation
    # under the "bias" policy both go to the bias component: identical decompositions
    _, b1 = run_decompx(clf.hf, clf.tokens, bias_policy="bias", **kw)
    _, b2 = run_decompx(hf2, clf.tokens, bias_policy="bias", **kw)
    assert (b1.class_logits - b2.class_logits).abs().max() < 1e-10
