"""``depass_tl.evaluate.rule_sensitivity``: every rule and a temperature sweep on one capture, compared.

Runs on every TransformerLens version (tests/models.py: a HookedTransformer on TL 2/3, a TL-native
TransformerBridge on TL 4).
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import depass_tl
from depass_tl import DePassError
from depass_tl.evaluate import RuleSensitivity, rule_sensitivity
from depass_tl.evaluate.rule_sensitivity import _pairwise
from depass_tl.replay.rules import rule_names
from depass_tl.viz import rule_sensitivity_data, rule_sensitivity_plot
from tests.models import make_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
torch.set_num_threads(1)


def _model(family: str):  # noqa: ANN202
    """A small random float32 model of ``family`` ("gpt2": not gated; "llama": gated), on any TL version."""
    return make_model(family, n_layers=2, dtype=torch.float32)


def _tokens(model, batch: int = 2, pos: int = 6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(4, int(model.cfg.d_vocab), (batch, pos), generator=gen)


def test_pairwise_statistics_known_answer() -> None:
    """Two variants over four components: reversed order -> Spearman -1; disjoint top-2 -> overlap 0."""
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)[:, :, None]
    rho, over = _pairwise(scores, 2)
    assert rho.flatten().tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0])
    assert over.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    # by magnitude: -4 is as large as 4
    rho, over = _pairwise(torch.tensor([[4.0, 3.0, 0.1, 0.2], [-4.0, 0.3, 3.0, 0.1]], dtype=torch.float64)[:, :, None], 2)
    assert float(over[0, 1]) == 0.5


def test_every_rule_and_temperature_from_one_capture() -> None:
    model = _model("llama")
    toks = _tokens(model)
    rs = rule_sensitivity(model, toks, 7, incorrect=9, temperatures=(0.1, 1.0), k=3, progress=False)
    assert isinstance(rs, RuleSensitivity)
    others = [r for r in rule_names() if r != "softmax"]
    assert rs.variants == ("softmax T=0.1", "softmax T=1", *others)
    assert rs.reference == "softmax T=0.1"
    assert rs.labels == tuple(f"tok{p}" for p in range(6))  # the bias component is left out
    assert rs.scores.shape == (len(rs.variants), 6, 2)
    # each variant's scores are that rule's attributions, as a separate run computes them
    for v, (rule, t) in enumerate(zip(rs.rules, rs.temperatures)):
        kw = {} if math.isnan(t) else {"temperature": t}
        _, dc = depass_tl.run_with_depass(model, toks, mlp_rule=rule, **kw)
        want = dc.logit_attrs(7, incorrect_tokens=9)[:-1].double()
        torch.testing.assert_close(rs.scores[v], want, rtol=0, atol=1e-5)
        assert rs.completeness[v] < 1e-4
    assert rs.temperatures[:2] == (0.1, 1.0) and all(math.isnan(t) for t in rs.temperatures[2:])
    # the matrices are symmetric, 1 on the diagonal, and the statistics of the scores
    assert torch.allclose(rs.spearman, rs.spearman.T) and torch.allclose(rs.overlap, rs.overlap.T)
    assert rs.spearman.diagonal().tolist() == pytest.approx([1.0] * len(rs.variants))
    from depass_tl.stats import spearman, top_k_overlap

    i, j = rs.variants.index("ratio"), rs.variants.index("taylor")
    want_rho = sum(spearman(rs.scores[i, :, b], rs.scores[j, :, b]) for b in range(2)) / 2
    want_over = sum(top_k_overlap(rs.scores[i, :, b], rs.scores[j, :, b], 3) for b in range(2)) / 2
    assert float(rs.spearman[i, j]) == pytest.approx(want_rho) and float(rs.overlap[i, j]) == pytest.approx(want_over)


def test_taylor_is_ratio_on_a_non_gated_model() -> None:
    model = _model("gpt2")
    rs = rule_sensitivity(model, _tokens(model, batch=1), 5, temperatures=(0.1,), k=2, include_bias=True,
                          progress=False)
    assert rs.labels[-1] == "bias"
    i, j = rs.variants.index("ratio"), rs.variants.index("taylor")
    torch.testing.assert_close(rs.scores[i], rs.scores[j], rtol=0, atol=1e-6)
    assert float(rs.spearman[i, j]) == pytest.approx(1.0) and float(rs.overlap[i, j]) == 1.0


def test_table_print_and_other_components() -> None:
    model = _model("llama")
    rs = rule_sensitivity(model, _tokens(model, batch=1), 3, components=depass_tl.heads(layer=0), k=2,
                          reference="ratio", progress=False)
    assert rs.labels[:2] == ("L0H0", "L0H1") and "rest" in rs.labels
    df = rs.to_dataframe()
    assert list(df.index) == list(rs.variants)
    assert df.loc["ratio", "spearman vs ratio"] == pytest.approx(1.0)
    assert df.loc["taylor", "top-2"] == ", ".join(f"{label} {v:+.3g}" for label, v in rs.top("taylor"))
    text = str(rs)
    assert "reference ratio" in text and "Least like the reference" in text
    assert all(name in text for name in rs.variants)


def test_plots() -> None:
    model = _model("llama")
    rs = rule_sensitivity(model, _tokens(model, batch=1), 3, temperatures=(0.1,), k=2, progress=False)
    data = rule_sensitivity_data(rs)
    assert data.variants == rs.variants and torch.equal(data.spearman, rs.spearman)
    assert data.title == "How much the MLP rule changes which components drive logit(#3)"
    backends = [b for b in ("matplotlib", "plotly") if importlib.util.find_spec(b) is not None]
    for backend in backends:
        assert rs.plot(backend=backend) is not None
    with pytest.raises(DePassError, match="takes the result of depass_tl.evaluate.rule_sensitivity"):
        rule_sensitivity_plot(object())


def test_refusals() -> None:
    model = _model("llama")
    toks = _tokens(model, batch=1)
    with pytest.raises(DePassError, match="k must be an int >= 1"):
        rule_sensitivity(model, toks, 3, k=0, progress=False)
    with pytest.raises(DePassError, match="unknown reference 'nope'"):
        rule_sensitivity(model, toks, 3, reference="nope", progress=False)
    rs = rule_sensitivity(model, toks, 3, temperatures=(1.0,), progress=False)
    assert rs.reference == "softmax T=1"  # the default rule's temperature is not in the sweep: the first variant
    with pytest.raises(DePassError, match="unknown variant"):
        rs.top("nope")
    with pytest.raises(DePassError, match="expected a transformer_lens.HookedTransformer"):
        rule_sensitivity(object(), toks, 3, progress=False)
    with pytest.raises(DePassError, match="attention-only"):
        rule_sensitivity(make_model("attn_only"), toks, 3, progress=False)


def test_readme_numbers_on_the_facts_toy() -> None:
    """The README's reading of a facts toy prompt (README, "Which rule to trust")."""
    from depass_tl import toy

    model, enc = toy.load("facts")
    tokens = enc.encode(" Anna Kowal lives in the city of")
    kw = dict(k=5, progress=False)
    rs = rule_sensitivity(model, tokens, enc.token_id(" Rome"), **kw)
    r = rs.variants.index("softmax T=0.1")
    row = {v: float(rs.spearman[i, r]) for i, v in enumerate(rs.variants)}
    for cold in ("softmax T=0.01", "max"):
        assert row[cold] > 0.99
    assert row["ratio"] == row["taylor"] and 0.6 < row["ratio"] < 0.68
    assert 0.58 < row["softmax T=1"] < 0.66 and row["softmax T=10"] < 0.2
    top = {v: rs.labels[int(rs.scores[i].argmax())] for i, v in enumerate(rs.variants)}
    assert top["softmax T=0.1"] == top["max"] == "tok1"  # " Anna"
    assert top["ratio"] == top["softmax T=1"] == "tok2"   # " Kowal"
    heads = rule_sensitivity(model, tokens, enc.token_id(" Rome"), components=depass_tl.heads(), **kw)
    assert float(heads.overlap[:, heads.variants.index("softmax T=0.1")].min()) >= 0.8
