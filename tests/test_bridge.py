"""DePass on ``TransformerBridge`` (TL 3.x / 4.x): exactness, API, errors, hygiene and references.

Models are tiny random HF models of five families booted offline from a local folder with a
tokenizer (tests/bridge_models.py), in raw mode and in compatibility mode. On TL 4 this module is the
core suite (HookedTransformer is gone); on TL 3 it also checks that a compatibility-mode Bridge gives
the same decomposition as the HookedTransformer converted from the same weights.

References (independent of the engine):

* an explicit ``ratio``-rule decomposition computed from the *Hugging Face* modules' weights
  (not the Bridge's, not the ModelView's) with the norm scales, patterns and MLP activations of
  the clean run frozen (GPT-2: LN, Conv1D, biases; Llama: RMS, GQA, gated MLP);
* on TL 3, the HookedTransformer backend on the same weights.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._tl_version import HAS_HOOKED, TL_VERSION, requires_bridge
from tests.tl_cases import cases_unless_bridge

pytestmark = [requires_bridge, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

import depass_tl
from depass_tl.replay.rules import rule_names
from depass_tl import DePassError, UnsupportedModelError
from depass_tl.backends import read_model_view
from tests.bridge_models import (  # imports on TL 2 too (builds nothing at import); the guard skips the tests
    BRIDGE_FAMILIES, VOCAB, boot_folder, bridge_tokens, build_bridge, build_sized_bridge, save_hf_model,
)

MODES = [False, True]
MODE_IDS = ["raw", "compat"]
RULES = rule_names()  # every registered rule
#: float32 models: max |Σ components − clean| relative to max |clean| (observed ≤ 1e-6).
REL_TOL = 2e-5


def _max_rel_error(dc) -> float:
    return max(dc.completeness_error(relative=True).values())


def _n_hooks(model) -> int:
    """Hooks on the model's HookPoints (the Bridge lists a HookPoint under its alias names too: count it once)."""
    points = {id(hp): hp for hp in model.hook_dict.values()}.values()
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in points)


# --------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("compat", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("family", BRIDGE_FAMILIES)
def test_exact_on_every_family(family: str, compat: bool) -> None:
    """Σ components = clean activation at every hook and at the logits, for every MLP rule."""
    bridge, hf_model = build_bridge(family, compat=compat)
    toks = bridge_tokens()
    for rule in RULES:
        logits, dc = depass_tl.run_with_depass(bridge, toks, mlp_rule=rule)
        assert _max_rel_error(dc) < REL_TOL, (family, compat, rule, dc.completeness_error(relative=True))
        ids = torch.tensor([5, 9])
        # logit attributions sum to the pre-soft-cap logits (Gemma-2 caps them; others are uncapped)
        torch.testing.assert_close(dc.logit_attrs(ids).sum(0), dc.clean_last_logits[torch.arange(2), ids],
                                   rtol=0, atol=1e-4)
        if family != "gemma2":
            torch.testing.assert_close(dc.clean_last_logits, logits[:, -1], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(logits, bridge(toks), rtol=0, atol=0)
        if not compat:  # the raw Bridge is the HF model
            torch.testing.assert_close(logits, hf_model(toks).logits, rtol=0, atol=1e-5)
    assert dc.labels == tuple(f"tok{p}" for p in range(toks.shape[1])) + ("bias",)


@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_raw_and_compat_give_the_same_token_logit_differences(family: str) -> None:
    """Weight processing only moves mass along directions every LayerNorm removes, or into bias."""
    toks = bridge_tokens()
    diffs = []
    for compat in MODES:
        bridge, _ = build_bridge(family, compat=compat)
        _, dc = depass_tl.run_with_depass(bridge, toks, mlp_rule="ratio")
        diffs.append(dc.logit_diff_attrs(5, 9)[:-1])  # token components (bias excluded)
    torch.testing.assert_close(diffs[0], diffs[1], rtol=0, atol=1e-4)


@settings(max_examples=6, deadline=None)
@given(
    family=st.sampled_from(["gpt2", "llama", "neox"]),
    n_layers=st.integers(1, 2),
    n_heads=st.sampled_from([2, 4]),
    d_head=st.sampled_from([4, 8]),
    seed=st.integers(0, 3),
    rule=st.sampled_from(RULES),
    compat=st.booleans(),
    pos=st.integers(1, 6),
)
def test_completeness_property(family, n_layers, n_heads, d_head, seed, rule, compat, pos) -> None:
    bridge = build_sized_bridge(family, n_layers=n_layers, d_model=n_heads * d_head, n_heads=n_heads,
                                d_mlp=24, seed=seed, compat=compat)
    toks = bridge_tokens(batch=2, pos=pos, seed=seed)
    _, dc = depass_tl.run_with_depass(bridge, toks, mlp_rule=rule)
    assert _max_rel_error(dc) < REL_TOL
    for p in range(1, pos):  # causality: a token reaches no earlier position
        assert torch.all(dc["unembed.hook_in"][dc.component(f"tok{p}"), :, :p] == 0)


# --------------------------------------------------------------------------------------- the view


def test_view_reads_bridge_weights() -> None:
    """GQA unexpanded, None biases, Gemma offset norms, post-norms, parallel blocks, folded norms."""
    llama, hf_llama = build_bridge("llama")
    view = read_model_view(llama)
    assert view.backend == "TransformerBridge"
    attn = view.blocks[0].attn
    assert attn.W_V.shape == (2, 32, 8) and attn.kv_of_head.tolist() == [0, 0, 1, 1]
    assert attn.b_V is None and attn.b_O is None and view.blocks[0].mlp.kind == "gated"
    torch.testing.assert_close(view.blocks[0].ln1.w, hf_llama.model.layers[0].input_layernorm.weight)
    assert view.blocks[0].ln1.kind == "RMS"

    gemma, hf_gemma = build_bridge("gemma2")
    gview = read_model_view(gemma)
    layer = hf_gemma.model.layers[0]
    torch.testing.assert_close(gview.blocks[0].ln1.w, 1 + layer.input_layernorm.weight)
    torch.testing.assert_close(gview.blocks[0].ln1_post.w, 1 + layer.post_attention_layernorm.weight)
    assert gview.blocks[0].ln2_post is not None and gview.output_logits_soft_cap == 3.0

    neox_view = read_model_view(build_bridge("neox")[0])
    assert all(b.parallel for b in neox_view.blocks)

    folded = read_model_view(build_bridge("gpt2", compat=True)[0]).blocks[0].ln1
    assert folded.kind == "LN" and folded.b is None and torch.all(folded.w == 1)


# --------------------------------------------------------------------------------------- API


def test_method_equals_free_function() -> None:
    bridge, _ = build_bridge("llama")
    toks = bridge_tokens()
    logits, dc = bridge.run_with_depass(toks, mlp_rule="ratio")
    free_logits, free_dc = depass_tl.run_with_depass(bridge, toks, mlp_rule="ratio")
    torch.testing.assert_close(logits, free_logits, rtol=0, atol=0)
    assert set(dc) == set(free_dc)
    for hook in dc:
        torch.testing.assert_close(dc[hook], free_dc[hook], rtol=0, atol=0)


def test_string_input_and_padded_batch() -> None:
    bridge, _ = build_bridge("gpt2")
    logits, dc = bridge.run_with_depass("t1 t2 t3 t4")
    assert dc.str_tokens is not None and dc.str_tokens[0] == ("<bos>", "t1", "t2", "t3", "t4")
    torch.testing.assert_close(dc.logit_attrs(" t5").sum(0), logits[:, -1, bridge.to_single_token("t5")],
                               rtol=0, atol=1e-4)
    prompts = ["t1 t2 t3 t4 t5", "t6 t7"]
    for side in ("left", "right"):
        _, padded = depass_tl.run_with_depass(bridge, prompts, padding_side=side, mlp_rule="ratio")
        assert _max_rel_error(padded) < REL_TOL
        for b, prompt in enumerate(prompts):
            _, alone = depass_tl.run_with_depass(bridge, prompt, mlp_rule="ratio")
            torch.testing.assert_close(padded.logit_attrs(9)[padded.component("bias"), b],
                                       alone.logit_attrs(9)[alone.component("bias"), 0], rtol=0, atol=1e-4)


#: Specs that apply per family. Not listed (spec-level limits, the same on HookedTransformer): heads() and
#: neurons() start at hook_resid_mid, which parallel blocks (NeoX) do not have; heads() on Gemma-2 sums
#: head outputs before the post-attention norm, so it is refused there with a DePassError.
_SPECS_BY_FAMILY = {
    "gpt2": ("heads", "modules", "neurons", "sources", "tokens@mid"),
    "llama": ("heads", "modules", "neurons", "sources", "tokens@mid"),
    "neox": ("modules", "sources", "tokens@pre"),
    "gemma2": ("modules", "neurons", "sources", "tokens@mid"),
}


@pytest.mark.parametrize("compat", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("family", sorted(_SPECS_BY_FAMILY))
def test_component_specs(family: str, compat: bool) -> None:
    bridge, _ = build_bridge(family, compat=compat)
    toks = bridge_tokens()
    specs = {
        "heads": depass_tl.heads(layer=1),
        "modules": depass_tl.modules(),
        "neurons": depass_tl.neurons(0, idx=[1, 3]),
        "sources": depass_tl.sources(),
        "tokens@mid": depass_tl.tokens(start="blocks.1.hook_resid_mid"),
        "tokens@pre": depass_tl.tokens(start="blocks.1.hook_resid_pre"),
    }
    for name in _SPECS_BY_FAMILY[family]:
        _, dc = depass_tl.run_with_depass(bridge, toks, components=specs[name])
        assert _max_rel_error(dc) < REL_TOL, name


def test_names_filter() -> None:
    bridge, _ = build_bridge("qwen2")
    _, dc = depass_tl.run_with_depass(bridge, bridge_tokens(), names_filter=["blocks.1.hook_resid_post"])
    assert "blocks.1.hook_resid_post" in dc and "blocks.0.hook_resid_post" not in dc


# --------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("compat", MODES, ids=MODE_IDS)
def test_moe_bridge_is_refused(compat: bool) -> None:
    bridge, _ = build_bridge("mixtral", compat=compat)
    with pytest.raises(UnsupportedModelError, match="mixture-of-experts block .*no expert weights"):
        depass_tl.run_with_depass(bridge, bridge_tokens())
    assert _n_hooks(bridge) == 0


def test_encoder_bridge_goes_to_decompx() -> None:
    """A BERT Bridge is decomposed by DecompX (tests/decompx); the decoder replay refuses encoders."""
    from depass_tl.backends.bridge import read_bridge_view

    bridge, _ = build_bridge("bert")
    with pytest.raises(DePassError, match="no classification head of its own, so DecompX needs a head"):
        depass_tl.run_with_depass(bridge, bridge_tokens())
    with pytest.raises(UnsupportedModelError, match="wraps an encoder .*DecompX supports BERT"):
        read_bridge_view(bridge)


@pytest.mark.parametrize(
    "tokens, match",
    [
        (torch.tensor([[1.0, 2.0]]), "integer tensor"),
        (torch.tensor([[1, VOCAB + 3]]), r"must lie in \[0,"),
        (torch.zeros(1, 0, dtype=torch.long), "non-empty"),
    ],
)
def test_bad_tokens(tokens, match: str) -> None:
    with pytest.raises(DePassError, match=match):
        depass_tl.run_with_depass(build_bridge("gpt2")[0], tokens)


def test_unknown_rule_and_hook() -> None:
    bridge, _ = build_bridge("gpt2")
    with pytest.raises(DePassError):
        depass_tl.run_with_depass(bridge, bridge_tokens(), mlp_rule="nope")
    with pytest.raises(DePassError, match="unknown hook"):
        depass_tl.capture(bridge, bridge_tokens(), extra_hooks=["blocks.0.hook_nope"])


# --------------------------------------------------------------------------------------- hygiene


def test_no_hooks_left_and_weights_unchanged() -> None:
    bridge, _ = build_bridge("gemma2", compat=True)
    before = {k: v.clone() for k, v in bridge.state_dict().items()}
    depass_tl.run_with_depass(bridge, bridge_tokens())
    assert _n_hooks(bridge) == 0
    after = bridge.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_no_hooks_left_after_the_forward_raises() -> None:
    bridge, _ = build_bridge("gpt2", fresh=True)

    def broken(*args, **kwargs):
        raise RuntimeError("boom in the MLP")

    bridge.blocks[1].mlp.forward = broken  # this model belongs to the test
    with pytest.raises(RuntimeError, match="boom"):
        depass_tl.run_with_depass(bridge, bridge_tokens())
    assert _n_hooks(bridge) == 0


def test_user_hooks_are_not_touched() -> None:
    bridge, _ = build_bridge("llama", fresh=True)
    seen = []
    bridge.blocks[0].hook_resid_pre.add_hook(lambda act, hook: seen.append(hook.name))
    depass_tl.run_with_depass(bridge, bridge_tokens())
    assert len(seen) == 1 and _n_hooks(bridge) == 1  # the Bridge names it by its alias, blocks.0.hook_in
    bridge.reset_hooks()


# --------------------------------------------------------------------------------------- references


def _ratio_reference_from_hf(family: str, hf_model, cache, tokens) -> dict[str, torch.Tensor]:
    """Token-level ``ratio`` DePass from the HF modules' weights, clean coefficients frozen.

    Components: ``tok p`` starts as the clean ``blocks.0.hook_resid_pre`` at position p, ``bias``
    (last) starts at 0 and receives every constant. Returns ``blocks.l.hook_resid_post`` and
    ``unembed.hook_in`` as ``[component, batch, pos, d_model]`` and ``logits`` ``[component, batch, d_vocab]``
    at the last position. Float64 throughout.
    """
    f64 = torch.float64
    x0 = cache["blocks.0.hook_resid_pre"].to(f64)
    B, P, D = x0.shape
    comps = torch.zeros(P + 1, B, P, D, dtype=f64)
    for p in range(P):
        comps[p, :, p] = x0[:, p]
    is_bias = torch.zeros(P + 1, 1, 1, 1, dtype=f64)
    is_bias[-1] = 1
    out: dict[str, torch.Tensor] = {}

    def norm(x, scale, weight, bias=None, center=True):
        if center:
            x = x - x.mean(-1, keepdim=True)
        x = x / scale.to(f64) * weight.to(f64)
        return x if bias is None else x + is_bias * bias.to(f64)

    def attention(v, pattern, W_O, b_O, n_heads):  # v: [C, B, P, kv, dh]
        kv = v.shape[3]
        v = v.repeat_interleave(n_heads // kv, dim=3)  # [C, B, P, H, dh]
        z = torch.einsum("bhqk,cbkhd->cbqhd", pattern.to(f64), v)
        o = z.reshape(*z.shape[:3], -1) @ W_O.to(f64)
        return o if b_O is None else o + is_bias * b_O.to(f64)

    if family == "gpt2":
        layers, H = hf_model.transformer.h, hf_model.config.n_head
        for l, layer in enumerate(layers):
            c = f"blocks.{l}."
            x = norm(comps, cache[c + "ln1.hook_scale"], layer.ln_1.weight, layer.ln_1.bias)
            W = layer.attn.c_attn.weight.to(f64)[:, 2 * D:]  # Conv1D: [d_model, 3 d_model], value part
            v = x @ W + is_bias * layer.attn.c_attn.bias.to(f64)[2 * D:]
            comps = comps + attention(v.reshape(*v.shape[:3], H, -1), cache[c + "attn.hook_pattern"],
                                      layer.attn.c_proj.weight, layer.attn.c_proj.bias, H)
            x = norm(comps, cache[c + "ln2.hook_scale"], layer.ln_2.weight, layer.ln_2.bias)
            pre_c = x @ layer.mlp.c_fc.weight.to(f64) + is_bias * layer.mlp.c_fc.bias.to(f64)
            slope = cache[c + "mlp.hook_post"].to(f64) / cache[c + "mlp.hook_pre"].to(f64)
            comps = comps + (slope * pre_c) @ layer.mlp.c_proj.weight.to(f64) + is_bias * layer.mlp.c_proj.bias.to(f64)
            out[c + "hook_resid_post"] = comps
        final = norm(comps, cache["ln_final.hook_scale"], hf_model.transformer.ln_f.weight,
                     hf_model.transformer.ln_f.bias)
    else:  # llama: RMS, GQA, gated SiLU, no biases
        layers, H = hf_model.model.layers, hf_model.config.num_attention_heads
        for l, layer in enumerate(layers):
            c = f"blocks.{l}."
            x = norm(comps, cache[c + "ln1.hook_scale"], layer.input_layernorm.weight, center=False)
            v = x @ layer.self_attn.v_proj.weight.to(f64).T  # [C, B, P, kv * dh]
            n_kv = hf_model.config.num_key_value_heads
            comps = comps + attention(v.reshape(*v.shape[:3], n_kv, -1), cache[c + "attn.hook_pattern"],
                                      layer.self_attn.o_proj.weight.T, None, H)
            x = norm(comps, cache[c + "ln2.hook_scale"], layer.post_attention_layernorm.weight, center=False)
            gate = torch.nn.functional.silu(x.sum(0) @ layer.mlp.gate_proj.weight.to(f64).T)  # clean, frozen
            post_c = gate * (x @ layer.mlp.up_proj.weight.to(f64).T)
            comps = comps + post_c @ layer.mlp.down_proj.weight.to(f64).T
            out[c + "hook_resid_post"] = comps
        final = norm(comps, cache["ln_final.hook_scale"], hf_model.model.norm.weight, center=False)
    out["unembed.hook_in"] = final
    out["logits"] = final[:, :, -1] @ hf_model.lm_head.weight.to(f64).T
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_engine_matches_hf_weight_reference(family: str) -> None:
    """The raw Bridge's ratio decomposition equals one computed by hand from the HF weights."""
    bridge, hf_model = build_bridge(family)
    toks = bridge_tokens()
    logits, dc = depass_tl.run_with_depass(bridge, toks, mlp_rule="ratio", dtype=torch.float64)
    _, cache = bridge.run_with_cache(toks)
    ref = _ratio_reference_from_hf(family, hf_model, cache, toks)
    for hook, expected in ref.items():
        if hook == "logits":
            got = torch.stack([dc.logit_attrs(t) for t in range(VOCAB)], dim=-1)  # [component, batch, vocab]
        else:
            got = dc[hook]
        torch.testing.assert_close(got.to(torch.float64), expected, rtol=0, atol=2e-4, msg=hook)
    torch.testing.assert_close(ref["logits"].sum(0), logits[:, -1].to(torch.float64), rtol=0, atol=1e-4)


@pytest.mark.skipif(not HAS_HOOKED, reason=f"needs HookedTransformer (TL < 4); installed TransformerLens {TL_VERSION}")
@cases_unless_bridge("family", ["gpt2", "llama", "neox", "qwen2", "gemma2"])  # TL 4: one skip, not five
def test_compat_bridge_equals_hooked_transformer(family: str) -> None:
    """TL 3: a compatibility-mode Bridge and the HookedTransformer from the same weights (same processing)
    give the same decomposition at every hook."""
    from tests.families import build_family, family_tokens, from_pretrained_flags

    model, hf_model = build_family(family, **from_pretrained_flags(family))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = boot_folder(save_hf_model(hf_model), compat=True)
    toks = family_tokens()
    for rule in ("softmax", "ratio"):
        ht_logits, ht_dc = depass_tl.run_with_depass(model, toks, mlp_rule=rule)
        br_logits, br_dc = depass_tl.run_with_depass(bridge, toks, mlp_rule=rule)
        torch.testing.assert_close(br_logits, ht_logits, rtol=0, atol=1e-4)
        assert set(br_dc) == set(ht_dc) and br_dc.labels == ht_dc.labels
        for hook in ht_dc:
            torch.testing.assert_close(br_dc[hook], ht_dc[hook], rtol=0, atol=1e-3, msg=(family, rule, hook))
