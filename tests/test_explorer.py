"""The explorer's data (depass_tl.viz.explorer): every number equals a cache's number (checked against
the caches through other public readers, against the model's own forward pass, and for the head
breakdown against parts built independently from TransformerLens's cache), the parts add up, and the
page is one self-contained file. On HookedTransformer (TL < 4) and TransformerBridge (TL >= 3)."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch

import depass_tl
from depass_tl import DePassError, UnsupportedModelError, toy, viz
from depass_tl.replay.rules import get_rule, rule_names

MLP_RULES = rule_names()
from tests._tl_version import HAS_BRIDGE, HAS_HOOKED, TL_MAJOR, TL_VERSION
from tests.browser import INSTALL, Browser, find_browser
from tests.explorer_cases import KINDS, explorer_case

TOL = 1e-5  # the data is rounded to 6 decimals; float32 caches differ from float64 sums by ~1e-6


def _pairs(case) -> list[tuple[int, int | None]]:
    """(answer, contrast) candidate indices to check: the default pair, a single logit, another pair."""
    return [(0, 1), (2, None), (1, 3)]


def _minus(per_candidate, k: int, c: int | None) -> torch.Tensor:
    a = torch.tensor(per_candidate[k], dtype=torch.float64)
    return a if c is None else a - torch.tensor(per_candidate[c], dtype=torch.float64)


@pytest.fixture(params=KINDS)
def case(request):
    return explorer_case(request.param)


# ----------------------------------------------------------------------------------- candidates
def test_candidates_are_the_target_the_contrast_and_the_top_predictions(case) -> None:
    data = case.data
    ids = [c["id"] for c in data["candidates"]]
    top = torch.argsort(case.clean_logits, descending=True).tolist()
    assert ids[:2] == [case.target, case.contrast] and set(ids[2:]) | set(ids[:2]) >= set(top[:4])
    assert len(ids) == len(set(ids)) == len(set(ids[:2]) | set(top[:4]))
    for c in data["candidates"]:
        assert c["text"] == case.decode(c["id"])
        assert c["logit"] == pytest.approx(float(case.clean_logits[c["id"]]), abs=1e-4)  # the model's own logit
        assert c["rank"] == 1 + top.index(c["id"])
        assert c["prob"] == pytest.approx(float(torch.softmax(case.clean_logits, -1)[c["id"]]), abs=2e-6)
    assert data["target"] == 0 and data["contrast"] == 1 and data["rules"] == list(MLP_RULES)
    assert data["str_tokens"] == list(case.str_tokens) and data["pos"] == case.tokens.shape[1] - 1
    json.dumps(data, allow_nan=False)  # plain JSON: no tensors, no NaN


# ---------------------------------------------------------------------------------------- tokens
@pytest.mark.parametrize("rule", MLP_RULES)
def test_token_numbers_are_the_caches(case, rule: str) -> None:
    data, dc = case.data, case.caches.rules[rule].tokens
    got = data["by_rule"][rule]
    ids = [c["id"] for c in data["candidates"]]
    P = case.tokens.shape[1]
    for k, c in _pairs(case):
        bad = None if c is None else ids[c]
        attrs = dc.logit_attrs(ids[k], incorrect_tokens=bad)[:, 0].double()
        tokens = _minus(got["tokens"], k, c)
        expected = torch.stack([attrs[dc.component(f"tok{p}")] for p in range(P)])
        torch.testing.assert_close(tokens, expected, atol=TOL, rtol=0)
        others = {o["label"]: float(_minus(o["values"], k, c)) for o in got["token_others"]}
        assert others.keys() == {label for label in dc.labels if not label.startswith("tok")}
        for label, v in others.items():
            assert v == pytest.approx(float(attrs[dc.component(label)]), abs=TOL)
        # completeness against the model's own forward pass
        clean = float(case.clean_logits[ids[k]] - (0 if bad is None else case.clean_logits[bad]))
        assert float(tokens.sum()) + sum(others.values()) == pytest.approx(clean, abs=1e-4)
        # the projections through the layers are what viz.flow_data reads from the same cache
        flow = viz.flow_data(dc, ids[k], incorrect_tokens=bad, top_k=dc.n_components)
        assert data["hooks"] == list(flow.hooks) and data["hook_labels"] == list(flow.hook_labels)
        proj = _minus(got["token_proj"], k, c)  # [pos, hook]
        for p in range(P):
            torch.testing.assert_close(proj[p], flow.projection[flow.series.index(f"tok{p}")], atol=TOL, rtol=0)
        torch.testing.assert_close(_minus(data["clean_proj"], k, c), flow.total_projection, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------------------- heads
@pytest.mark.parametrize("rule", MLP_RULES)
def test_head_numbers_are_the_caches_and_each_layer_adds_up(case, rule: str) -> None:
    data, rc = case.data, case.caches.rules[rule]
    got = data["by_rule"][rule]
    ids = [c["id"] for c in data["candidates"]]
    L, H = case.model.cfg.n_layers, case.model.cfg.n_heads
    for k, c in _pairs(case):
        bad = None if c is None else ids[c]
        grid = viz.head_grid_data(rc.heads, ids[k], incorrect_tokens=bad)
        heads, rest = _minus(got["heads"], k, c), _minus(got["heads_rest"], k, c)
        assert heads.shape == (L, H)
        torch.testing.assert_close(heads, grid.values, atol=TOL, rtol=0)
        clean = float(case.clean_logits[ids[k]] - (0 if bad is None else case.clean_logits[bad]))
        sources, src_rest = _minus(got["sources"], k, c), _minus(got["sources_rest"], k, c)  # [L, H, P], [L]
        earlier = _minus(got["sources_earlier"], k, c)  # [L, H]
        for l in range(L):
            assert float(heads[l].sum() + rest[l]) == pytest.approx(clean, abs=1e-4)
            total = float(sources[l].sum() + earlier[l].sum() + src_rest[l])
            assert total == pytest.approx(clean, abs=1e-4)  # every rule: the parts are complete
        if get_rule(rule).linear:  # a head's parts add up to the head exactly
            torch.testing.assert_close(sources.sum(-1) + earlier, heads, atol=1e-4, rtol=0)
        # the last layer's heads write nothing at earlier positions that any later attention could read
        assert float(earlier[L - 1].abs().max()) < 1e-6


def test_attention_is_the_models_pattern_from_the_last_position(case) -> None:
    _, cache = case.model.run_with_cache(case.tokens)
    for l in range(case.model.cfg.n_layers):
        pattern = cache[f"blocks.{l}.attn.hook_pattern"][0, :, -1].double()  # [head, key]
        got = torch.tensor(case.data["attention"][l], dtype=torch.float64)
        torch.testing.assert_close(got, pattern, atol=2e-6, rtol=0)


@pytest.mark.parametrize("rule", ["ratio", "softmax"])
def test_head_parts_match_parts_built_from_transformer_lens(case, rule: str) -> None:
    """Rebuild layer 1's parts from TL's own hooks and weights (a Bridge exposes W_O in the same layout), replay
    them, compare."""
    model, toks = case.model, case.tokens
    _, cache = model.run_with_cache(toks)
    l, P, H = 1, toks.shape[1], model.cfg.n_heads
    A = cache[f"blocks.{l}.attn.hook_pattern"][0, :, -1]  # [head, source] from the last position
    v = cache[f"blocks.{l}.attn.hook_v"][0]  # [source, head or key-value head (GQA), d_head]
    v = v.repeat_interleave(H // v.shape[1], dim=1)  # GQA: each query head reads its shared value head
    W_O = model.blocks[l].attn.W_O  # [head, d_head, d_model]
    result = torch.einsum("qhe,hed->hqd", cache[f"blocks.{l}.attn.hook_z"][0], W_O)
    parts = []
    for h in range(H):
        for s in range(P):
            part = torch.zeros(P, model.cfg.d_model)
            part[-1] = A[h, s] * (v[s, h] @ W_O[h])
            parts.append(part)
    for h in range(H):
        parts.append(torch.cat([result[h, :-1], torch.zeros(1, model.cfg.d_model)]))
    x = torch.stack(parts)[:, None].double()
    start = cache[f"blocks.{l}.hook_resid_mid"].double()
    labels = [f"h{h}s{s}" for h in range(H) for s in range(P)] + [f"h{h}earlier" for h in range(H)] + ["rest"]
    spec = depass_tl.custom(f"blocks.{l}.hook_resid_mid", torch.cat([x, (start - x.sum(0))[None]]), labels)
    _, dc = depass_tl.run_with_depass(model, toks, components=spec, mlp_rule=rule, dtype=torch.float64)
    ids = [c["id"] for c in case.data["candidates"]]
    expected = dc.logit_attrs(ids[0], incorrect_tokens=ids[1])[:, 0].double()
    got = case.data["by_rule"][rule]
    torch.testing.assert_close(_minus(got["sources"], 0, 1)[l], expected[: H * P].reshape(H, P), atol=1e-4, rtol=0)
    torch.testing.assert_close(_minus(got["sources_earlier"], 0, 1)[l], expected[H * P: H * P + H], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------- page
def test_page_is_one_self_contained_file_holding_the_data(case, tmp_path) -> None:
    path = viz.save_explorer(case.data, tmp_path / "page.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and len(text) < 400_000
    # nothing is fetched: no external scripts, styles, images, fonts or imports
    for pattern in (r"<script[^>]+src=", r"<link\b", r"<img\b", r"<iframe\b", r"url\(", r"@import", r"fetch\(",
                    r"XMLHttpRequest", r"https?://(?!www\.w3\.org/2000/svg)"):
        assert re.search(pattern, text) is None, pattern
    blob = re.search(r'<script type="application/json" id="depass-data">(.*?)</script>', text, re.S)
    assert blob is not None and json.loads(blob.group(1)) == json.loads(json.dumps(case.data))


def test_page_text_cannot_break_out_of_its_script() -> None:
    case = explorer_case("gpt2")
    evil = "</script><script>alert(1)</script><!--"
    data = dict(case.data, prompt=evil, str_tokens=[evil] + case.data["str_tokens"][1:])
    text = viz.explorer_html(data, title=evil)
    assert "</script><script>alert(1)" not in text and "<!--" not in text.split("<body>", 1)[1]
    blob = re.search(r'<script type="application/json" id="depass-data">(.*?)</script>', text, re.S)
    assert json.loads(blob.group(1))["prompt"] == evil  # the data still holds it exactly


# ------------------------------------------------------------------------------ model structure
def _ioi_explorer():
    """The explorer data of the shipped ioi toy (attention-only, LayerNorm), as ``depass-tl attribute --html``."""
    model, enc = toy.load("ioi")
    toks = enc.encode("When Mary and John went to the store, John gave a drink to")
    run = depass_tl.capture(model, toks, extra_hooks=viz.explorer_hooks(model.cfg.n_layers))
    caches = viz.explorer_caches(run, progress=False)
    return viz.explorer_data(caches, target=enc.token_id(" Mary"), contrast=enc.token_id(" John"), top_k=3)


def _no_norm_explorer(attn_only: bool):
    from depass_tl.toy import random_model

    model = random_model(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=20, act_fn="gelu",
                         normalization_type=None, attn_only=attn_only, seed=0)
    run = depass_tl.capture(model, torch.tensor([[1, 2, 3, 4]]), extra_hooks=viz.explorer_hooks(2))
    return viz.explorer_data(viz.explorer_caches(run, progress=False), target=5, contrast=7, top_k=3)


def test_structure_says_what_the_page_may_claim(case) -> None:
    """The page words its notes by data["structure"]; what each word claims holds in the numbers."""
    assert case.data["structure"] == {"mlp": True, "norms": True, "final_norm": True}
    data = _ioi_explorer()
    assert data["structure"] == {"mlp": False, "norms": True, "final_norm": True}
    # no MLPs: every rule gives the same numbers, and a head's parts add up to it (the page says so for every rule)
    first = data["by_rule"][data["rules"][0]]
    for rule in data["rules"]:
        got = data["by_rule"][rule]
        assert got["tokens"] == first["tokens"] and got["heads"] == first["heads"], rule
        parts = _minus(got["sources"], 0, 1).sum(-1) + _minus(got["sources_earlier"], 0, 1)
        torch.testing.assert_close(parts, _minus(got["heads"], 0, 1), atol=1e-4, rtol=0, msg=rule)
    # no final norm: the token's projection after the last layer is its logit contribution (the page says so)
    for attn_only in (True, False):
        data = _no_norm_explorer(attn_only)
        assert data["structure"] == {"mlp": not attn_only, "norms": False, "final_norm": False}
        got = data["by_rule"]["softmax"]
        torch.testing.assert_close(_minus(got["token_proj"], 0, 1)[:, -1], _minus(got["tokens"], 0, 1), atol=1e-5,
                                   rtol=0)
    with pytest.raises(DePassError, match="takes the dict returned by explorer_data"):
        viz.explorer_html({k: v for k, v in case.data.items() if k != "structure"})


@pytest.mark.skipif(find_browser() is None and not os.environ.get("CI"),
                    reason=f"needs Chromium and chromedriver: {INSTALL}")
def test_page_words_follow_the_model_structure(tmp_path) -> None:
    """An attention-only model's page mentions no MLP (and hides the rule switch); a model without a final norm
    is not told that a final norm turns the stream into logits."""
    pages = {"ioi": _ioi_explorer(), "no_norm_attn": _no_norm_explorer(True),
             "no_norm_mlp": _no_norm_explorer(False), "gpt2": explorer_case("gpt2").data}
    with Browser() as b:
        for name, data in pages.items():
            b.open(viz.save_explorer(data, tmp_path / f"{name}.html"))
            s = data["structure"]
            token_note, footer = b.text("#details-note"), b.text("#footer")
            b.click('td.head[data-layer="0"][data-head="1"]')
            head_note = b.text("#details-note")
            words = " ".join((token_note, footer, head_note))
            assert ("MLP activations" in footer) == ("attention and MLP" in token_note) == s["mlp"], name
            assert b.js("return document.querySelector('.rules').hidden") is (not s["mlp"]), name
            if not s["mlp"]:
                assert "The model has no MLPs" in footer and "MLP activations" not in words, name
                assert "each MLP's activation" not in head_note and data["rule"] not in footer, name
                assert "parts add up exactly to the head's value" in head_note, name
            assert ("the final norm turns the last value" in token_note) == s["final_norm"], name
            assert ("norm scales" in footer) == s["norms"], name
            assert [e for e in b.log() if e["level"] in ("SEVERE", "ERROR")] == [], name


# ---------------------------------------------------------------------------------------- errors
def test_clear_errors(case, tmp_path) -> None:
    plain = depass_tl.capture(case.model, case.tokens)
    with pytest.raises(DePassError, match=r"extra_hooks=depass_tl.viz.explorer_hooks"):
        viz.explorer_caches(plain)
    with pytest.raises(DePassError, match="rules must be distinct names"):
        viz.explorer_caches(case.run, rules=("ratio", "nope"))
    with pytest.raises(DePassError, match="rules must be distinct names"):
        viz.explorer_caches(case.run, rules=("ratio", "ratio"))
    with pytest.raises(DePassError, match="takes a FrozenRun"):
        viz.explorer_caches(case.caches)  # type: ignore[arg-type]
    d_vocab = case.clean_logits.shape[0]
    with pytest.raises(DePassError, match=rf"target must be a token id in \[0, {d_vocab}\)"):
        viz.explorer_data(case.caches, target=d_vocab)
    with pytest.raises(DePassError, match="target must be a token id"):
        viz.explorer_data(case.caches, target=" Mary")  # type: ignore[arg-type]
    with pytest.raises(DePassError, match="contrast is the target itself"):
        viz.explorer_data(case.caches, target=3, contrast=3)
    with pytest.raises(DePassError, match="top_k must be a positive int"):
        viz.explorer_data(case.caches, target=3, top_k=0)
    one = viz.explorer_caches(case.run, rules=("max",), progress=False)
    with pytest.raises(DePassError, match=r"rule 'ratio' was not computed; the caches hold \['max'\]"):
        viz.explorer_data(one, target=3, rule="ratio")
    assert viz.explorer_data(one, target=3)["rules"] == ["max"]
    with pytest.raises(DePassError, match="must end in one of"):
        viz.save_explorer(case.data, tmp_path / "page.htm")
    with pytest.raises(DePassError, match="does not exist"):
        viz.save_explorer(case.data, tmp_path / "missing" / "page.html")
    with pytest.raises(DePassError, match="takes the dict returned by explorer_data"):
        viz.explorer_html({"prompt": "x"})


# ------------------------------------------------------------------------------- architectures
@pytest.mark.skipif(TL_MAJOR < 3, reason=f"tests/families.py builds TL >= 3 configs (installed TL {TL_VERSION})")
def test_head_breakdown_on_every_config_feature() -> None:
    """Every TL feature: each layer's parts are complete, and with the ratio rule each head's parts add
    up to the head (so the split by source position loses nothing), or the feature is refused clearly.
    TL 4: every feature its model classes build (the native Bridge, or the HF twin of tests/families.py)."""
    from depass_tl.toy.random_model import bridge_unsupported_fields
    from tests.families import HT_CONFIG_FEATURES, HT_FEATURE_TWINS, build_ht
    from tests.tl_cases import bridge_refusal

    refused, bridge_refused = {}, set()
    for name, config in HT_CONFIG_FEATURES.items():
        if not HAS_HOOKED and name not in HT_FEATURE_TWINS and bridge_unsupported_fields(config):
            continue  # TL 4 cannot build it (tests/tl_cases.py skips it by name elsewhere)
        model = build_ht(name, dtype=torch.float32)
        if bridge_refusal(model, config):  # depass_tl cannot replay it on a Bridge at all (MoE, SoLU)
            bridge_refused.add(name)
            continue
        toks = torch.randint(0, model.cfg.d_vocab, (1, 6), generator=torch.Generator().manual_seed(0))
        run = depass_tl.capture(model, toks, extra_hooks=viz.explorer_hooks(model.cfg.n_layers))
        try:
            caches = viz.explorer_caches(run, rules=("ratio",), progress=False)
        except UnsupportedModelError as e:
            refused[name] = str(e)
            continue
        data = viz.explorer_data(caches, target=1, contrast=2)
        with torch.no_grad():
            logits = model(toks)[0, -1].double()
        cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
        if cap > 0:  # soft-capped logits (Gemma-2): attributions are of the pre-cap logits, which sum exactly
            logits = cap * torch.atanh(logits / cap)
        clean = float(logits[1] - logits[2])
        got = data["by_rule"]["ratio"]
        heads, sources = _minus(got["heads"], 0, 1), _minus(got["sources"], 0, 1)
        parts = sources.sum(-1) + _minus(got["sources_earlier"], 0, 1)  # [L, H]
        scale = max(1.0, abs(clean))
        torch.testing.assert_close(parts, heads, atol=2e-4 * scale, rtol=0, msg=name)
        for l, dc in enumerate(caches.rules["ratio"].head_sources):
            assert max(dc.completeness_error().values()) < 1e-3 * scale, name
            assert float(parts[l].sum() + _minus(got["sources_rest"], 0, 1)[l]) == pytest.approx(
                clean, abs=2e-4 * scale), name
        assert not any(math.isnan(v) for row in data["attention"] for head in row for v in head)
    # Gemma-2-like with a random b_O: the post-attention norm would mix b_O into every part (heads() refuses too)
    assert bridge_refused == (set() if HAS_HOOKED else {"moe", "solu_ln", "clip_qkv"})
    if not HAS_HOOKED:  # TL 4's twin is HF Gemma-2, whose attention output has no bias: nothing to refuse
        assert refused == {}
        return
    assert refused.keys() == {"gemma2_like"}
    assert "layer 0 normalises the attention output together with a bias" in refused["gemma2_like"]


@pytest.mark.skipif(not HAS_BRIDGE, reason=f"TransformerBridge does not exist in TransformerLens {TL_VERSION}")
def test_head_breakdown_on_every_bridge_family() -> None:
    """GPT-2, Llama (GQA), NeoX (parallel), Qwen2, Gemma-2 (post-norms, soft caps) as TransformerBridge."""
    from tests.bridge_models import BRIDGE_FAMILIES, bridge_tokens, build_bridge

    for family in BRIDGE_FAMILIES:
        model, _ = build_bridge(family)
        toks = bridge_tokens(batch=1, pos=6)
        run = depass_tl.capture(model, toks, extra_hooks=viz.explorer_hooks(model.cfg.n_layers))
        data = viz.explorer_data(viz.explorer_caches(run, rules=("ratio",), progress=False), target=5, contrast=6)
        got = data["by_rule"]["ratio"]
        heads = _minus(got["heads"], 0, 1)
        parts = _minus(got["sources"], 0, 1).sum(-1) + _minus(got["sources_earlier"], 0, 1)  # [L, H]
        torch.testing.assert_close(parts, heads, atol=1e-4, rtol=0, msg=family)
        with torch.no_grad():
            logits = model(toks)[0, -1].double()
        cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
        if cap > 0:  # Gemma-2 soft-caps its logits; attributions are of the pre-cap logits, which sum exactly
            logits = cap * torch.atanh(logits / cap)
        for l in range(model.cfg.n_layers):
            total = float(parts[l].sum() + _minus(got["sources_rest"], 0, 1)[l])
            assert total == pytest.approx(float(logits[5] - logits[6]), abs=1e-4), family
