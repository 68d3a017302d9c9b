"""Public API: string input, the model method, the cache mapping, logit attribution, export."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import torch

import depass_tl
from depass_tl import DePassError
from tests.models import config_model, make_model, random_tokens, word_tokenizer

WORDS = ["When", " Mary", " and", " John", " went", " to", " the", " store", ",", " gave", " a", " drink"]


@pytest.fixture(scope="module")
def text_model() -> Any:
    tok = word_tokenizer(WORDS)
    cfg = dict(
        n_layers=2, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_mlp=32, d_vocab=len(tok), act_fn="gelu",
        seed=0, dtype=torch.float64,
    )
    return config_model(**cfg, tokenizer=tok).eval()


def test_string_input_and_method(text_model: Any) -> None:
    prompt = "When Mary and John went to the store, John gave a drink to"
    logits, dc = text_model.run_with_depass(prompt)
    free_logits, free_dc = depass_tl.run_with_depass(text_model, prompt)
    torch.testing.assert_close(logits, free_logits)
    torch.testing.assert_close(dc["unembed.hook_in"], free_dc["unembed.hook_in"])
    n = text_model.to_tokens(prompt).shape[1]
    assert dc.labels == tuple(f"tok{p}" for p in range(n)) + ("bias",)
    assert dc.str_tokens is not None and dc.str_tokens[0][:2] == ("<bos>", "When")
    mary = text_model.to_tokens(" Mary", prepend_bos=False)[0, 0]
    torch.testing.assert_close(dc.logit_attrs(" Mary").sum(0), logits[:, -1, mary])
    diff = dc.logit_attrs(" Mary", incorrect_tokens=" John")
    john = text_model.to_tokens(" John", prepend_bos=False)[0, 0]
    torch.testing.assert_close(diff.sum(0), logits[:, -1, mary] - logits[:, -1, john])
    torch.testing.assert_close(dc.logit_diff_attrs(" Mary", " John"), diff)


def test_a_replayed_cache_reads_string_answers_with_the_captures_tokenizer(text_model: Any) -> None:
    """capture once, replay many: the caches from replay() said the model had no tokenizer for ' Mary'
    (only run_with_depass passed the lookup); the capture now carries it."""
    prompt = "When Mary and John went to the store, John gave a drink to"
    spec = depass_tl.heads(1)
    run = depass_tl.capture(text_model, prompt, extra_hooks=spec.required_hooks(text_model.cfg.n_layers))
    _, whole = depass_tl.run_with_depass(text_model, prompt, components=spec)
    replayed = depass_tl.replay(run, spec)
    torch.testing.assert_close(replayed.logit_attrs(" Mary"), whole.logit_attrs(" Mary"), rtol=0, atol=1e-12)
    with pytest.raises(depass_tl.errors.DePassValueError, match=r"captured without \['blocks\.1\.attn\.hook_z'\]"):
        depass_tl.replay(depass_tl.capture(text_model, prompt), spec)


def test_batch_of_strings_and_per_prompt_answers(text_model: Any) -> None:
    prompts = ["When Mary and John went to", "When John and Mary went to"]
    logits, dc = depass_tl.run_with_depass(text_model, prompts)
    ids = torch.tensor([text_model.to_single_token(" Mary"), text_model.to_single_token(" John")])
    attrs = dc.logit_attrs(ids)
    assert attrs.shape == (len(dc.labels), 2)
    torch.testing.assert_close(attrs.sum(0), logits[torch.arange(2), -1, ids])


def test_to_dataframe(text_model: Any) -> None:
    _, dc = depass_tl.run_with_depass(text_model, "When Mary and John went")
    df = dc.to_dataframe(" Mary")
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["batch", "component", "label", "token", "attribution"]
    assert df["token"].tolist()[:3] == ["<bos>", "When", " Mary"]
    assert df["attribution"].sum() == pytest.approx(float(dc.logit_attrs(" Mary").sum()))


def test_cache_mapping_and_shorthand() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model, batch=2, pos=5)
    _, dc = depass_tl.run_with_depass(model, toks)
    assert dc[("resid_post", 1)] is dc["blocks.1.hook_resid_post"]
    assert len(dc) == len(list(dc.keys()))
    assert dc["blocks.0.hook_resid_pre"].shape == (6, 2, 5, 16)
    with pytest.raises(DePassError, match="not in this DePassCache"):
        dc["blocks.9.hook_resid_post"]
    with pytest.raises(TypeError):
        dc["x"] = torch.zeros(1)  # type: ignore[index]
    moved = dc.to("cpu")
    torch.testing.assert_close(moved["unembed.hook_in"], dc["unembed.hook_in"])
    assert "DePassCache(11 hooks" in repr(dc)


def test_names_filter_keeps_only_requested_hooks() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model)
    _, dc = depass_tl.run_with_depass(model, toks, names_filter=["blocks.1.hook_resid_post"])
    assert set(dc) == {"blocks.1.hook_resid_post", "unembed.hook_in"}
    _, dc = depass_tl.run_with_depass(model, toks, names_filter=lambda n: n.endswith("attn_out"))
    assert set(dc) == {"blocks.0.hook_attn_out", "blocks.1.hook_attn_out", "unembed.hook_in"}
    with pytest.raises(DePassError, match="does not produce"):
        depass_tl.run_with_depass(model, toks, names_filter=["blocks.1.hook_q"])


def test_separate_pos_embed() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model, pos=4)
    logits, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.tokens(separate_pos_embed=True))
    assert dc.labels == ("tok0", "tok1", "tok2", "tok3", "pos_embed", "bias")
    _, cache = model.run_with_cache(toks)
    torch.testing.assert_close(dc["blocks.0.hook_resid_pre"][dc.component("pos_embed")], cache["hook_pos_embed"].expand(2, -1, -1))
    torch.testing.assert_close(dc["blocks.0.hook_resid_pre"][1, :, 1], cache["hook_embed"][:, 1])
    torch.testing.assert_close(dc.logit_attrs(2).sum(0), logits[:, -1, 2])
    rotary = make_model("llama")
    with pytest.raises(DePassError, match="positional embeddings"):
        depass_tl.run_with_depass(rotary, toks, components=depass_tl.tokens(separate_pos_embed=True))


def test_custom_components_start_mid_stream() -> None:
    model = make_model("gpt2", n_layers=3)
    toks = random_tokens(model)
    logits, cache = model.run_with_cache(toks)
    for hook in ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"):
        h = cache[hook]
        parts = torch.stack([0.25 * h, 0.75 * h])
        _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.custom(hook, parts, ["q", "rest"]))
        assert dc.labels == ("q", "rest", "bias")
        assert hook in dc and "blocks.0.hook_resid_post" not in dc
        assert max(dc.completeness_error().values()) < 1e-10
        torch.testing.assert_close(dc.logit_attrs(1).sum(0), logits[:, -1, 1])


def test_float32_model_accumulates_in_float32_by_default() -> None:
    model = make_model("gpt2", dtype=torch.float32)
    _, dc = depass_tl.run_with_depass(model, random_tokens(model))
    assert dc["unembed.hook_in"].dtype == torch.float32
    _, dc64 = depass_tl.run_with_depass(model, random_tokens(model), dtype=torch.float64)
    assert dc64["unembed.hook_in"].dtype == torch.float64
    assert max(dc64.completeness_error(relative=True).values()) < 1e-5


def test_right_padded_batch_reads_each_prompts_last_real_token(text_model: Any) -> None:
    short, long = "When Mary", "When Mary and John went"
    logits, dc = depass_tl.run_with_depass(text_model, [short, long], padding_side="right")
    assert dc.last_positions.tolist() == [2, 5]
    _, alone = depass_tl.run_with_depass(text_model, short)
    torch.testing.assert_close(dc.logit_attrs(" John")[:4, 0], alone.logit_attrs(" John")[:4, 0])
    torch.testing.assert_close(dc.logit_attrs(" John")[-1, 0], alone.logit_attrs(" John")[-1, 0])
    john = text_model.to_single_token(" John")
    torch.testing.assert_close(dc.logit_attrs(" John").sum(0), logits[torch.arange(2), dc.last_positions, john])
    assert max(dc.completeness_error().values()) < 1e-10


def test_attribute_run_reads_string_answers_with_the_captures_tokenizer(text_model: Any) -> None:
    """As replay(): attribute_run on a capture said the model had no tokenizer for ' Mary'."""
    from depass_tl.reverse import attribute_run

    prompt = "When Mary and John went to the store, John gave a drink to"
    run = depass_tl.capture(text_model, prompt)
    mary = text_model.to_single_token(" Mary")
    for mode in ("reverse", "forward"):
        by_word = attribute_run(run, " Mary", mlp_rule="ratio", mode=mode).values
        torch.testing.assert_close(by_word, attribute_run(run, mary, mlp_rule="ratio", mode=mode).values, rtol=0, atol=0)
