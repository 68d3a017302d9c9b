"""Component specs: completeness for every spec and start point, and agreement with TL's own numbers."""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl import DePassError
from tests.models import ARCHS, make_model, random_tokens
from tests.tl_cases import norm_atol, norm_tol

RULES = ["softmax", "ratio", "max"]


def _specs(model) -> dict:
    L = model.cfg.n_layers
    basis = torch.linalg.qr(torch.randn(model.cfg.d_model, 3, generator=torch.Generator().manual_seed(0),
                                        dtype=torch.float64)).Q
    specs = {
        "tokens": depass_tl.tokens(),
        "heads_one": depass_tl.heads(layer=1),
        "heads_all": depass_tl.heads(),
        "modules": depass_tl.modules(layer=0),
        "modules_all": depass_tl.modules(),
        "sources": depass_tl.sources(),
        "subspace": depass_tl.subspace(f"blocks.{L - 1}.hook_resid_pre", basis),
        "subspace_split": depass_tl.subspace("blocks.1.hook_resid_post", basis, split=True),
    }
    for hook in ("hook_resid_pre", "hook_resid_post") + (() if model.cfg.attn_only else ("hook_resid_mid",)):
        specs[f"tokens@{hook}"] = depass_tl.tokens(start=f"blocks.1.{hook}")
    if not model.cfg.attn_only:
        specs["neurons_idx"] = depass_tl.neurons(1, idx=[0, 5, 7])
        specs["neurons_topk_layers"] = depass_tl.neurons([0, 2], top_k=4)
    return specs


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("rule", RULES)
def test_every_spec_is_complete(arch: str, rule: str) -> None:
    model = make_model(arch, n_layers=3)
    toks = random_tokens(model)
    for name, spec in _specs(model).items():
        logits, dc = depass_tl.run_with_depass(model, toks, components=spec, mlp_rule=rule)
        errors = dc.completeness_error(relative=True)
        assert max(errors.values()) < norm_tol(model, 1e-10), (name, errors)
        ids = torch.tensor([1, 2])
        total = dc.logit_attrs(ids).reshape(-1, dc.group_size, 2).sum(1)  # per group
        torch.testing.assert_close(total, logits[torch.arange(2), -1, ids].expand_as(total), rtol=0,
                                   atol=norm_atol(model, 1e-10, logits))


def test_cache_holds_only_hooks_at_or_after_the_start() -> None:
    model = make_model("gpt2", n_layers=3)
    toks = random_tokens(model)
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.heads(layer=1))
    assert dc.start_hook == "blocks.1.hook_resid_mid"
    assert set(dc) == {"blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post",
                       "blocks.2.hook_resid_pre", "blocks.2.hook_attn_out", "blocks.2.hook_resid_mid",
                       "blocks.2.hook_mlp_out", "blocks.2.hook_resid_post", "unembed.hook_in"}
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.tokens(start="blocks.2.hook_resid_post"))
    assert set(dc) == {"blocks.2.hook_resid_post", "unembed.hook_in"}


@pytest.mark.parametrize("arch", ["gpt2", "llama", "attn_only"])
def test_head_components_equal_tl_head_results(arch: str) -> None:
    model = make_model(arch, n_layers=2)
    toks = random_tokens(model)
    _, cache = model.run_with_cache(toks)
    cache.compute_head_results()
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.heads(layer=1))
    start = dc[dc.start_hook]
    H = model.cfg.n_heads
    result = cache["blocks.1.attn.hook_result"]  # [batch, pos, head, d_model]
    for h in range(H):
        torch.testing.assert_close(start[dc.component(f"L1H{h}")], result[:, :, h], rtol=0, atol=1e-12)
    heads_plus_bias = start[:H].sum(0) + start[dc.component("bias")]
    torch.testing.assert_close(heads_plus_bias, cache["blocks.1.hook_attn_out"], rtol=0, atol=1e-12)
    torch.testing.assert_close(start[dc.component("rest")], cache["blocks.1.hook_resid_pre"], rtol=0, atol=0)


def test_last_layer_head_direct_part_equals_tl_dla() -> None:
    """The direct part (head output through the frozen final norm) equals TL's direct logit attribution."""
    model = make_model("lnpre", n_layers=2)  # LNPre: TL's apply_ln_to_stack is exact for it
    toks = random_tokens(model)
    _, cache = model.run_with_cache(toks)
    L = model.cfg.n_layers
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.heads(layer=L - 1), mlp_rule="ratio")
    tok = 3
    stack = cache.stack_head_results(layer=L, pos_slice=-1, apply_ln=True)  # [L*H, batch, d_model]
    tl_dla = (stack @ model.W_U[:, tok])[-model.cfg.n_heads:]  # the last layer's heads
    start = dc[dc.start_hook][: model.cfg.n_heads, :, -1]  # [head, batch, d_model]
    centred = start - start.mean(-1, keepdim=True)
    direct = (centred / cache["ln_final.hook_scale"][:, -1]) @ model.W_U[:, tok]
    torch.testing.assert_close(direct, tl_dla, rtol=0, atol=1e-10)
    # and the total (direct + through the last MLP) differs from the direct part
    assert not torch.allclose(dc.logit_attrs(tok)[: model.cfg.n_heads], direct)


def test_neuron_components_are_neuron_writes() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model)
    _, cache = model.run_with_cache(toks)
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.neurons(0, idx=[2, 9]))
    start = dc["blocks.0.hook_resid_post"]
    for n in (2, 9):
        expected = cache["blocks.0.mlp.hook_post"][..., n, None] * model.W_out[0, n]
        torch.testing.assert_close(start[dc.component(f"L0N{n}")], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(start[dc.component("rest")], cache["blocks.0.hook_resid_mid"])


def test_neuron_top_k_picks_the_largest_writes() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model)
    _, cache = model.run_with_cache(toks)
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.neurons(1, top_k=3))
    post = cache["blocks.1.mlp.hook_post"][:, -1].abs().sum(0)
    size = post * model.W_out[1].norm(dim=-1)
    expected = sorted(torch.topk(size, 3).indices.tolist())
    assert dc.labels[:3] == tuple(f"L1N{n}" for n in expected)


def test_neuron_top_k_reads_each_prompts_last_real_token_in_a_padded_batch() -> None:
    # pos=-1 means each prompt's last real token (as in logit_attrs); right padding puts a pad at the literal -1,
    # and the pad token here drives neuron 0 of layer 1 hard (its embedding is that neuron's input direction)
    model = make_model("gpt2")
    toks = random_tokens(model, batch=2, pos=8, seed=3).clamp(min=1)
    pad = 0
    toks[1, 3:] = pad
    mask = torch.ones_like(toks)
    mask[1, 3:] = 0
    with torch.no_grad():
        w = model.W_in[1][:, 0]
        model.W_E[pad] = 20 * w / w.norm()
    _, dc = depass_tl.run_with_depass(model, toks, attention_mask=mask, components=depass_tl.neurons(1, top_k=3))
    # each prompt run alone, unpadded: its last position is its last real token
    last = [model.run_with_cache(t[None])[1]["blocks.1.mlp.hook_post"][0, -1] for t in (toks[0], toks[1, :3])]
    size = (last[0].abs() + last[1].abs()) * model.W_out[1].norm(dim=-1)
    expected = sorted(torch.topk(size, 3).indices.tolist())
    _, padded = model.run_with_cache(toks, attention_mask=mask)
    at_pad = padded["blocks.1.mlp.hook_post"][:, -1].abs().sum(0) * model.W_out[1].norm(dim=-1)
    assert 0 in torch.topk(at_pad, 3).indices.tolist() and 0 not in expected  # the pad position would pick 0
    assert dc.labels[:3] == tuple(f"L1N{n}" for n in expected)


def test_subspace_with_full_basis_is_the_identity() -> None:
    """A full orthonormal basis puts everything in the subspace: same numbers as one whole component."""
    model = make_model("llama")
    toks = random_tokens(model)
    _, cache = model.run_with_cache(toks)
    hook = "blocks.1.hook_resid_pre"
    full = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).Q
    for rule in RULES:
        _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.subspace(hook, full), mlp_rule=rule)
        _, whole = depass_tl.run_with_depass(
            model, toks, mlp_rule=rule, components=depass_tl.custom(hook, cache[hook][None], ["all"])
        )
        assert float(dc[hook][dc.component("complement")].abs().max()) < 1e-12
        for name in whole:
            torch.testing.assert_close(dc[name][0], whole[name][0], rtol=0, atol=1e-10)


def test_subspace_split_parts_are_projections() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model)
    _, cache = model.run_with_cache(toks)
    V = torch.linalg.qr(torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))).Q
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.subspace("blocks.1.hook_resid_pre", V, split=True))
    h = cache["blocks.1.hook_resid_pre"]
    for i in range(2):
        torch.testing.assert_close(dc["blocks.1.hook_resid_pre"][i], (h @ V[:, i])[..., None] * V[:, i])


def test_a_full_basis_of_float32_precision_splits_a_float64_model_exactly() -> None:
    """A full basis is valid to max |VᵀV − I| <= 1e-4: split=True used the projections h·v_i, which sum to
    h V Vᵀ, not h (a float32 QR basis: 3e-8 off, refused by the float64 guard). The coordinates are now
    V⁻¹h, so the parts sum to h; they are the projections up to the basis's own error."""
    model = make_model("gpt2")
    toks = random_tokens(model)
    hook = "blocks.1.hook_resid_pre"
    V = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).Q.float()
    assert float((V.double().T @ V.double() - torch.eye(16, dtype=torch.float64)).abs().max()) > 1e-9
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.subspace(hook, V, split=True))
    assert dc.completeness.worst[1] <= 1e-9
    h = model.run_with_cache(toks)[1][hook]
    for i in range(16):
        projection = (h @ V[:, i].double())[..., None] * V[:, i].double()
        torch.testing.assert_close(dc[hook][i], projection, rtol=0, atol=1e-6)


def test_a_full_basis_splits_in_half_precision_accumulation() -> None:
    """The full-basis coordinates are solved in float32 (torch has no half-precision solve) and cast back."""
    model = make_model("gpt2", dtype=torch.float32)
    toks = random_tokens(model)
    V = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0))).Q
    spec = depass_tl.subspace("blocks.1.hook_resid_pre", V, split=True)
    _, dc = depass_tl.run_with_depass(model, toks, components=spec, dtype=torch.bfloat16)
    assert dc["blocks.1.hook_resid_pre"].dtype == torch.bfloat16 and dc.completeness.worst[1] <= dc.completeness.rtol


def test_subspace_basis_is_validated() -> None:
    with pytest.raises(DePassError, match="not orthonormal"):
        depass_tl.subspace("blocks.0.hook_resid_pre", torch.ones(16, 2))
    with pytest.raises(DePassError, match=r"vector \[d\] or a matrix \[d, k\]"):
        depass_tl.subspace("blocks.0.hook_resid_pre", torch.zeros(2, 3, 4))
    with pytest.raises(DePassError, match="NaN or inf"):
        depass_tl.subspace("blocks.0.hook_resid_pre", torch.full((4, 1), float("nan")))
    model = make_model("gpt2")
    with pytest.raises(DePassError, match="d_model=16"):
        depass_tl.run_with_depass(model, random_tokens(model),
                                  components=depass_tl.subspace("blocks.0.hook_resid_pre", torch.eye(8)[:, :2]))


def test_sources_sum_to_the_clean_logits_and_heads_carry_indirect_effects() -> None:
    model = make_model("gpt2", n_layers=3)
    toks = random_tokens(model)
    logits, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.sources(), mlp_rule="ratio")
    assert dc.labels[:3] == ("embed", "pos_embed", "L0H0") and dc.labels[-1] == "bias"
    for tok in (0, 7):
        torch.testing.assert_close(dc.logit_attrs(tok).sum(0), logits[:, -1, tok], rtol=0, atol=1e-10)
    # a layer-0 head's component reaches layer 2's attention output (indirect effect) ...
    assert float(dc["blocks.2.hook_attn_out"][dc.component("L0H1")].abs().max()) > 0
    # ... while a layer-2 head's component is zero until its layer writes
    assert float(dc["blocks.1.hook_resid_post"][dc.component("L2H0")].abs().max()) == 0


def test_sources_credit_the_first_module_on_each_path() -> None:
    """In the linear (ratio) replay, embed's credit is exactly its direct path through the final norm."""
    model = make_model("lnpre", n_layers=2)
    toks = random_tokens(model)
    _, cache = model.run_with_cache(toks)
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.sources(), mlp_rule="ratio")
    embed = cache["hook_embed"]
    direct = (embed - embed.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"]
    torch.testing.assert_close(dc["unembed.hook_in"][dc.component("embed")], direct, rtol=0, atol=1e-12)


def test_heads_all_layers_equal_separate_runs() -> None:
    """One pass over several groups gives the same numbers as one run per layer, for every rule."""
    model = make_model("gpt2", n_layers=3)
    toks = random_tokens(model)
    for rule in RULES:
        _, together = depass_tl.run_with_depass(model, toks, components=depass_tl.heads(), mlp_rule=rule)
        attrs = together.logit_attrs(5)
        K = together.group_size
        for l in range(3):
            _, alone = depass_tl.run_with_depass(model, toks, components=depass_tl.heads(layer=l), mlp_rule=rule)
            torch.testing.assert_close(attrs[l * K : (l + 1) * K], alone.logit_attrs(5), rtol=0, atol=1e-10)
        assert together.labels[K - 2 : K] == ("L0.rest", "L0.bias")


def test_group_sums_components() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model, pos=5)
    _, dc = depass_tl.run_with_depass(model, toks)
    g = dc.group({"first": ["tok0", "tok1"], "others": r"tok[2-4]"})
    assert g.labels == ("first", "others", "bias")
    torch.testing.assert_close(g.logit_attrs(3)[0], dc.logit_attrs(3)[:2].sum(0))
    assert max(g.completeness_error().values()) < 1e-10
    partial = dc.group({"pair": r"tok[01]"})
    assert partial.labels == ("pair", "tok2", "tok3", "tok4", "bias")
    with pytest.raises(DePassError, match="matches no component"):
        dc.group({"none": r"L\d+H\d+"})
    assert dc.group({"all": r".*"}).labels == ("all", "bias")
    with pytest.raises(DePassError, match="cannot be grouped"):
        dc.group({"x": ["tok0", "bias"]})


def test_spec_argument_errors() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model)
    with pytest.raises(DePassError, match="out of range"):
        depass_tl.run_with_depass(model, toks, components=depass_tl.heads(layer=7))
    with pytest.raises(DePassError, match="exactly one of idx"):
        depass_tl.neurons(0)
    with pytest.raises(DePassError, match="out of range for d_mlp"):
        depass_tl.run_with_depass(model, toks, components=depass_tl.neurons(0, idx=[999]))
    with pytest.raises(DePassError, match="no MLP"):
        attn = make_model("attn_only")
        depass_tl.run_with_depass(attn, random_tokens(attn), components=depass_tl.neurons(0, idx=[1]))


@pytest.mark.parametrize("family", ["gptj", "neox", "mixtral", "qwen2", "bloom", "opt"])
def test_specs_on_real_families(family: str) -> None:
    """Head, module and (dense) neuron specs on converted families, parallel blocks and MoE included."""
    from tests.families import BRIDGE_REFUSED_FAMILIES, build_family, family_tokens

    model, _ = build_family(family, dtype=torch.float64)
    toks = family_tokens()
    if family in BRIDGE_REFUSED_FAMILIES:  # TL 4: depass_tl refuses these on the Bridge
        with pytest.raises(DePassError, match=BRIDGE_REFUSED_FAMILIES[family]):
            depass_tl.run_with_depass(model, toks, components=depass_tl.heads(layer=1))
        return
    _, cache = model.run_with_cache(toks)
    cache.compute_head_results()
    specs = [depass_tl.heads(layer=1), depass_tl.heads(), depass_tl.modules(0), depass_tl.sources()]
    if not model.cfg.num_experts:
        specs.append(depass_tl.neurons(0, top_k=3))
    for spec in specs:
        for rule in RULES:
            _, dc = depass_tl.run_with_depass(model, toks, components=spec, mlp_rule=rule)
            assert max(dc.completeness_error(relative=True).values()) < norm_tol(model, 1e-9), (family, spec, rule)
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.heads(layer=1))
    start = dc[dc.start_hook]
    result = cache["blocks.1.attn.hook_result"][:, :, 0]
    torch.testing.assert_close(start[0], result, rtol=0, atol=norm_atol(model, 1e-10, result))
    if model.cfg.parallel_attn_mlp:
        assert dc.start_hook == "blocks.1.hook_resid_post"


def test_specs_on_post_norm_blocks_and_moe_neurons() -> None:
    from tests.families import BRIDGE_REFUSED_FAMILIES, build_family, family_tokens

    gemma, _ = build_family("gemma2", dtype=torch.float64)
    toks = family_tokens()
    specs = (depass_tl.heads(0), depass_tl.heads(), depass_tl.modules(0), depass_tl.sources(),
             depass_tl.neurons(0, idx=[1, 4]))
    for spec in specs:
        _, dc = depass_tl.run_with_depass(gemma, toks, components=spec)
        assert max(dc.completeness_error(relative=True).values()) < norm_tol(gemma, 1e-9), spec
    # post-normed head results: TL's hook_result passed through ln1_post with its frozen scale
    _, cache = gemma.run_with_cache(toks)
    cache.compute_head_results()
    _, dc = depass_tl.run_with_depass(gemma, toks, components=depass_tl.heads(0))
    w = gemma.blocks[0].ln1_post.w  # HookedTransformer stores the effective gain (TL folds Gemma's 1 + w)
    if getattr(gemma.cfg, "rmsnorm_uses_offset", False):  # the Bridge stores Gemma's offset w
        w = 1 + w
    expected = cache["blocks.0.attn.hook_result"][:, :, 1] / cache["blocks.0.ln1_post.hook_scale"] * w
    torch.testing.assert_close(dc[dc.start_hook][1], expected, rtol=0, atol=norm_atol(gemma, 1e-10, expected))
    moe, _ = build_family("mixtral", dtype=torch.float64)
    with pytest.raises(DePassError, match=BRIDGE_REFUSED_FAMILIES.get("mixtral", "mixture of experts")):
        depass_tl.run_with_depass(moe, family_tokens(), components=depass_tl.neurons(0, idx=[1]))
