"""The toys speak text: strings work in the API, and tables and plots show token strings (issue 19, item 1).

Runs on the class the installed TransformerLens gives (HookedTransformer on 2.x / 3.x, TransformerBridge on 4.x).
"""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl import toy, viz

PROMPT = "When Mary and John went to the store, John gave a drink to"
TOKENS = ["<|BOS|>", "When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John", " gave", " a",
          " drink", " to"]


@pytest.fixture(scope="module")
def ioi():
    model, encoder = toy.load("ioi")
    return model, encoder


def test_strings_give_the_same_numbers_as_ids(ioi) -> None:
    model, encoder = ioi
    assert model.to_str_tokens(PROMPT) == TOKENS
    _, by_text = model.run_with_depass(PROMPT)
    _, by_ids = depass_tl.run_with_depass(model, encoder.encode(PROMPT))
    mary, john = encoder.token_id(" Mary"), encoder.token_id(" John")
    torch.testing.assert_close(by_text.logit_attrs(" Mary", incorrect_tokens=" John"),
                               by_ids.logit_attrs(mary, incorrect_tokens=john), rtol=0, atol=0)
    assert by_text.str_tokens == (tuple(TOKENS),)
    assert max(by_text.completeness_error(relative=True).values()) < 1e-5


def test_dataframe_and_plot_data_carry_token_strings(ioi) -> None:
    model, _ = ioi
    _, dc = model.run_with_depass(PROMPT)
    df = dc.to_dataframe(" Mary", incorrect_tokens=" John")
    tokens = df[df.label.str.fullmatch(r"tok\d+")]
    assert tokens.token.tolist() == TOKENS
    heat = viz.token_heatmap_data(dc, " Mary", incorrect_tokens=" John")
    assert heat.str_tokens == tuple(TOKENS)
    assert "Mary" in heat.target and "John" in heat.target and "#" not in heat.target  # names, not token ids
    flow = viz.flow_data(dc, " Mary", incorrect_tokens=" John", top_k=3)
    shown = [d for d, s in zip(flow.display, flow.series) if s.startswith("tok")]
    tok_series = [s for s in flow.series if s.startswith("tok")]
    assert shown and all(TOKENS[int(s[3:])].strip() in d for d, s in zip(shown, tok_series))  # legends name tokens


def test_head_grid_titles_name_the_tokens(ioi) -> None:
    model, _ = ioi
    _, dh = model.run_with_depass(PROMPT, components=depass_tl.heads())
    grid = viz.head_grid_data(dh, " Mary", incorrect_tokens=" John")
    assert "Mary" in grid.title and "John" in grid.title and "#" not in grid.target  # names, not token ids
    assert torch.isfinite(grid.values).all()


def test_padded_batches_of_strings_work(ioi) -> None:
    model, _ = ioi
    prompts = [PROMPT, "Then, Kate and Paul had a lot of fun at the store. Paul gave a drink to"]
    _, dc = model.run_with_depass(prompts)
    attrs = dc.logit_attrs([" Mary", " Kate"], incorrect_tokens=[" John", " Paul"])  # at each prompt's last token
    for b, prompt in enumerate(prompts):
        with torch.no_grad():
            logits = model(prompt)[0, -1]
        clean = logits[model.to_single_token([" Mary", " Kate"][b])] - logits[
            model.to_single_token([" John", " Paul"][b])]
        torch.testing.assert_close(attrs[:, b].sum(), clean, rtol=0, atol=1e-4)
