"""The illusion report on the distilled example (reference/illusion.md §2.3, §2.4, §5.6, §5.7).

Expected numbers are derived by hand in the reference note (numpy-verified there), not taken from
the code under test. Base x = 1, source x' = 2; y = (0, 2, 1)·h with h = (x, 0, x).
"""

from __future__ import annotations

import math

import pytest
import torch
import transformer_lens.patching as tlp

from depass_tl.errors import DePassError
from depass_tl.subspace_patching import illusion_report, subspace_flow
from tests.subspace_patching.toy import ANSWER, OTHER, SITE, build_toy, logit_diff, tokens

F64 = torch.float64
E = torch.eye(3, dtype=F64)
V_ILL = (E[0] + E[1]) / 2**0.5
LT = (ANSWER, OTHER)


def test_toy_realises_the_example() -> None:
    model = build_toy()
    logits, cache = model.run_with_cache(tokens(1, 2))
    h = cache[SITE][:, -1]
    assert torch.equal(h, torch.tensor([[1.0, 0.0, 1.0], [2.0, 0.0, 2.0]], dtype=F64))
    assert torch.equal(cache["blocks.0.mlp.hook_pre"][:, -1, 1], torch.tensor([-1.0, -2.0], dtype=F64))
    assert torch.equal(cache["blocks.0.hook_attn_out"], torch.zeros_like(cache["blocks.0.hook_attn_out"]))
    assert torch.equal(logit_diff(logits).detach(), torch.tensor([1.0, 2.0], dtype=F64))


def report(v, *, model=None, **kw):
    return illusion_report(model or build_toy(), tokens(1), tokens(2), SITE, v, logit_diff, **kw)


@pytest.mark.parametrize(
    ("v", "effect"), [(E[0], 0.0), (E[1], 0.0), (E[2], 1.0), (V_ILL, 1.0)], ids=["e1", "e2", "e3", "v_ill"]
)
def test_effects_of_the_table(v: torch.Tensor, effect: float) -> None:
    rep = report(v)
    assert rep.effect_v == pytest.approx(effect, abs=1e-12)
    assert rep.effect_full == pytest.approx(1.0, abs=1e-12)
    assert (rep.metric_base, rep.metric_source) == (pytest.approx(1.0), pytest.approx(2.0))


@pytest.mark.parametrize("theta", [0.1, math.pi / 8, math.pi / 4, 1.2])
def test_family_sin_two_theta(theta: float) -> None:
    v = math.cos(theta) * E[0] + math.sin(theta) * E[1]
    assert report(v).effect_v == pytest.approx(math.sin(2 * theta), abs=1e-12)


@pytest.mark.parametrize(
    ("v", "row", "null", "row_unnorm", "phi", "verdict", "phantom", "cancel"),
    [
        (V_ILL, 0.6325, 0.7746, 0.4, 0.6, "illusion_suspected", 1.0, 3.0),
        (E[2], 0.4472, 0.8944, 0.2, 0.8, "faithful", 0.0, 1.0),
    ],
    ids=["v_ill", "e3"],
)
def test_report_numbers_and_verdict(v, row, null, row_unnorm, phi, verdict, phantom, cancel) -> None:
    rep = report(v, logit_tokens=LT)
    assert rep.row_norm == pytest.approx(row, abs=1e-4)
    assert rep.null_norm == pytest.approx(null, abs=1e-4)
    assert rep.reader_rank == 1 and rep.rowspace_uninformative
    assert rep.effect_v == pytest.approx(1.0, abs=1e-12)
    assert rep.effect_row == pytest.approx(1.0, abs=1e-12)  # unit row part = ŵ
    assert rep.effect_null == pytest.approx(0.0, abs=1e-12)  # exactly 0 at an MLP site
    assert rep.effect_row_unnormalized == pytest.approx(row_unnorm, abs=1e-12)  # Wu et al.'s 40% / 20%
    assert rep.phi == pytest.approx(phi, abs=1e-12)
    assert rep.rho == pytest.approx(1.0) and rep.sigma == pytest.approx(0.0, abs=1e-12)
    assert rep.verdict == verdict
    flow = rep.flow
    assert flow is not None and flow.site_kind == "mlp_hidden" and flow.n_dormant_units == 1
    assert flow.phantom_fraction == pytest.approx(phantom, abs=1e-12)
    assert flow.cancellation_ratio == pytest.approx(cancel, abs=1e-12)
    # output-level credit is x for both directions (mean over x ∈ {1, 2}): it cannot separate them
    assert flow.subspace_credit == pytest.approx(1.5, abs=1e-12)
    assert flow.completeness_error < 1e-12


def test_flow_per_pathway_credits_of_v_ill() -> None:
    # credit per unit w_j (Ph)_j = (0, x, 0), complement (0, −x, x); summed |.| over x ∈ {1, 2}
    flow = subspace_flow(build_toy(), tokens(1, 2), SITE, V_ILL, logit_tokens=LT)
    assert (flow.subspace_dormant, flow.subspace_active) == (pytest.approx(3.0), pytest.approx(0.0, abs=1e-12))
    assert (flow.complement_dormant, flow.complement_active) == (pytest.approx(3.0), pytest.approx(3.0))


def test_dormancy_numbers_of_v_ill() -> None:
    rep = report(V_ILL)
    d = rep.dormancy["v"]
    # vᵀh = x/√2 on x ∈ {1, 2}: population variance 1/8; the patch moves it by 1/√2 = 2 std
    assert d.variance == pytest.approx(0.125, abs=1e-12)
    assert d.z_shift == pytest.approx(2.0, abs=1e-12)
    assert d.out_of_range == 0.0


def test_bypass_variant_is_flagged_by_the_patch_signature() -> None:
    model = build_toy((0.0, 2.0), bypass=True)  # y = x + 2 h2, h = (x, 0)
    v = torch.tensor([1.0, 1.0], dtype=F64) / 2**0.5
    rep = illusion_report(model, tokens(1), tokens(2), SITE, v, logit_diff)
    assert rep.effect_full == pytest.approx(0.0, abs=1e-12)
    assert rep.effect_v == pytest.approx(1.0, abs=1e-12)
    assert rep.effect_row == pytest.approx(0.0, abs=1e-12)
    assert rep.effect_null == pytest.approx(0.0, abs=1e-12)
    assert rep.rho == pytest.approx(0.0, abs=1e-12)
    assert rep.sigma == pytest.approx(1.0) and rep.epsilon == pytest.approx(1.0)
    assert rep.verdict == "illusion_suspected"
    assert any(r.startswith("patch signature") for r in rep.reasons)
    dormant_row = rep.dormancy["row"]  # v̂_row = e2, identically 0 on the data
    assert dormant_row.variance == 0.0 and dormant_row.z_shift == math.inf and dormant_row.out_of_range == 1.0
    # E(full) agrees with TransformerLens's own full-component patching of hook_mlp_out
    _, clean_cache = model.run_with_cache(tokens(2))
    tl = tlp.get_act_patch_mlp_out(model, tokens(1), clean_cache, lambda lg: logit_diff(lg).mean())
    assert float(tl[0, -1]) - rep.metric_base == pytest.approx(rep.effect_full, abs=1e-12)


def test_bypass_flow_check() -> None:
    model = build_toy((0.0, 2.0), bypass=True)
    v = torch.tensor([1.0, 1.0], dtype=F64) / 2**0.5
    flow = illusion_report(model, tokens(1), tokens(2), SITE, v, logit_diff, logit_tokens=LT).flow
    assert flow.phantom_fraction == pytest.approx(1.0)
    assert flow.cancellation_ratio == math.inf  # the MLP's actual credit is 0, its parts are not


def test_without_flow_the_bottleneck_toy_is_inconclusive() -> None:
    for v in (V_ILL, E[2]):
        rep = report(v)
        assert rep.flow is None and rep.verdict == "inconclusive"
        assert "rank(W) <= k" in rep.reasons[0]


def test_small_effect_is_inconclusive() -> None:
    assert report(E[0], logit_tokens=LT).verdict == "inconclusive"


def test_pyvene_parity_variant() -> None:
    # w = (0, −2, 1), v = (e1 − e2)/√2: patched y = 2.0, unnormalised row patch y = 1.4 (gap 0.6)
    rep = report((E[0] - E[1]) / 2**0.5, model=build_toy((0.0, -2.0, 1.0)))
    assert rep.effect_v == pytest.approx(1.0, abs=1e-12)
    assert rep.effect_row_unnormalized == pytest.approx(0.4, abs=1e-12)


def test_k_dimensional_report() -> None:
    rep = report(torch.stack([E[0], E[2]], dim=1), logit_tokens=LT)
    assert rep.k == 2 and rep.effect_row_unnormalized is None
    assert rep.row_norm == pytest.approx(10**-0.5, abs=1e-12)
    assert rep.effect_v == pytest.approx(1.0, abs=1e-12)
    assert rep.effect_null == pytest.approx(0.0, abs=1e-12)
    assert rep.verdict == "faithful"


def test_symmetric_pairs_and_residual_site() -> None:
    model = build_toy()
    reader = model.W_U[:, [ANSWER, OTHER]]  # the unembedding columns read the residual stream
    v = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=F64)  # residual axis 1 carries y
    rep = illusion_report(model, tokens(1, 2), tokens(2, 1), "blocks.0.hook_resid_post", v, logit_diff,
                          reader=reader, logit_tokens=LT)
    assert rep.effect_v == pytest.approx(1.0, abs=1e-12) and rep.effect_full == pytest.approx(1.0)
    assert rep.row_norm == pytest.approx(1.0) and rep.verdict == "faithful"
    assert rep.flow.site_kind == "residual" and rep.flow.phantom_fraction is None


def test_readable_outputs() -> None:
    rep = report(V_ILL, logit_tokens=LT)
    assert "verdict = illusion_suspected" in str(rep)
    df = rep.to_dataframe()
    row = df[(df.section == "geometry") & (df.name == "row_norm")]
    assert float(row.value.iloc[0]) == pytest.approx(0.6325, abs=1e-4)
    assert {"effect", "scalar", "dormancy[v]", "flow", "threshold"} <= set(df.section)


def test_no_hooks_left_and_model_unchanged() -> None:
    model = build_toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report(V_ILL, model=model, logit_tokens=LT)
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_inputs_raise() -> None:
    model = build_toy()
    with pytest.raises(DePassError, match="pass reader="):
        illusion_report(model, tokens(1), tokens(2), "blocks.0.hook_resid_post", torch.eye(4)[0], logit_diff)
    with pytest.raises(DePassError, match="same on base and source"):
        illusion_report(model, tokens(1), tokens(1), SITE, E[0], logit_diff)
    with pytest.raises(DePassError, match="same shape"):
        illusion_report(model, tokens(1), tokens(1, 2), SITE, E[0], logit_diff)
    with pytest.raises(DePassError, match="not a hook"):
        illusion_report(model, tokens(1), tokens(2), "blocks.0.mlp.hook_nope", E[0], logit_diff)
    with pytest.raises(DePassError, match="not orthonormal"):
        report(torch.ones(3, dtype=F64))
    with pytest.raises(DePassError, match="flow check supports"):
        subspace_flow(model, tokens(1, 2), "blocks.0.attn.hook_z", torch.ones(2) / 2**0.5, logit_tokens=LT)
    with pytest.raises(DePassError, match="at least two"):
        subspace_flow(model, tokens(1), SITE, E[0], logit_tokens=LT)


def test_random_model_invariants() -> None:
    # A seeded 2-layer LN/GELU model: the nullspace part of any direction at mlp.hook_post cannot
    # change the output (E(v̂_null) = 0), and E(full) equals TL's own hook_mlp_out patching.
    from tests.models import config_model

    model = config_model(n_layers=2, d_model=6, n_ctx=5, d_head=3, n_heads=2, d_mlp=10, d_vocab=12, act_fn="gelu",
                         dtype=F64, seed=3)
    base, source = torch.tensor([[1, 4, 2, 7], [3, 3, 9, 1]]), torch.tensor([[1, 8, 2, 5], [3, 6, 9, 0]])
    metric = lambda lg: lg[:, -1, 2] - lg[:, -1, 5]  # noqa: E731
    v = torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=F64)
    v = v / v.norm()
    rep = illusion_report(model, base, source, "blocks.0.mlp.hook_post", v, metric, logit_tokens=(2, 5))
    assert rep.reader_rank == 6 and rep.row_norm**2 + rep.null_norm**2 == pytest.approx(1.0)
    assert rep.effect_null == pytest.approx(0.0, abs=1e-9)
    _, clean_cache = model.run_with_cache(source)
    y_b, y_s = metric(model(base)).detach(), metric(model(source)).detach()
    # TL scores one scalar per run, so patch once per example metric and combine as documented
    y_p = torch.stack([
        tlp.get_act_patch_mlp_out(model, base, clean_cache, lambda lg, i=i: metric(lg)[i])[0, -1] for i in range(2)
    ]).to(F64)
    gap = y_s - y_b
    assert float(gap.abs().min()) > 1e-3  # the pairs differ
    # TL stores its results in a float32 tensor, hence 1e-6
    assert rep.effect_full == pytest.approx(float(((y_p - y_b) * gap).sum() / (gap**2).sum()), abs=1e-6)
    flow = rep.flow
    assert flow.completeness_error < 1e-9
    assert flow.subspace_credit + flow.complement_credit == pytest.approx(flow.actual_credit, abs=1e-12)


# --------------------------------------------------------------------- the readers span the whole space
def whole_space_model():
    """The issue-20 case, hand-set: a direction at ``blocks.1.hook_resid_post`` whose effect (0.4) is twice
    the whole-site patch (0.2), read by weights that span the whole residual space.

    3 layers, attention only, d_model 3, no norms. Layers 0 and 1 write nothing, so the site is the
    embedding: token 2 -> (0, 0, 2), token 3 -> (1, 1, 0), tokens 0 and 1 -> 0. Layer 2 attends uniformly
    (W_Q = W_K = 0) and adds h_0[2] + h_1[2] to axis 2 at the last position. W_U[:, ANSWER] =
    (1, -0.5, 1), W_U[:, 1] = e_1, W_U[:, 2] = e_2 (rank 3 = d), W_U[:, OTHER] = 0. So at the last
    position y = h_1[0] - 0.5 h_1[1] + 2 h_1[2] + h_0[2]: base [0, 1] gives 0, source [2, 3] gives
    1 - 0.5 + 2 = 2.5. Patching e_0 at the last position gives y = 1 (E = 0.4); patching the whole
    site there gives y = 0.5 (E = 0.2): the other 2.0 comes from position 0 through layer 2.
    """
    from tests.models import config_model

    model = config_model(n_layers=3, d_model=3, n_ctx=4, d_head=1, n_heads=1, d_vocab=4, attn_only=True,
                         normalization_type=None, act_fn=None, dtype=F64, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[2] = torch.tensor([0.0, 0.0, 2.0], dtype=F64)
        model.embed.W_E[3] = torch.tensor([1.0, 1.0, 0.0], dtype=F64)
        model.blocks[2].attn.W_V[0, 2, 0] = 1.0
        model.blocks[2].attn.W_O[0, 0, 2] = 2.0
        model.unembed.W_U[:, ANSWER] = torch.tensor([1.0, -0.5, 1.0], dtype=F64)
        model.unembed.W_U[1, 1] = 1.0
        model.unembed.W_U[2, 2] = 1.0
    return model.eval()


RESID = "blocks.1.hook_resid_post"


def whole_space_report(**kw):
    model = whole_space_model()
    return illusion_report(model, torch.tensor([[0, 1]]), torch.tensor([[2, 3]]), RESID, E[0], logit_diff,
                           reader=model.W_U, **kw)


def test_whole_space_case_numbers() -> None:
    rep = whole_space_report()
    assert (rep.metric_base, rep.metric_source) == (pytest.approx(0.0), pytest.approx(2.5))
    assert rep.effect_v == pytest.approx(0.4, abs=1e-12) and rep.effect_full == pytest.approx(0.2, abs=1e-12)
    assert rep.reader_rank == 3 and rep.null_norm < 1e-12 and rep.row_norm == pytest.approx(1.0)
    assert rep.rho == pytest.approx(1.0) and rep.sigma == pytest.approx(0.0, abs=1e-12)
    assert rep.epsilon == pytest.approx(0.2, abs=1e-12)


def test_whole_space_without_flow_is_inconclusive_not_faithful() -> None:
    rep = whole_space_report()
    assert rep.rowspace_uninformative and rep.verdict == "inconclusive"
    assert "the readers' row space is the whole space" in rep.reasons[0]
    assert "flow check was not run" in rep.reasons[0]
    assert any("exceeds the whole-site patch E(full) = 0.2" in r for r in rep.reasons)
    checks = dict(rep.checks)
    assert list(checks) == ["effect size", "rowspace test", "DePass flow check", "dormancy"]
    assert checks["rowspace test"].startswith("uninformative: rank(W) = d = 3")
    assert checks["DePass flow check"].startswith("not run")
    text = str(rep)
    assert "checks:" in text and "rowspace test: uninformative" in text and "DePass flow check: not run" in text


def test_whole_space_verdict_rests_on_the_flow_check() -> None:
    # residual site, one group: subspace credit (1, 0) and complement credit (-0.5, 0) over (source, base);
    # R = (1 + 0.5) / |1 - 0.5| = 3 >= 2: the direction's credit is partly cancelled by the rest of the site
    rep = whole_space_report(logit_tokens=LT)
    flow = rep.flow
    assert flow.subspace_active == pytest.approx(1.0) and flow.complement_active == pytest.approx(0.5)
    assert flow.cancellation_ratio == pytest.approx(3.0) and flow.phantom_fraction is None
    assert rep.verdict == "illusion_suspected"
    assert "the verdict rests only on the DePass flow check" in rep.reasons[0]
    assert any(r.startswith("flow signature: cancellation ratio R = 3") for r in rep.reasons)
    assert dict(rep.checks)["DePass flow check"].startswith("ran:")
    # a stricter cancellation threshold clears the flow check: the verdict then says it rests on it alone
    from depass_tl.subspace_patching import Thresholds

    cleared = whole_space_report(logit_tokens=LT, thresholds=Thresholds(cancellation_min=4.0))
    assert cleared.verdict == "faithful" and cleared.rowspace_uninformative
    assert "rests only on the DePass flow check" in cleared.reasons[0] and "no flow signature" in cleared.reasons[-1]


def test_direction_inside_the_row_space_is_uninformative() -> None:
    # a rank-2 reader of the 3-dim site (1 < 2 < 3) and e3 inside its row space: rho = 1 by construction
    reader = torch.stack([E[1], E[2]], 1)
    rep = illusion_report(build_toy(), tokens(1), tokens(2), SITE, E[2], logit_diff, reader=reader)
    assert rep.reader_rank == 2 and rep.null_norm < 1e-12 and rep.rowspace_uninformative
    assert "v lies in the row space of W" in rep.reasons[0] and rep.verdict == "inconclusive"
    # the same reader with k = 2: rank 2 <= k
    rep2 = illusion_report(build_toy(), tokens(1), tokens(2), SITE, reader, logit_diff, reader=reader)
    assert rep2.rowspace_uninformative and "rank(W) <= k (2 <= 2)" in rep2.reasons[0]


def test_informative_rowspace_test_says_it_ran() -> None:
    model = build_toy((0.0, 2.0), bypass=True)
    rep = illusion_report(model, tokens(1), tokens(2), SITE, torch.tensor([1.0, 1.0], dtype=F64) / 2**0.5, logit_diff)
    assert dict(rep.checks)["rowspace test"].endswith("patch signature met")


def test_flow_with_one_pair_of_logit_tokens_per_example() -> None:
    # Swapping answer and other for the second example (x = 2) negates its credits: the subspace's
    # per-example credits (0, x, 0)·w become (1, −2), so the mean is −0.5 instead of 1.5, while Φ and R,
    # built from absolute per-example credits, do not change.
    model = build_toy()
    same = subspace_flow(model, tokens(1, 2), SITE, V_ILL, logit_tokens=(torch.tensor([ANSWER] * 2), [OTHER] * 2))
    assert same == subspace_flow(model, tokens(1, 2), SITE, V_ILL, logit_tokens=LT)
    mixed = subspace_flow(model, tokens(1, 2), SITE, V_ILL,
                          logit_tokens=(torch.tensor([ANSWER, OTHER]), torch.tensor([OTHER, ANSWER])))
    assert mixed.subspace_credit == pytest.approx(-0.5, abs=1e-12)
    assert mixed.phantom_fraction == pytest.approx(1.0, abs=1e-12)
    assert mixed.cancellation_ratio == pytest.approx(3.0, abs=1e-12)
    assert mixed.completeness_error < 1e-12
    with pytest.raises(DePassError, match=r"one per prompt \(2\); got 3"):
        subspace_flow(model, tokens(1, 2), SITE, V_ILL, logit_tokens=([ANSWER] * 3, OTHER))


def test_per_example_logit_tokens_match_one_example_at_a_time() -> None:
    # On a random model at a residual site (no dormancy grouping, so examples do not interact), the flow
    # check with each example's own pair equals the one-example checks combined: sums of |credit| add
    # up and the mean credit is the mean of the single-example credits.
    from tests.models import config_model

    model = config_model(n_layers=2, d_model=6, n_ctx=5, d_head=3, n_heads=2, d_mlp=10, d_vocab=12, act_fn="gelu",
                         dtype=F64, seed=3)
    toks = torch.tensor([[1, 4, 2, 7], [3, 3, 9, 1], [5, 0, 2, 2]])
    answer, other = torch.tensor([2, 7, 11]), torch.tensor([5, 1, 0])
    v = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=F64)
    v = v / v.norm()
    site = "blocks.0.hook_resid_post"
    batch = subspace_flow(model, toks, site, v, logit_tokens=(answer, other))
    singles = [subspace_flow(model, toks[i : i + 1], site, v, logit_tokens=(int(answer[i]), int(other[i])))
               for i in range(3)]
    assert batch.subspace_active == pytest.approx(sum(s.subspace_active for s in singles), rel=1e-10)
    assert batch.complement_active == pytest.approx(sum(s.complement_active for s in singles), rel=1e-10)
    assert batch.subspace_credit == pytest.approx(sum(s.subspace_credit for s in singles) / 3, rel=1e-10)
    assert batch.completeness_error < 1e-10
    # the report passes each example's pair to both its base and its source run
    source = torch.tensor([[1, 8, 2, 5], [3, 6, 9, 0], [5, 1, 2, 3]])
    metric = lambda lg: lg[:, -1].gather(1, answer[:, None])[:, 0] - lg[:, -1].gather(1, other[:, None])[:, 0]  # noqa: E731
    rep = illusion_report(model, toks, source, site, v, metric, reader=model.W_U, logit_tokens=(answer, other))
    both = subspace_flow(model, torch.cat([toks, source]), site, v,
                         logit_tokens=(answer.repeat(2), other.repeat(2)))
    assert rep.flow == both


def test_logit_tokens_may_be_words_of_the_models_tokenizer() -> None:
    """As in logit_attrs: single-token strings are looked up with the model's tokenizer (the message said the
    model had none); the check then equals the one given the ids."""
    from depass_tl import toy

    model, _ = toy.load("ioi")
    toks = model.to_tokens(["When Mary and John went to the store, John gave a drink to",
                            "When Mary and John went to the store, Mary gave a drink to"])
    v = torch.zeros(model.cfg.d_model)
    v[0] = 1.0
    mary, john = (int(model.to_tokens(w, prepend_bos=False)[0, 0]) for w in (" Mary", " John"))
    by_word = subspace_flow(model, toks, "blocks.1.hook_resid_pre", v, logit_tokens=(" Mary", " John"))
    by_id = subspace_flow(model, toks, "blocks.1.hook_resid_pre", v, logit_tokens=(mary, john))
    assert by_word == by_id
    metric = lambda logits: logits[:, -1, mary] - logits[:, -1, john]  # noqa: E731
    reader = model.W_Q[1, 0].detach()
    reports = [illusion_report(model, toks[:1], toks[1:], "blocks.1.hook_resid_pre", v, metric, reader=reader,
                               logit_tokens=lt) for lt in ((" Mary", " John"), (mary, john))]  # it said: no tokenizer
    assert reports[0].flow == reports[1].flow and reports[0].verdict == reports[1].verdict
    with pytest.raises(DePassError, match="' Maryx' is not in the tokenizer's vocabulary"):
        subspace_flow(model, toks, "blocks.1.hook_resid_pre", v, logit_tokens=(" Maryx", " John"))
