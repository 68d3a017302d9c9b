"""DePass next to TL activation patching (depass_tl.compare): exact agreement where theory says so,
disagreement (with its cause) where it does not, TL shapes, completeness, statistics and plot data."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import pytest
import torch
from transformer_lens import patching as tl_patching

import depass_tl
from depass_tl import DePassError
from depass_tl.backends.bridge import is_bridge
from depass_tl.compare import LAYOUTS, Comparison, compare
from depass_tl.compare import depass_layout, layout_hooks
from depass_tl.stats import rank, spearman, top_k_overlap
from depass_tl.viz.compare import heatmap_panels, plot_comparison
from tests._tl_version import HAS_HOOKED
from tests.models import config_model, make_model, random_tokens, word_tokenizer

ATTN_LAYOUTS = ["resid_pre", "attn_out", "attn_head_out_by_pos", "attn_head_out_all_pos"]
ALL_LAYOUTS = list(LAYOUTS)
ANSWER, WRONG = [3, 11], 5  # per-prompt answers, one shared wrong token


def _logit_diff(logits: torch.Tensor, answer: list[int], wrong: int, pos: int = -1) -> float:
    """The metric, written out independently of compare(): batch mean of logit[answer] - logit[wrong]."""
    logits = logits.detach()
    vals = [float(logits[b, pos, a] - logits[b, pos, wrong]) for b, a in enumerate(answer)]
    return sum(vals) / len(vals)


def _linear_attn_only(n_layers: int = 2, *, frozen_layers: tuple[int, ...] | None = None) -> Any:
    """Attention-only, no norm; W_Q = W_K = 0 in ``frozen_layers`` (default: all), so those layers'
    scores are the constant b_Q·b_K and their pattern is uniform causal whatever the input."""
    model = make_model("attn_only", normalization_type=None, n_layers=n_layers)
    with torch.no_grad():
        if is_bridge(model):  # the TL-native init scales W_O by 1/sqrt(2 n_layers) (gpt2 mode): undo it, so the
            for block in model.blocks:  # effects have the size they have on HookedTransformer's init
                block.attn.W_O.mul_((2 * n_layers) ** 0.5)
        for l in range(n_layers) if frozen_layers is None else frozen_layers:
            model.blocks[l].attn.W_Q.zero_()
            model.blocks[l].attn.W_K.zero_()
    return model


def _clean_corrupted(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    clean = random_tokens(model, batch=2, pos=5, seed=1)
    corrupted = clean.clone()
    corrupted[:, 1] = (corrupted[:, 1] + 7) % model.cfg.d_vocab
    corrupted[:, 3] = (corrupted[:, 3] + 3) % model.cfg.d_vocab
    return clean, corrupted


def _patterns(model: Any, toks: torch.Tensor) -> list[torch.Tensor]:
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    return [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)]


# ------------------------------------------------------------------------------ agree / differ
def test_agrees_exactly_when_patterns_cannot_change() -> None:
    # Theory. With no norm, no MLP and input-independent patterns A_l, the map from any activation
    # we patch (resid_pre[L], attn_out[L], hook_z[L]) to the logits is the same affine map
    # F(x) = f(x) + const in the clean, the corrupted and the patched runs. Patching cell c sets
    # x_corr -> x_corr + (x_clean,c - x_corr,c), so its effect is f(x_clean,c) - f(x_corr,c). DePass
    # on one run replays component c through that run's frozen coefficients, i.e. through f, so
    # depass_clean[c] - depass_corrupted[c] is the same number (constants go to `bias`/`rest` and
    # cancel). Equality up to float rounding (TL stores patching results in float32).
    model = _linear_attn_only(3)
    clean, corrupted = _clean_corrupted(model)
    for a, b in zip(_patterns(model, clean), _patterns(model, corrupted)):  # the premise
        torch.testing.assert_close(a, b)
    cmp = compare(model, clean, corrupted, answer_tokens=ANSWER, incorrect_tokens=WRONG)
    assert list(cmp.layouts) == ATTN_LAYOUTS  # mlp_out is skipped by default for attn-only models
    for name, lay in cmp.layouts.items():
        assert float(lay.patching.abs().max()) > 1e-2, name  # a real effect, so equality means something
        torch.testing.assert_close(lay.depass_diff, lay.patching, atol=1e-6, rtol=0, msg=name)
    table = cmp.agreement(k=4)
    assert (table["spearman_diff"] > 1 - 1e-9).all()
    assert (table["top_k_overlap_diff"] == 1.0).all()
    assert (table["max_abs_diff"] < 1e-6).all()


def test_differs_when_patching_moves_a_later_attention_pattern() -> None:
    # Layer 0 has a uniform pattern, layer 1 real QK weights. Patching resid_pre[0] or [1] (or
    # attn_out[0], a layer-0 head) changes what layer 1's queries and keys see, so the patched run
    # has a *different* layer-1 pattern; the patching effect includes that QK effect. DePass freezes
    # each run's own pattern, so depass_diff only carries the OV (value) path: the two must differ.
    # Head outputs of layer 1 are written after the last pattern is computed, so there both stay exact.
    model = _linear_attn_only(2, frozen_layers=(0,))
    with torch.no_grad():
        model.blocks[1].attn.W_Q.mul_(30.0)  # sharp, input-dependent layer-1 patterns
    clean, corrupted = _clean_corrupted(model)
    p_clean, p_corrupted = _patterns(model, clean), _patterns(model, corrupted)
    torch.testing.assert_close(p_clean[0], p_corrupted[0])
    assert float((p_clean[1] - p_corrupted[1]).abs().max()) > 0.05  # the cause: layer 1's pattern moves

    cmp = compare(model, clean, corrupted, answer_tokens=ANSWER, incorrect_tokens=WRONG)
    for name in ("resid_pre", "attn_out", "attn_head_out_by_pos", "attn_head_out_all_pos"):
        lay = cmp[name]
        gap = float((lay.depass_diff[0] - lay.patching[0]).abs().max())
        assert gap > 0.2 * float(lay.patching[0].abs().max()), (name, gap)  # layer 0 cells disagree
    gap_resid1 = float((cmp["resid_pre"].depass_diff[1] - cmp["resid_pre"].patching[1]).abs().max())
    assert gap_resid1 > 0.2 * float(cmp["resid_pre"].patching[1].abs().max())  # resid_pre[1] feeds layer 1's QK
    for name in ("attn_out", "attn_head_out_by_pos", "attn_head_out_all_pos"):  # after the last pattern
        torch.testing.assert_close(cmp[name].depass_diff[1], cmp[name].patching[1], atol=1e-6, rtol=0)

    # control: the same model with layer 1's QK removed agrees everywhere, so the QK path was the cause
    with torch.no_grad():
        model.blocks[1].attn.W_Q.zero_()
        model.blocks[1].attn.W_K.zero_()
    frozen = compare(model, clean, corrupted, answer_tokens=ANSWER, incorrect_tokens=WRONG, layouts=["resid_pre"])
    torch.testing.assert_close(frozen["resid_pre"].depass_diff, frozen["resid_pre"].patching, atol=1e-6, rtol=0)


# -------------------------------------------------------------------------- shapes, plumbing
@pytest.fixture(scope="module")
def gpt2_cmp() -> tuple[Any, torch.Tensor, torch.Tensor, Comparison]:
    model = make_model("gpt2", n_layers=2, n_heads=2, d_model=8, d_mlp=16)
    clean, corrupted = _clean_corrupted(model)
    cmp = compare(model, clean, corrupted, answer_tokens=ANSWER, incorrect_tokens=WRONG, layouts=ALL_LAYOUTS)
    return model, clean, corrupted, cmp


@pytest.mark.parametrize("arch", ["gpt2", "llama", "attn_only"])
def test_shapes_match_transformer_lens_patching(arch: str) -> None:
    model = make_model(arch, n_layers=2, n_heads=4, d_model=16)
    clean, corrupted = _clean_corrupted(model)
    cmp = compare(model, clean, corrupted, answer_tokens=ANSWER, incorrect_tokens=WRONG)
    L, P, H = 2, 5, 4
    expected = {"resid_pre": (L, P), "attn_out": (L, P), "mlp_out": (L, P),
                "attn_head_out_by_pos": (L, P, H), "attn_head_out_all_pos": (L, H)}
    if arch == "attn_only":
        del expected["mlp_out"]
    assert list(cmp.layouts) == list(expected)
    for name, shape in expected.items():
        lay = cmp[name]
        assert lay.axis_names == LAYOUTS[name].axis_names
        for arr in (lay.depass_clean, lay.depass_corrupted, lay.depass_diff, lay.patching):
            assert tuple(arr.shape) == shape, name
        assert lay.rest_clean.shape == (L,)


def test_patching_is_tls_own_result_for_this_metric(gpt2_cmp) -> None:
    model, clean, corrupted, cmp = gpt2_cmp
    _, clean_cache = model.run_with_cache(clean)
    base = _logit_diff(model(corrupted), ANSWER, WRONG)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return torch.tensor(_logit_diff(logits, ANSWER, WRONG) - base)

    for name, fn in [("mlp_out", tl_patching.get_act_patch_mlp_out),
                     ("attn_head_out_by_pos", tl_patching.get_act_patch_attn_head_out_by_pos)]:
        expected = fn(model, corrupted, clean_cache, metric).double()
        torch.testing.assert_close(cmp[name].patching, expected, atol=1e-6, rtol=0)
    assert cmp.metric_clean == pytest.approx(_logit_diff(model(clean), ANSWER, WRONG), abs=1e-9)
    assert cmp.metric_corrupted == pytest.approx(base, abs=1e-9)


def test_depass_cells_plus_rest_sum_to_the_metric(gpt2_cmp) -> None:
    model, clean, corrupted, cmp = gpt2_cmp
    for toks, which in ((clean, "clean"), (corrupted, "corrupted")):
        target = _logit_diff(model(toks), ANSWER, WRONG)
        for name, lay in cmp.layouts.items():
            cells = getattr(lay, f"depass_{which}")
            total = cells.flatten(1).sum(1) + getattr(lay, f"rest_{which}")  # per layer
            torch.testing.assert_close(total, torch.full_like(total, target), atol=1e-8, rtol=0, msg=name)


def test_resid_pre_layer_0_equals_token_components(gpt2_cmp) -> None:
    # component "position p of resid_pre[0]" is exactly depass_tl.tokens()'s tok{p}; two code paths
    model, clean, _, cmp = gpt2_cmp
    _, dc = depass_tl.run_with_depass(model, clean)
    per_token = dc.logit_attrs(torch.tensor(ANSWER), incorrect_tokens=WRONG).mean(1)[: clean.shape[1]]
    torch.testing.assert_close(cmp["resid_pre"].depass_clean[0], per_token.double(), atol=1e-9, rtol=0)


def test_head_cells_add_up_to_module_cells_under_the_linear_rule() -> None:
    # with mlp_rule="ratio" the replay is linear, so per-head cells (separate replays) add up to the
    # attention-output cell at each position, and positions add up to the all-position head cell
    model = make_model("gpt2", n_layers=2, n_heads=2, d_model=8, d_mlp=16)
    clean, corrupted = _clean_corrupted(model)
    cmp = compare(model, clean, corrupted, answer_tokens=ANSWER, incorrect_tokens=WRONG, mlp_rule="ratio",
                  layouts=["attn_out", "attn_head_out_by_pos", "attn_head_out_all_pos"])
    by_pos = cmp["attn_head_out_by_pos"]
    for arr in ("depass_clean", "depass_corrupted"):
        torch.testing.assert_close(getattr(by_pos, arr).sum(-1), getattr(cmp["attn_out"], arr), atol=1e-9, rtol=0)
        torch.testing.assert_close(getattr(by_pos, arr).sum(1), getattr(cmp["attn_head_out_all_pos"], arr),
                                   atol=1e-9, rtol=0)


def _parallel_model() -> Any:
    """Parallel attention and MLP (GPT-J / NeoX): no hook_resid_mid; the MLP reads hook_resid_pre."""
    if HAS_HOOKED:
        return make_model("gpt2", n_layers=2, n_heads=2, d_model=8, d_mlp=16, parallel_attn_mlp=True)
    from tests.bridge_models import build_bridge  # TL 4: HF's GPT-NeoX as a Bridge

    return build_bridge("neox")[0]


def _post_norm_model() -> Any:
    """A post-attention norm (Gemma-2/3: ``ln1_post``, ``ln2_post``), no biases, no logit soft cap."""
    if HAS_HOOKED:
        model = make_model("llama", n_layers=2, n_heads=2, d_model=8, d_mlp=16, use_normalization_before_and_after=True)
        with torch.no_grad():  # Gemma has no output biases (a post-norm over a bias is refused)
            for block in model.blocks:
                block.attn.b_O.zero_()
                block.mlp.b_out.zero_()
        return model
    import transformers as tr

    from tests.bridge_models import _gemma2, _randomise_hf, boot_folder, save_hf_model

    cfg = _gemma2(2, 32, 4, 64)
    cfg.final_logit_softcapping = None  # compare() refuses soft-capped logits
    cfg.architectures = ["Gemma2ForCausalLM"]
    torch.manual_seed(0)
    hf = tr.Gemma2ForCausalLM(cfg)
    _randomise_hf(hf, seed=0)
    return boot_folder(save_hf_model(hf))


@pytest.mark.parametrize("build", [_parallel_model, _post_norm_model], ids=["parallel", "post_norm"])
def test_head_cells_are_the_heads_components(build: Any) -> None:
    # under the linear rule each head's cell is its heads(l) logit attribution (one replay per component,
    # whatever else is split off): also in parallel blocks (heads split off at hook_resid_post) and through a
    # post-attention norm at its frozen scale
    model = build()
    clean, corrupted = _clean_corrupted(model)
    cmp = compare(model, clean, corrupted, answer_tokens=ANSWER, incorrect_tokens=WRONG, mlp_rule="ratio",
                  progress=False)
    assert list(cmp.layouts) == ["resid_pre", "attn_out", "mlp_out", "attn_head_out_by_pos", "attn_head_out_all_pos"]
    H = cmp["attn_head_out_all_pos"].shape[1]
    for layer in range(model.cfg.n_layers):
        _, dc = depass_tl.run_with_depass(model, clean, components=depass_tl.heads(layer), mlp_rule="ratio")
        heads = dc.logit_attrs(torch.tensor(ANSWER), incorrect_tokens=WRONG).mean(1)[:H].double()
        torch.testing.assert_close(cmp["attn_head_out_all_pos"].depass_clean[layer], heads, atol=1e-5, rtol=1e-5)
    metric = _logit_diff(model(clean), ANSWER, WRONG)
    for name, lay in cmp.layouts.items():
        total = lay.depass_clean.flatten(1).sum(1) + lay.rest_clean
        torch.testing.assert_close(total, torch.full_like(total, metric), atol=1e-4, rtol=1e-5, msg=name)


def test_parallel_blocks_have_no_resid_mid_layout() -> None:
    model = _parallel_model()
    clean, corrupted = _clean_corrupted(model)
    with pytest.raises(DePassError, match=r"layout 'resid_mid' patches blocks\.0\.hook_resid_mid, which this model "
                                          r"does not have \(parallel blocks"):
        compare(model, clean, corrupted, answer_tokens=3, layouts=["resid_mid"], progress=False)
    run = depass_tl.capture(model, clean)  # depass_layout on its own says the same
    with pytest.raises(DePassError, match="layout 'resid_mid' needs hook_resid_mid, which parallel blocks"):
        depass_layout(run, "resid_mid", 3)


def test_prompts_of_different_lengths_are_refused() -> None:
    # TL's patching runs the padded batch without a mask and the metric reads one position for every prompt
    words = ["When", " Mary", " and", " John", " went", ",", " gave", " to"]
    tok = word_tokenizer(words)
    model = config_model(n_layers=1, d_model=8, n_ctx=16, d_head=4, n_heads=2, d_mlp=16, d_vocab=len(tok),
                         act_fn="gelu", seed=0, dtype=torch.float64, tokenizer=tok).eval()
    with pytest.raises(DePassError, match="different token lengths, so they were padded"):
        compare(model, ["When Mary and John went", "When Mary"], ["When John and John went", "When John"],
                answer_tokens=" Mary", layouts=["resid_pre"], progress=False)
    same = compare(model, ["When Mary went", "When John went"], ["When John went", "When Mary went"],
                   answer_tokens=" Mary", layouts=["resid_pre"], progress=False)  # one length: fine
    assert same["resid_pre"].shape == (1, 4)


def test_single_logit_metric_and_no_hooks_left() -> None:
    model = _linear_attn_only(2)
    clean, corrupted = _clean_corrupted(model)
    cmp = compare(model, clean, corrupted, answer_tokens=7, layouts=["resid_pre"], pos=2)
    assert cmp.incorrect_tokens is None and cmp.answer_tokens.tolist() == [7, 7]
    expected = (model(clean)[:, 2, 7].mean()).item()
    assert cmp.metric_clean == pytest.approx(expected, abs=1e-9)
    torch.testing.assert_close(cmp["resid_pre"].depass_diff, cmp["resid_pre"].patching, atol=1e-6, rtol=0)
    assert sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values()) == 0


def test_progress_false_silences_tls_patching_bars(capfd, monkeypatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    model = _linear_attn_only(2)
    clean, corrupted = _clean_corrupted(model)
    original = tl_patching.tqdm
    loud = compare(model, clean, corrupted, answer_tokens=7, layouts=["resid_pre"])
    assert "it/s" in capfd.readouterr().err  # TL draws a bar by default: the check below can fail
    quiet = compare(model, clean, corrupted, answer_tokens=7, layouts=["resid_pre"], progress=False)
    assert capfd.readouterr().err == ""
    assert tl_patching.tqdm is original  # restored
    torch.testing.assert_close(quiet["resid_pre"].patching, loud["resid_pre"].patching, atol=0, rtol=0)

    def failing_sweep(*args: Any, **kwargs: Any) -> None:
        assert tl_patching.tqdm is not original  # silenced during the sweep
        raise RuntimeError("sweep failed")

    monkeypatch.setattr(tl_patching, "get_act_patch_resid_pre", failing_sweep)
    with pytest.raises(RuntimeError, match="sweep failed"):
        compare(model, clean, corrupted, answer_tokens=7, layouts=["resid_pre"], progress=False)
    assert tl_patching.tqdm is original  # restored after an error inside the sweep as well


def test_string_prompts_answers_and_position_labels() -> None:
    words = ["When", " Mary", " and", " John", " went", ",", " gave", " to"]
    tok = word_tokenizer(words)
    cfg = dict(n_layers=1, d_model=8, n_ctx=16, d_head=4, n_heads=2, d_mlp=16,
                                  d_vocab=len(tok), act_fn="gelu", seed=0, dtype=torch.float64)
    model = config_model(**cfg, tokenizer=tok).eval()
    cmp = compare(model, "When Mary and John went", "When John and John went", answer_tokens=" Mary",
                  incorrect_tokens=" John", layouts=["resid_pre"])
    assert cmp.pos_labels == ("0:<bos>", "1:When", "2: Mary/ John", "3: and", "4: John", "5: went")
    mary = model.to_tokens(" Mary", prepend_bos=False)[0, 0]
    assert cmp.answer_tokens.tolist() == [int(mary)]


# ---------------------------------------------------------------------------- export, stats
def test_agreement_and_dataframe(gpt2_cmp) -> None:
    _, _, _, cmp = gpt2_cmp
    table = cmp.agreement(k=3)
    assert list(table.index) == ALL_LAYOUTS
    lay = cmp["attn_head_out_by_pos"]
    row = table.loc["attn_head_out_by_pos"]
    assert row["n_cells"] == 2 * 5 * 2 and row["k"] == 3
    assert row["spearman_diff"] == pytest.approx(spearman(lay.depass_diff, lay.patching))
    assert row["max_abs_diff"] == pytest.approx(float((lay.depass_diff - lay.patching).abs().max()))
    df = cmp.to_dataframe()
    assert len(df) == sum(l.patching.numel() for l in cmp.layouts.values())
    hit = df[(df.layout == "attn_head_out_by_pos") & (df.layer == 1) & (df.pos == 3) & (df["head"] == 1)]
    assert len(hit) == 1
    assert hit["patching"].item() == pytest.approx(float(lay.patching[1, 3, 1]))
    assert hit["depass_diff"].item() == pytest.approx(float(lay.depass_diff[1, 3, 1]))
    allpos = df[(df.layout == "attn_head_out_all_pos") & (df.layer == 0) & (df["head"] == 1)]
    assert allpos["pos"].item() == -1
    assert allpos["depass_clean"].item() == pytest.approx(float(cmp["attn_head_out_all_pos"].depass_clean[0, 1]))


def test_rank_and_spearman_by_hand() -> None:
    assert rank(torch.tensor([3.0, 1.0, 2.0, 1.0])).tolist() == [4.0, 1.5, 3.0, 1.5]
    # no ties: 1 - 6 Σd² / (n(n²-1)) = 1 - 6*4/120
    assert spearman(torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([2.0, 1, 4, 3, 5])) == pytest.approx(0.8)
    # ties: ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4] -> 4.5 / sqrt(4.5 * 5)
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(math.sqrt(0.9))
    assert spearman(torch.tensor([[1.0, 5.0]]), torch.tensor([[-3.0, -4.0]])) == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))
    with pytest.raises(DePassError, match="same shape"):
        spearman(torch.ones(3), torch.ones(4))


def test_top_k_overlap_by_hand() -> None:
    a = torch.tensor([0.1, -9.0, 3.0, 0.0])
    b = torch.tensor([5.0, 8.0, 0.2, -0.1])
    assert top_k_overlap(a, b, 1) == 1.0  # |-9| and |8| both at index 1
    assert top_k_overlap(a, b, 2) == 0.5  # {1, 2} vs {1, 0}
    assert top_k_overlap(a, b, 10) == 1.0  # clamped to all 4 cells
    with pytest.raises(DePassError, match="k >= 1"):
        top_k_overlap(a, b, 0)


# ------------------------------------------------------------------------------------- plots
def test_heatmap_panels_share_one_symmetric_scale(gpt2_cmp) -> None:
    _, _, _, cmp = gpt2_cmp
    lay = cmp["attn_head_out_by_pos"]
    data = heatmap_panels(cmp, "attn_head_out_by_pos", panels=["depass_clean", "depass_diff", "patching"])
    assert data.y_labels == ("L0H0", "L0H1", "L1H0", "L1H1") and data.x_labels == cmp.pos_labels
    assert all(z.shape == (4, 5) for z in data.z)
    assert float(data.z[2][3, 4]) == float(lay.patching[1, 4, 1])  # row L1H1, position 4
    assert float(data.z[0][1, 2]) == float(lay.depass_clean[0, 2, 1])  # row L0H1, position 2
    biggest = max(float(lay.depass_clean.abs().max()), float(lay.depass_diff.abs().max()),
                  float(lay.patching.abs().max()))
    assert data.zmax == biggest
    heads = heatmap_panels(cmp, "attn_head_out_all_pos")
    assert heads.x_labels == ("H0", "H1") and heads.y_labels == ("L0", "L1")
    with pytest.raises(DePassError, match="unknown panel"):
        heatmap_panels(cmp, "resid_pre", panels=["nope"])


def test_plot_without_a_plotting_library_names_the_install(gpt2_cmp, monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # pretend neither plotting library is installed
        importlib.util, "find_spec", lambda name, *a: None if name in ("plotly", "matplotlib") else real_find_spec(name, *a)
    )
    with pytest.raises(DePassError, match="pip install plotly"):
        gpt2_cmp[3].plot("resid_pre")


@pytest.mark.skipif(importlib.util.find_spec("plotly") is None, reason="plotly is not installed")
def test_plotly_figure(gpt2_cmp) -> None:
    _, _, _, cmp = gpt2_cmp
    fig = plot_comparison(cmp, "resid_pre", backend="plotly")
    assert len(fig.data) == 2 and {t.coloraxis for t in fig.data} == {"coloraxis"}
    zmax = heatmap_panels(cmp, "resid_pre").zmax
    assert fig.layout.coloraxis.cmin == -zmax and fig.layout.coloraxis.cmax == zmax
    assert list(fig.data[1].z[0]) == cmp["resid_pre"].patching[0].tolist()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_matplotlib_figure(gpt2_cmp) -> None:
    _, _, _, cmp = gpt2_cmp
    fig = plot_comparison(cmp, "attn_head_out_all_pos", backend="matplotlib", panels=["depass_diff", "patching"])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and {im.get_clim() for im in images} == {(-heatmap_panels(cmp, "attn_head_out_all_pos").zmax,
                                                                       heatmap_panels(cmp, "attn_head_out_all_pos").zmax)}


# ------------------------------------------------------------------------------------ errors
def test_errors_say_what_was_seen() -> None:
    model = _linear_attn_only(1)
    clean, corrupted = _clean_corrupted(model)
    kw = dict(answer_tokens=3, incorrect_tokens=5)
    with pytest.raises(DePassError, match=r"token shapes \(2, 5\) and \(2, 4\)"):
        compare(model, clean, corrupted[:, :4], **kw)
    with pytest.raises(DePassError, match="unknown layout 'resid'"):
        compare(model, clean, corrupted, layouts=["resid"], **kw)
    with pytest.raises(DePassError, match="attention-only"):
        compare(model, clean, corrupted, layouts=["mlp_out"], **kw)
    with pytest.raises(DePassError, match="non-empty list"):
        compare(model, clean, corrupted, layouts="resid_pre", **kw)  # type: ignore[arg-type]
    with pytest.raises(DePassError, match=r"answer_tokens: token ids must lie in \[0, 40\)"):
        compare(model, clean, corrupted, answer_tokens=40)
    with pytest.raises(DePassError, match=r"one per prompt \(2\); got 3"):
        compare(model, clean, corrupted, answer_tokens=[1, 2, 3])
    with pytest.raises(DePassError, match="no tokenizer"):
        compare(model, clean, corrupted, answer_tokens=" Mary")
    with pytest.raises(DePassError, match=r"pos must be an integer position in \[-5, 5\); got 5"):
        compare(model, clean, corrupted, pos=5, **kw)
    with pytest.raises(DePassError, match="unknown mlp_rule 'nope'"):
        compare(model, clean, corrupted, mlp_rule="nope", **kw)
    cmp = compare(model, clean, corrupted, layouts=["resid_pre"], **kw)
    with pytest.raises(DePassError, match="no layout 'attn_out'.*holds \\['resid_pre'\\]"):
        cmp["attn_out"]


def test_depass_layout_alone_says_which_hooks_to_capture() -> None:
    model = _linear_attn_only(1)
    clean, _ = _clean_corrupted(model)
    run = depass_tl.capture(model, clean)
    cells, rest = depass_layout(run, "resid_pre", torch.tensor(ANSWER), WRONG)
    assert cells.shape == (1, 5) and rest.shape == (1,)
    with pytest.raises(DePassError, match=r"blocks\.0\.attn\.hook_z' was not captured.*layout_hooks"):
        depass_layout(run, "attn_head_out_by_pos", 3)
    with pytest.raises(DePassError, match="attention-only"):
        depass_layout(run, "mlp_out", 3)
    assert layout_hooks("attn_head_out_all_pos", 2) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
