"""Token-level protocols on a model whose target logit is w[last] + mean_j w[tok_j] (known on paper)."""

from __future__ import annotations

import pytest
import torch

from depass_tl.errors import DePassError
from depass_tl.evaluate import (
    apply_mask,
    comprehensiveness_sufficiency,
    deletion_insertion,
    disrupt_recover,
    maskable_positions,
    rank_positions,
    top_k_count,
)
from tests.evaluate.known_models import REPLACE, TARGET, WEIGHTS, linear_token_model, token_logit, token_prob

ROW = [0, 1, 2, 3, 4, 5]  # BOS, tokens with w = 4, 1, 3, 2, last token (w = 0); clean logit 10/6
TOKENS = torch.tensor([ROW])
PERFECT = torch.tensor([[9.0, 4.0, 1.0, 3.0, 2.0, -9.0]])  # BOS/last scores must be ignored
REVERSED = -PERFECT


@pytest.fixture(scope="module")
def model():
    return linear_token_model()


def test_ranking_skips_bos_and_target_and_breaks_ties_by_position():
    assert rank_positions(PERFECT).tolist() == [[1, 3, 4, 2]]
    assert rank_positions(torch.zeros(1, 5)).tolist() == [[1, 2, 3]]
    assert rank_positions(PERFECT, protect_bos=False).tolist() == [[0, 1, 3, 4, 2]]
    assert maskable_positions(3) == [1]
    with pytest.raises(DePassError, match="no maskable position"):
        maskable_positions(2)
    assert [top_k_count(p, 4) for p in (0.1, 0.25, 0.3, 0.5, 1.0)] == [1, 1, 1, 2, 4]


def test_deletion_curve_replace_logit_matches_paper_values(model):
    res = deletion_insertion(model, TOKENS, PERFECT, TARGET, metric="logit", masking="replace", replace_with=REPLACE)
    expected_del = torch.tensor([10, 6, 3, 1, 0], dtype=torch.float64) / 6
    expected_ins = torch.tensor([0, 4, 7, 9, 10], dtype=torch.float64) / 6
    torch.testing.assert_close(res.deletion[0], expected_del)
    torch.testing.assert_close(res.insertion[0], expected_ins)
    torch.testing.assert_close(res.deletion_auc, torch.tensor([15 / 24], dtype=torch.float64))
    torch.testing.assert_close(res.insertion_auc, torch.tensor([25 / 24], dtype=torch.float64))
    torch.testing.assert_close(res.aopc, torch.tensor([1.0], dtype=torch.float64))


def test_deletion_curve_delete_shifts_length(model):
    res = deletion_insertion(model, TOKENS, PERFECT, TARGET, metric="logit")
    # deleting shortens the prompt: logit = (10 - removed weight) / remaining length
    expected = torch.tensor([10 / 6, 6 / 5, 3 / 4, 1 / 3, 0 / 2], dtype=torch.float64)
    torch.testing.assert_close(res.deletion[0], expected)
    kept = [[0, 5], [0, 1, 5], [0, 1, 3, 5], [0, 1, 3, 4, 5], ROW]
    torch.testing.assert_close(res.insertion[0], torch.tensor([token_logit(r) for r in kept], dtype=torch.float64))


def test_perfect_ranking_beats_reversed_on_every_summary(model):
    good = deletion_insertion(model, TOKENS, PERFECT, TARGET)
    bad = deletion_insertion(model, TOKENS, REVERSED, TARGET)
    assert good.deletion_auc < bad.deletion_auc and good.insertion_auc > bad.insertion_auc and good.aopc > bad.aopc


def test_disrupt_recover_prob_change_percent(model):
    res = disrupt_recover(model, TOKENS, PERFECT, TARGET, fractions=(0.25, 0.5, 1.0))
    assert res.k == (1, 2, 4)
    p0 = token_prob(ROW)
    disrupted = [token_prob(r) for r in ([0, 2, 3, 4, 5], [0, 2, 4, 5], [0, 5])]
    recovered = [token_prob(r) for r in ([0, 1, 5], [0, 1, 3, 5], ROW)]
    exp_d = torch.tensor([min(100, abs(p0 - p) / p0 * 100) for p in disrupted], dtype=torch.float64)
    exp_r = torch.tensor([min(100, abs(p0 - p) / p0 * 100) for p in recovered], dtype=torch.float64)
    torch.testing.assert_close(res.clean, torch.tensor([p0], dtype=torch.float64))
    torch.testing.assert_close(res.disrupt[0], exp_d)
    torch.testing.assert_close(res.recover[0], exp_r)
    assert float(res.recover[0, -1]) == 0.0  # keeping everything changes nothing
    worse = disrupt_recover(model, TOKENS, REVERSED, TARGET, fractions=(0.25, 0.5))
    assert (res.disrupt[0, :2] > worse.disrupt[0]).all() and (res.recover[0, :2] < worse.recover[0]).all()


def test_eraser_comprehensiveness_sufficiency_replace_logit(model):
    res = comprehensiveness_sufficiency(model, TOKENS, PERFECT, TARGET, fractions=(0.25, 0.5), metric="logit",
                                        masking="replace", replace_with=REPLACE)
    torch.testing.assert_close(res.comprehensiveness[0], torch.tensor([4 / 6, 7 / 6], dtype=torch.float64))
    torch.testing.assert_close(res.sufficiency[0], torch.tensor([6 / 6, 3 / 6], dtype=torch.float64))
    torch.testing.assert_close(res.aopc_comprehensiveness, torch.tensor([11 / 12], dtype=torch.float64))
    torch.testing.assert_close(res.aopc_sufficiency, torch.tensor([9 / 12], dtype=torch.float64))


def test_batch_of_prompts_with_per_prompt_targets_and_rankings(model):
    rows = torch.tensor([ROW, [0, 4, 3, 2, 1, 5]])
    attrs = torch.tensor([[0, 4, 1, 3, 2, 0], [0, 2, 3, 1, 4, 0]], dtype=torch.float64)
    res = deletion_insertion(model, rows, attrs, [TARGET, TARGET], metric="logit")
    single = deletion_insertion(model, rows[1:], attrs[1:], TARGET, metric="logit")
    torch.testing.assert_close(res.deletion[1], single.deletion[0])


def test_masking_rules():
    assert apply_mask([0, 5, 6, 7], [1, 2], masking="delete", replace_with=None) == [0, 7]
    assert apply_mask([0, 5, 6, 7], [2], masking="replace", replace_with=3) == [0, 5, 3, 7]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(masking="blank"), "masking must be"),
        (dict(masking="replace"), "needs replace_with"),
        (dict(masking="replace", replace_with=99), r"replace_with must be a token id in \[0, 8\)"),
        (dict(replace_with=3), "only used with masking='replace'"),
        (dict(fractions=(1.5,)), r"fractions must lie in \[0, 1\]"),
    ],
)
def test_bad_options_raise(model, kwargs, match):
    with pytest.raises(DePassError, match=match):
        disrupt_recover(model, TOKENS, PERFECT, TARGET, **kwargs)


def test_bad_shapes_and_targets_raise(model):
    with pytest.raises(DePassError, match="attributions must be a tensor with the shape of tokens"):
        disrupt_recover(model, TOKENS, PERFECT[:, :3], TARGET)
    with pytest.raises(DePassError, match="one target token, or one per prompt"):
        disrupt_recover(model, TOKENS, PERFECT, [1, 2])
    with pytest.raises(DePassError, match=r"target token ids must lie in \[0, 8\)"):
        disrupt_recover(model, TOKENS, PERFECT, 8)
    with pytest.raises(DePassError, match="NaN or inf"):
        disrupt_recover(model, TOKENS, PERFECT * float("nan"), TARGET)
    with pytest.raises(DePassError, match="metric must be one of"):
        deletion_insertion(model, TOKENS, PERFECT, TARGET, metric="loss")  # type: ignore[arg-type]


def test_weights_used_by_the_known_model_are_what_the_tests_assume():
    assert WEIGHTS[REPLACE] == 0.0 and WEIGHTS[5] == 0.0 and WEIGHTS[0] == 0.0
