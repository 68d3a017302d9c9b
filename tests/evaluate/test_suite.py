"""The whole suite end to end on a shipped toy model (small settings), and the statistics helpers."""

from __future__ import annotations

import math

import pytest
import torch

from depass_tl import toy
from depass_tl.errors import DePassError
from depass_tl.evaluate import (
    bootstrap_ci,
    component_faithfulness,
    component_methods,
    format_table,
    mean_ci,
    token_faithfulness,
    token_methods,
)
from depass_tl.toy.data import ioi_prompts


def test_mean_ci_by_hand():
    m, h = mean_ci([1.0, 2.0, 3.0, 6.0])  # mean 3, sample std sqrt(14/3)
    assert m == 3.0 and math.isclose(h, 1.96 * math.sqrt(14 / 3) / 2)
    assert math.isnan(mean_ci([2.0])[1])
    with pytest.raises(DePassError, match="no values"):
        mean_ci([])
    with pytest.raises(DePassError, match="NaN or inf"):
        mean_ci([1.0, float("nan")])


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    v = torch.arange(20, dtype=torch.float64)
    m, lo, hi = bootstrap_ci(v, seed=3)
    assert m == 9.5 and lo < m < hi and (m, lo, hi) == bootstrap_ci(v, seed=3)
    with pytest.raises(DePassError, match="level must lie"):
        bootstrap_ci(v, level=1.5)


@pytest.mark.skipif("ioi" not in toy.available(), reason="the ioi toy model is not shipped")
def test_suite_end_to_end_on_the_ioi_toy_model():
    model, enc = toy.load("ioi")
    prompts = [p for p in ioi_prompts(30, split="heldout", seed=0)]
    length = len(enc.encode(prompts[0].text)[0])
    prompts = [p for p in prompts if len(enc.encode(p.text)[0]) == length][:3]
    tokens = enc.encode([p.text for p in prompts])
    io = torch.tensor([enc.token_id(p.io) for p in prompts])
    s = torch.tensor([enc.token_id(p.s) for p in prompts])
    corrupt = tokens.clone()
    for b in range(len(prompts)):  # IO and S swapped: the corrupted answer is S
        corrupt[b][tokens[b] == io[b]], corrupt[b][tokens[b] == s[b]] = s[b], io[b]
    methods = token_methods(temperatures=(0.1,), captum=False)
    report = token_faithfulness(model, tokens, io, methods=methods, topk_fractions=(0.5, 1.0),
                                eraser_fractions=(0.2,), progress=False)
    merged = report + report
    assert merged.n_prompts == 2 * len(prompts)
    assert merged.compute["depass ratio"].forward == 2 * report.compute["depass ratio"].forward == 2 * len(prompts)
    table = report.table()
    assert list(table.index) == list(methods) and "disrupt mean" in table.columns
    text = format_table(table)
    assert text.count("\n") == len(methods) + 1 and "±" in text
    # keeping every token changes nothing: Recover-top-100% is 0 for every method
    for name in methods:
        assert torch.all(report.recover[name][:, -1] == 0), name
    heads = component_methods(captum=False, ablations=("zero",))
    comp = component_faithfulness(model, tokens, io, incorrect=s, methods=heads, k=(1, 3),
                                  ablations=("zero", "resample"), corrupt_tokens=corrupt, progress=False)
    acc = comp.table(measure="accuracy")
    assert len(acc) == len(heads) * 2 * 2 and list(acc.columns[:3]) == ["k=1 mean", "k=1 lo", "k=1 hi"]
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    assert comp.compute["exact ablation (zero)"].forward == len(prompts) * (1 + n_heads)  # clean + one per head
    # DePass's top heads must hurt the IO-vs-S logit difference more than its bottom heads
    top, _ = comp.results[("depass softmax T=0.1", "top", "zero")]
    bottom, _ = comp.results[("depass softmax T=0.1", "bottom", "zero")]
    assert float(top.mean()) < float(bottom.mean())
    # zero-ablating the head whose single ablation hurts most lowers the logit difference
    exact, _ = comp.results[("exact ablation (zero)", "top", "zero")]
    assert float(exact[:, 0].mean()) < float(comp.clean_metric.mean())


def test_empty_ablations_directions_and_too_many_facts_are_refused():
    """They ended in a bare AssertionError and Python's 'Sample larger than population'."""
    from depass_tl.evaluate.toy_tasks import load_task
    from depass_tl.toy.data import FACTS

    model, enc = toy.load("ioi")
    tokens = enc.encode(["When Mary and John went to the store, John gave a drink to"])
    heads = component_methods(captum=False, ablations=("zero",))
    for kw in (dict(ablations=()), dict(directions=())):
        with pytest.raises(DePassError, match="must each name at least one"):
            component_faithfulness(model, tokens, torch.tensor([2]), methods=heads, progress=False, **kw)
    with pytest.raises(DePassError, match=f"has {len(FACTS)} distinct facts; got n={len(FACTS) + 1}"):
        load_task("facts", n=len(FACTS) + 1)
