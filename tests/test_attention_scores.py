"""Attention-score attributions: exact on every supported architecture, checked against TL's own modules.

The oracle runs the real TransformerLens layer once per component: the layer's input is replaced by that
component alone, the norm scale is frozen at its clean value (``ln1.hook_scale``), and the other side of
the score (the query, or the key) is patched back to its clean value. The score that comes out minus the
score of an all-zero input is the component's share; the all-zero score is the constant (bias) share.
Nothing of depass_tl's arithmetic is reused.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch

import depass_tl
from depass_tl.attention_scores import attention_score_attrs
from depass_tl.backends.bridge import is_bridge
from depass_tl.errors import DePassError, HookNotFoundError, UnsupportedModelError
from tests._tl_version import HAS_HOOKED
from tests.families import FAMILIES, HT_CONFIG_FEATURES, build_family, build_ht, family_tokens, from_pretrained_flags
from tests.models import config_model
from tests.tl_cases import bridge_refusal, norm_atol

warnings.filterwarnings("ignore", category=DeprecationWarning)

# config -> the field the refusal must name
REFUSED_FEATURES = {
    "alibi": "'alibi'", "post_embedding_ln": "'alibi'", "gemma2_like": "attn_scores_soft_cap",
    "split_qkv_attn_result": "use_split_qkv_input", "clip_qkv": "clip_qkv",
    # TL 4 builds qk_norm as a Qwen3 Bridge (tests/families.py HT_FEATURE_TWINS), whose cfg says use_qk_norm=False
    "qk_norm": "use_qk_norm" if HAS_HOOKED else "q_norm / k_norm modules", "shortformer": "'shortformer'",
}
REFUSED_FAMILIES = {"bloom": "'alibi'", "gemma2": "attn_scores_soft_cap"}
LAYER = 1


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@contextlib.contextmanager
def _softmax_inputs(module: torch.nn.Module):
    """Record what ``torch.nn.functional.softmax`` receives while ``module`` runs: the model's own pre-softmax scores.

    On a TransformerBridge ``hook_attn_scores`` may hold the pattern (TL 4's native model and Bridges around
    Hugging Face modules that return only the weights), so the scores are taken at the softmax's input in
    the wrapped module's own code (TL's ``NativeAttention``, HF's eager attention).
    """
    seen: list[torch.Tensor] = []
    inside = []
    real = torch.nn.functional.softmax

    def spy(x, *args, **kwargs):
        if inside:
            seen.append(x.detach().clone())
        return real(x, *args, **kwargs)

    handles = [module.register_forward_pre_hook(lambda *a: inside.append(1)),
               module.register_forward_hook(lambda *a: inside.clear())]
    torch.nn.functional.softmax = spy
    try:
        yield seen
    finally:
        torch.nn.functional.softmax = real
        for h in handles:
            h.remove()


def _oracle(model, tokens, dc, layer: int, side: str, q_pos: torch.Tensor, k_pos: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """[component, batch, head] shares from TL's own layer, one forward per component (see module docstring)."""
    _, clean = model.run_with_cache(tokens, attention_mask=mask)
    rotary = model.cfg.positional_embedding_type == "rotary"
    keep = "k" if side == "query" else "q"  # the side that stays whole is patched back to clean
    keep_hooks = [f"blocks.{layer}.attn.hook_{keep}"] + ([f"blocks.{layer}.attn.hook_rot_{keep}"] if rotary else [])
    keep_hooks = [h for h in keep_hooks if h in clean.cache_dict]  # TL's native Bridge fires no hook_rot_q/k
    name = f"blocks.{layer}.hook_resid_pre"
    x = dc[name] if name in dc else dc[f"blocks.{layer - 1}.hook_resid_post"]

    def scores_for(resid: torch.Tensor) -> torch.Tensor:
        hooks = [(name, lambda act, hook: resid.to(act.dtype))]
        if f"blocks.{layer}.ln1.hook_scale" in clean.cache_dict:
            hooks.append((f"blocks.{layer}.ln1.hook_scale", lambda act, hook: clean[hook.name]))
        hooks += [(h, lambda act, hook: clean[hook.name]) for h in keep_hooks]
        with model.hooks(fwd_hooks=hooks):
            if is_bridge(model):
                with _softmax_inputs(model.blocks[layer].attn) as seen:
                    model(tokens, attention_mask=mask)
                assert len(seen) == 1 and seen[0].ndim == 4, [tuple(t.shape) for t in seen]
                s = seen[0]
            else:
                _, cache = model.run_with_cache(tokens, attention_mask=mask,
                                                names_filter=f"blocks.{layer}.attn.hook_attn_scores")
                s = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        b = torch.arange(tokens.shape[0])
        return s[b, :, q_pos, k_pos]  # [batch, head]

    zero = scores_for(torch.zeros_like(x[0]))
    shares = torch.stack([scores_for(x[c]) - zero for c in range(x.shape[0])])
    shares[dc.bias_rows] += zero
    return shares


def _check(model, tokens, components, *, layer: int = LAYER, mask: torch.Tensor | None = None) -> None:
    _, dc = depass_tl.run_with_depass(model, tokens, components=components, attention_mask=mask)
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    q_pos = dc.last_positions
    k_pos = torch.stack([q_pos[0] - 1, q_pos[1] - 2])  # inside every sliding window used here
    for side in ("key", "query"):
        att = attention_score_attrs(model, dc, cache, layer, key_pos=k_pos, side=side)
        assert att.values.shape == (len(dc.labels), tokens.shape[0], model.cfg.n_heads)
        assert torch.equal(att.query_pos, q_pos) and torch.equal(att.key_pos, k_pos)
        # a Bridge's float32 RMS norms round its clean q/k (tests/tl_cases.py): the split's own sum is exact
        assert att.completeness_error() < norm_atol(model, 1e-9 * max(1.0, float(att.clean.abs().max())), att.clean)
        expected = _oracle(model, tokens, dc, layer, side, q_pos, k_pos, mask)
        assert torch.allclose(att.values, expected.to(att.values.dtype), atol=1e-9, rtol=1e-7), side


def _check_or_refused(model, tokens, *, refused: str | None, bridge_refused: str | None = None) -> None:
    if bridge_refused:  # depass_tl cannot decompose this model's layer input on a Bridge at all (tests/tl_cases.py)
        with pytest.raises(UnsupportedModelError, match=bridge_refused):
            depass_tl.run_with_depass(model, tokens, components=depass_tl.tokens())
        return
    if not refused:
        _check(model, tokens, depass_tl.heads(0))
        return
    _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.tokens())
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(DePassError, match=f"cannot split the scores of a model with [^:]*{refused}"):
        attention_score_attrs(model, dc, cache, LAYER, key_pos=1)


@pytest.mark.parametrize("name", sorted(HT_CONFIG_FEATURES))
def test_every_config_feature_is_exact_or_refused(name: str) -> None:
    model = build_ht(name)
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    _check_or_refused(model, tokens, refused=REFUSED_FEATURES.get(name),
                      bridge_refused=bridge_refusal(model, HT_CONFIG_FEATURES[name]))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_exact_or_refused(family: str) -> None:
    model, _ = build_family(family, dtype=torch.float64, **from_pretrained_flags(family))
    tokens = family_tokens()
    _check_or_refused(model, tokens, refused=REFUSED_FAMILIES.get(family),
                      bridge_refused=bridge_refusal(model, family=family))


def test_token_components_and_several_groups() -> None:
    model = build_ht("llama_like")  # rotary + GQA
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(1))
    _check(model, tokens, depass_tl.tokens())
    _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads())  # groups L0 and L1
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(HookNotFoundError, match="layer 1's input"):
        attention_score_attrs(model, dc, cache, 1, key_pos=1)  # layer 1's input is not stored: heads(0) is needed


def test_induction_toy_keys_are_built_by_the_previous_token_head() -> None:
    """Known answer: on a repeated sequence the induction heads' key match comes from L0H0 (prev-token head)."""
    from depass_tl import toy
    from depass_tl.toy.data import repeated_sequences

    model, _ = toy.load("induction")
    half = 16
    tokens = repeated_sequences(4, half_len=half, d_vocab=model.cfg.d_vocab, seed=3)[:, : half + 8]
    _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(0))
    _, cache = model.run_with_cache(tokens)
    key = 8  # the query (position half + 7) holds token 7's copy; the induction target is position 8
    att = attention_score_attrs(model, dc, cache, 1, key_pos=key)
    assert att.completeness_error() < 1e-4
    top = att.values.mean(1).argmax(0)  # [head] -> component
    assert [att.labels[int(c)] for c in top] == ["L0H0"] * model.cfg.n_heads
    query_side = attention_score_attrs(model, dc, cache, 1, key_pos=key, side="query")
    assert {att.labels[int(c)] for c in query_side.values.mean(1).argmax(0)} == {"rest"}  # the current token
    assert len(att.to_dataframe()) == len(att.labels) * 4 * model.cfg.n_heads


def test_bad_arguments_are_refused() -> None:
    model = build_ht("gpt2_like")
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 6), generator=torch.Generator().manual_seed(2))
    _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(0))
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(DePassError, match="HookedTransformer"):
        attention_score_attrs(torch.nn.Linear(2, 2), dc, cache, 1, key_pos=0)
    with pytest.raises(DePassError, match="after query_pos"):
        attention_score_attrs(model, dc, cache, 1, key_pos=4, query_pos=2)
    with pytest.raises(DePassError, match=r"real tokens.*got \[9, 9\]"):
        attention_score_attrs(model, dc, cache, 1, key_pos=9)
    with pytest.raises(DePassError, match=r"real tokens.*got \[-1, -1\]"):
        attention_score_attrs(model, dc, cache, 1, key_pos=-7)  # 7 back from the last of 6 tokens
    assert attention_score_attrs(model, dc, cache, 1, key_pos=-2).key_pos.tolist() == [4, 4]
    with pytest.raises(DePassError, match="heads must be"):
        attention_score_attrs(model, dc, cache, 1, key_pos=0, heads=[7])
    with pytest.raises(DePassError, match="side must be"):
        attention_score_attrs(model, dc, cache, 1, key_pos=0, side="value")  # type: ignore[arg-type]
    _, other_cache = model.run_with_cache(tokens.flip(1))
    with pytest.raises(DePassError, match="same model and input"):
        attention_score_attrs(model, dc, other_cache, 1, key_pos=0)
    one_head = attention_score_attrs(model, dc, cache, 1, key_pos=0, heads=2)
    all_heads = attention_score_attrs(model, dc, cache, 1, key_pos=0)
    assert one_head.heads == (2,)
    assert torch.allclose(one_head.values[..., 0], all_heads.values[..., 2], atol=1e-12)
    local = build_ht("local_attn")  # window 3
    _, dc = depass_tl.run_with_depass(local, tokens, components=depass_tl.heads(0))
    _, cache = local.run_with_cache(tokens)
    # TL 4 boots the local twin from HF Mistral and its cfg does not carry the window: the model's own pattern
    # (0 at that key) shows the score is masked, and that is the refusal
    with pytest.raises(DePassError, match="masked" if is_bridge(local) else "window 3"):
        attention_score_attrs(local, dc, cache, 1, key_pos=1)  # 4 positions back from the last


def test_padded_batches_use_each_prompts_own_positions() -> None:
    """Right padding: query -1 is each prompt's last real token; negative keys count back from it."""
    for name in ("gpt2_like", "llama_like"):  # learned positions; rotary + GQA
        model = build_ht(name)
        tokens = torch.randint(1, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(4))
        mask = torch.ones(2, 7, dtype=torch.long)
        mask[1, 4:] = 0  # prompt 1 has 4 real tokens
        _check(model, tokens, depass_tl.heads(0), mask=mask)
        _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(0), attention_mask=mask)
        _, cache = model.run_with_cache(tokens, attention_mask=mask)
        assert attention_score_attrs(model, dc, cache, 1, key_pos=-2).key_pos.tolist() == [5, 2]


def test_left_padding_with_rotary_positions() -> None:
    """A Bridge shifts rotary positions by the mask (read back here from its pattern): exact against its own layer.
    A rotary HookedTransformer shifts them too, which the DePassCache does not record: the check raises."""
    model = build_ht("llama_like")
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(9))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0  # prompt 1: three pads on the left
    if is_bridge(model):
        _check(model, tokens, depass_tl.heads(0), mask=mask)
        return
    _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(0), attention_mask=mask)
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    with pytest.raises(DePassError, match="left padding"):
        attention_score_attrs(model, dc, cache, 1, key_pos=-2)


def test_a_masked_key_is_refused() -> None:
    model = build_ht("gpt2_like")
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # left padding on prompt 1
    _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.tokens(), attention_mask=mask)
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    with pytest.raises(DePassError, match="masked"):
        attention_score_attrs(model, dc, cache, 1, key_pos=0)


def test_layer_zero_from_token_components() -> None:
    model = build_ht("llama_like")
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(6))
    _check(model, tokens, depass_tl.tokens(), layer=0)
    with pytest.raises(HookNotFoundError, match=r"depass_tl.tokens\(\)"):
        _, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(0))
        attention_score_attrs(model, dc, model.run_with_cache(tokens)[1], 0, key_pos=1)


def test_attn_in_per_head_copies_of_the_norm_input() -> None:
    """use_attn_in: per-head copies of ln1's input and scale (skipped, with the reason, where TL cannot build it)."""
    model = config_model(**HT_CONFIG_FEATURES["gpt2_like"], use_attn_in=True, dtype=torch.float64, seed=0)
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(6))
    _check(model, tokens, depass_tl.heads(0))


def test_dynamic_ntk_rotary_tables_match_the_clean_run() -> None:
    """HookedTransformer's dynamic NTK rotary: tables rescaled to the sequence length (past train_seq_length)."""
    model = config_model(**{**HT_CONFIG_FEATURES["llama_like"], "use_dynamic_ntk_rope": True, "train_seq_length": 8},
                         dtype=torch.float64, seed=0)
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 20), generator=torch.Generator().manual_seed(7))  # past 8
    _check(model, tokens, depass_tl.heads(0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_pass_the_check(dtype: torch.dtype) -> None:
    """Rounding of half-precision q/k is allowed for; the float32 split agrees with the float64 model's."""
    model64 = build_ht("llama_like")  # cached and shared: convert a copy, never the cached model
    model = copy.deepcopy(model64).to(dtype)
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(8))
    results = []
    for m in (model, model64):
        _, dc = depass_tl.run_with_depass(m, tokens, components=depass_tl.tokens())
        results.append(attention_score_attrs(m, dc, m.run_with_cache(tokens)[1], 1, key_pos=2))
    half, full = results
    scale = float(full.values.abs().max())
    assert float((half.values.double() - full.values).abs().max()) < 0.1 * scale


def test_a_cache_of_several_groups_says_why_it_lacks_a_layers_input() -> None:
    """heads() of every layer replays one group per layer and stores only the hooks after the last group's
    start: the error says so (it advised starting before the layer, which these groups already do)."""
    from tests.models import make_model, random_tokens

    model = make_model("gpt2", n_layers=3)
    toks = random_tokens(model)
    _, cache = model.run_with_cache(toks)
    _, dc = depass_tl.run_with_depass(model, toks, components=depass_tl.heads())
    with pytest.raises(HookNotFoundError, match=r"holds 3 groups .* after the last group's start "
                                                r"\(blocks\.2\.hook_resid_mid\)\. Use one group .*heads\(0\)"):
        attention_score_attrs(model, dc, cache, 1, key_pos=0)
