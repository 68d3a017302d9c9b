"""depass_tl.viz: the plotted numbers are the cache's numbers (checked against the model and against
DePassCache.logit_attrs), colour scales are symmetric about 0, figures carry the data, and saving
works (HTML; PNG via matplotlib, and via plotly where an offline exporter is installed)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

import depass_tl
from depass_tl import DePassError, toy, viz
from depass_tl.compare import compare
from depass_tl.viz import _backend
from depass_tl.viz.compare import PANELS
from tests.models import make_model, random_tokens, word_tokenizer

PROMPT = "When Mary and John went to the store, John gave a drink to"
HAS_PLOTLY = importlib.util.find_spec("plotly") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
needs_plotly = pytest.mark.skipif(not HAS_PLOTLY, reason="plotly is not installed")
needs_mpl = pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")


def _version(name: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in importlib.metadata.version(name).split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


@pytest.fixture(scope="module")
def ioi():
    """The shipped ioi toy model, one capture, three replays (tokens, heads over all layers, sources)."""
    model, enc = toy.load("ioi")
    toks = enc.encode(PROMPT)
    run = depass_tl.capture(model, toks, extra_hooks=depass_tl.heads().required_hooks(model.cfg.n_layers))
    caches = {
        "tokens": depass_tl.replay(run),
        "heads": depass_tl.replay(run, depass_tl.heads()),
        "sources": depass_tl.replay(run, depass_tl.sources()),
    }
    mary, john = enc.token_id(" Mary"), enc.token_id(" John")
    return model, enc, toks, caches, mary, john


def _stream_labels(model) -> list[str]:
    """The flow plot's x labels for a model: the embeddings, then each layer's attention (and MLP)."""
    mlp = not model.cfg.attn_only
    return ["embeddings"] + [f"L{l} {part}" for l in range(model.cfg.n_layers)
                             for part in (("attn", "MLP") if mlp else ("attn",))]


def _clean_diff(model, toks, a: int, b: int) -> float:
    with torch.no_grad():
        logits = model(toks)[0, -1].double()
    return float(logits[a] - logits[b])


# ------------------------------------------------------------------------------- token heatmap
def test_token_heatmap_data_is_the_token_attribution(ioi) -> None:
    model, enc, toks, caches, mary, john = ioi
    dc = caches["tokens"]
    data = viz.token_heatmap_data(dc, mary, incorrect_tokens=john, str_tokens=enc.to_str_tokens(PROMPT))
    attrs = dc.logit_attrs(mary, incorrect_tokens=john)[:, 0].double()
    P = toks.shape[1]
    assert data.str_tokens == tuple(enc.to_str_tokens(PROMPT)) and data.values.shape == (P,)
    for p in range(P):
        assert float(data.values[p]) == float(attrs[dc.component(f"tok{p}")])
    assert data.others == (("bias", float(attrs[-1])),)
    # the total is the model's own clean logit difference (completeness), and the subtitle says so
    assert data.total == pytest.approx(_clean_diff(model, toks, mary, john), abs=1e-4)
    assert data.pos == P - 1 and f"“to” (position {P - 1})" in data.subtitle
    assert f"with the biases ({float(attrs[-1]):+.4g}) they add up to {data.total:.4g}." in data.subtitle
    assert data.zmax == float(data.values.abs().max())
    assert data.target == f"logit(#{mary}) − logit(#{john})"
    assert data.title == f"Which tokens drive logit(#{mary}) − logit(#{john})"


def test_token_heatmap_attrs_argument_and_fallback_labels(ioi) -> None:
    _, enc, toks, caches, mary, john = ioi
    dc = caches["tokens"]
    attrs = dc.logit_attrs(mary, incorrect_tokens=john)
    a = viz.token_heatmap_data(dc, attrs=attrs, target="my metric")
    b = viz.token_heatmap_data(dc, mary, incorrect_tokens=john)
    assert torch.equal(a.values, b.values) and a.target == "my metric"
    # without str_tokens the labels are the tokenizer's strings (the toy has one) ...
    assert b.str_tokens == tuple(enc.to_str_tokens(toks))
    # ... or, for a model without a tokenizer, the token ids
    bare = make_model("gpt2")
    ids = random_tokens(bare)[:1]
    _, dbare = depass_tl.run_with_depass(bare, ids)
    assert viz.token_heatmap_data(dbare, 1).str_tokens == tuple(f"#{int(t)}" for t in ids[0])
    with pytest.raises(DePassError, match="exactly one of tokens"):
        viz.token_heatmap_data(dc, mary, attrs=attrs)
    with pytest.raises(DePassError, match="exactly one of tokens"):
        viz.token_heatmap_data(dc)
    with pytest.raises(DePassError, match=r"shape \[component, batch\] = \[16, 1\]"):
        viz.token_heatmap_data(dc, attrs=attrs[:-1])
    with pytest.raises(DePassError, match="str_tokens must be a list of 15"):
        viz.token_heatmap_data(dc, mary, str_tokens=["a", "b"])
    with pytest.raises(DePassError, match="batch must be"):
        viz.token_heatmap_data(dc, mary, batch=1)


def test_token_heatmap_refuses_caches_without_token_components(ioi) -> None:
    _, _, _, caches, mary, _ = ioi
    with pytest.raises(DePassError, match="several groups"):
        viz.token_heatmap_data(caches["heads"], mary)
    with pytest.raises(DePassError, match="no token components"):
        viz.token_heatmap_data(caches["sources"], mary)


def test_token_heatmap_uses_the_tokenizer_strings_and_marks_a_chosen_position() -> None:
    words = [" a", " b", " c", " d"]
    model = make_model("gpt2", n_layers=1, d_vocab=8, tokenizer=word_tokenizer(words))
    _, dc = depass_tl.run_with_depass(model, " a b c d")
    data = viz.token_heatmap_data(dc, " c", pos=2)
    assert data.str_tokens == tuple(model.to_str_tokens(" a b c d"))
    assert data.pos == 2 and data.target == "logit(“c”)"
    # causality: tokens after the attributed position contribute exactly 0
    assert data.values[3:].abs().max() == 0


# ------------------------------------------------------------------------------------ head grid
def test_head_grid_data_over_every_layer(ioi) -> None:
    model, _, toks, caches, mary, john = ioi
    dc = caches["heads"]
    data = viz.head_grid_data(dc, mary, incorrect_tokens=john)
    attrs = dc.logit_attrs(mary, incorrect_tokens=john)[:, 0].double()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert data.values.shape == (L, H) and data.layers == tuple(f"L{l}" for l in range(L))
    assert data.heads == tuple(f"H{h}" for h in range(H))
    for l in range(L):
        for h in range(H):
            assert float(data.values[l, h]) == float(attrs[dc.component(f"L{l}H{h}")])
    clean = _clean_diff(model, toks, mary, john)
    assert data.several_groups and f"Each layer's heads with the rest of the stream add up to {clean:.4g}." in data.note
    assert data.title == f"Which attention heads drive logit(#{mary}) − logit(#{john})"
    others = dict(data.others)
    assert set(others) == {f"L{l}.{k}" for l in range(L) for k in ("rest", "bias")}
    # each layer's group sums to the clean logit difference
    for l in range(L):
        total = float(data.values[l].sum()) + others[f"L{l}.rest"] + others[f"L{l}.bias"]
        assert total == pytest.approx(clean, abs=1e-4)
    assert data.zmax == float(data.values.abs().max())


def test_head_grid_one_layer_and_sources(ioi) -> None:
    model, enc, toks, caches, mary, john = ioi
    _, one = depass_tl.run_with_depass(model, toks, components=depass_tl.heads(1))
    data = viz.head_grid_data(one, mary)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert data.values.shape == (2, H) and torch.isnan(data.values[0]).all() and not torch.isnan(data.values[1]).any()
    assert not data.several_groups and dict(data.others).keys() == {"rest", "bias"}
    src = viz.head_grid_data(caches["sources"], mary, incorrect_tokens=john)
    assert src.values.shape == (L, H) and not src.several_groups
    mlps = set() if model.cfg.attn_only else {f"L{l}.mlp" for l in range(L)}
    assert {label for label, _ in src.others} == {"embed", "pos_embed", "bias"} | mlps
    with pytest.raises(DePassError, match="no head components"):
        viz.head_grid_data(caches["tokens"], mary)


# ------------------------------------------------------------------------------------------ flow
def test_flow_data_is_an_exact_split_of_the_residual_projection(ioi) -> None:
    model, _, toks, caches, mary, john = ioi
    dc = caches["sources"]
    data = viz.flow_data(dc, mary, incorrect_tokens=john, top_k=4)
    L = model.cfg.n_layers
    after = ("post",) if model.cfg.attn_only else ("mid", "post")  # attention-only: no MLP between mid and post
    expected_hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_{s}" for l in range(L) for s in after]
    assert list(data.hooks) == expected_hooks
    assert list(data.hook_labels) == _stream_labels(model)
    # the direction comes from the model itself here, not from the cache
    d = (model.W_U[:, mary] - model.W_U[:, john]).detach().double()
    _, cache = model.run_with_cache(toks)
    P = toks.shape[1]
    for j, hook in enumerate(data.hooks):
        assert float(data.total_projection[j]) == pytest.approx(float(cache[hook][0, -1].double() @ d), abs=1e-4)
    torch.testing.assert_close(data.projection.sum(0), data.total_projection, atol=1e-4, rtol=0)
    # series: the top-4 by |logit attribution|, then the sum of the others, then bias
    attrs = dc.logit_attrs(mary, incorrect_tokens=john)[:, 0].double()
    order = sorted(range(len(dc.labels) - 1), key=lambda c: -abs(float(attrs[c])))
    assert data.series == tuple(dc.labels[c] for c in order[:4]) + (f"other ({len(order) - 4})", "bias")
    top0 = order[0]
    for j, hook in enumerate(data.hooks):
        assert float(data.projection[0, j]) == pytest.approx(float(dc[hook][top0, 0, P - 1].double() @ d), abs=1e-5)
    torch.testing.assert_close(data.logit_attrs[:4], attrs[order[:4]])
    assert float(data.logit_attrs[4]) == pytest.approx(float(attrs[order[4:]].sum()), abs=1e-9)
    assert data.total == pytest.approx(_clean_diff(model, toks, mary, john), abs=1e-4)


def test_flow_token_names_and_errors(ioi) -> None:
    _, enc, _, caches, mary, john = ioi
    dc = caches["tokens"]
    data = viz.flow_data(dc, mary, incorrect_tokens=john, top_k=100, str_tokens=enc.to_str_tokens(PROMPT))
    assert data.series[-1] == "bias" and not any(s.startswith("other") for s in data.series)
    assert len(data.series) == len(dc.labels)
    named = dict(zip(data.series, data.display))
    assert named["tok2"] == "“Mary” (pos 2)" and named["tok9"] == "“,” (pos 9)" and named["bias"] == "biases"
    assert "“to” (position 14)" in data.subtitle and f"all add up to {data.total:.4g}." in data.subtitle
    with pytest.raises(DePassError, match="several layers"):
        viz.flow_data(caches["heads"], mary)
    with pytest.raises(DePassError, match="top_k must be a positive int"):
        viz.flow_data(dc, mary, top_k=0)
    with pytest.raises(DePassError, match=r"pos 99 is out of range for 15 positions"):
        viz.flow_data(dc, mary, pos=99)


# -------------------------------------------------------------------------------------- figures
@needs_plotly
def test_plotly_figures_carry_the_data_on_a_symmetric_scale(ioi) -> None:
    _, enc, _, caches, mary, john = ioi
    strs = enc.to_str_tokens(PROMPT)
    data = viz.token_heatmap_data(caches["tokens"], mary, incorrect_tokens=john, str_tokens=strs)
    fig = viz.token_heatmap(caches["tokens"], mary, incorrect_tokens=john, str_tokens=strs, wrap=5, backend="plotly")
    (trace,) = fig.data
    assert trace.zmin == -data.zmax and trace.zmax == data.zmax and trace.zmid == 0
    assert [v for row in trace.z for v in row] == data.values.tolist()  # 15 tokens = 3 rows of 5
    # each cell names its token and prints its value; the attributed position is marked
    assert trace.text[0][2] == f"Mary<br>{float(data.values[2]):+.2f}" and trace.text[2][4].startswith("▶to<br>")
    assert "logit contribution" in trace.customdata[0][2] and f"{float(data.values[2]):+.5g}" in trace.customdata[0][2]

    heads = viz.head_grid(caches["heads"], mary, incorrect_tokens=john, backend="plotly")
    hdata = viz.head_grid_data(caches["heads"], mary, incorrect_tokens=john)
    assert [list(r) for r in heads.data[0].z] == hdata.values.tolist()
    assert heads.data[0].zmin == -hdata.zmax and heads.data[0].zmax == hdata.zmax

    flow = viz.flow(caches["sources"], mary, incorrect_tokens=john, top_k=3, backend="plotly")
    fdata = viz.flow_data(caches["sources"], mary, incorrect_tokens=john, top_k=3)
    lines = [t for t in flow.data if t.type == "scatter"]
    assert [t.name for t in lines] == list(fdata.display) + ["whole stream"]
    assert list(lines[0].y) == fdata.projection[0].tolist()
    (bars,) = [t for t in flow.data if t.type == "bar"]
    assert list(bars.x) == fdata.logit_attrs.tolist()


def _plotly_figures(ioi) -> dict:
    _, enc, _, caches, mary, john = ioi
    strs = enc.to_str_tokens(PROMPT)
    kw = dict(incorrect_tokens=john, target="logit(“Mary”) − logit(“John”)", backend="plotly")
    return {
        "tokens": viz.token_heatmap(caches["tokens"], mary, str_tokens=strs, **kw),
        "heads": viz.head_grid(caches["heads"], mary, **kw),
        "sources": viz.head_grid(caches["sources"], mary, **kw),
        "flow": viz.flow(caches["tokens"], mary, str_tokens=strs, top_k=3, **kw),
    }


@needs_plotly
def test_plotly_figures_are_labelled_in_words_and_follow_the_window_width(ioi) -> None:
    figs = _plotly_figures(ioi)
    for name, fig in figs.items():
        assert fig.layout.width is None and fig.layout.autosize, name  # no fixed width: it fills its container
        title = fig.layout.title.text
        assert title.startswith("Which ") or title.startswith("How "), title
        assert "logit(“Mary”) − logit(“John”)" in title
        for jargon in ("heads()", "sources()", "x_c", "tok2", "hook_", "L0 pre"):  # no API names in the words
            assert jargon not in title, (name, jargon)
    for name in ("tokens", "heads", "sources"):
        (trace,) = figs[name].data
        assert trace.colorbar.title.text == "logit contribution" and trace.zmid == 0 and trace.zmin == -trace.zmax
    flow = figs["flow"]
    assert flow.layout.yaxis.title.text == "projection on the answer direction"
    assert flow.layout.xaxis.title.text == "residual stream after"
    assert flow.layout.xaxis2.title.text.startswith("logit contribution (sum ")
    lines = [t for t in flow.data if t.type == "scatter"]
    assert list(lines[0].x) == _stream_labels(ioi[0])
    (bars,) = [t for t in flow.data if t.type == "bar"]
    assert list(bars.y) == ["“Mary” (pos 2)", "“John” (pos 4)", "“John” (pos 10)", "the other 12", "biases"]


@needs_mpl
def test_matplotlib_figures_carry_the_same_words_at_print_size(ioi) -> None:
    _, enc, _, caches, mary, john = ioi
    strs = enc.to_str_tokens(PROMPT)
    kw = dict(incorrect_tokens=john, target="logit(“Mary”) − logit(“John”)", backend="matplotlib")
    figs = {
        "tokens": viz.token_heatmap(caches["tokens"], mary, str_tokens=strs, **kw),
        "heads": viz.head_grid(caches["heads"], mary, **kw),
        "flow": viz.flow(caches["tokens"], mary, str_tokens=strs, top_k=3, **kw),
    }
    plotly = _plotly_figures(ioi) if HAS_PLOTLY else {}
    plotly_titles = {k: f.layout.title.text.split("<br>")[0] for k, f in plotly.items()}
    for name, fig in figs.items():
        width, _ = fig.get_size_inches()
        assert width <= 7.2 + 1e-9, name  # fits a two-column page
        assert fig.get_layout_engine() is not None  # constrained layout: nothing clipped or overlapping the bar
        texts = [t for t in fig.findobj(lambda o: hasattr(o, "get_fontsize") and hasattr(o, "get_text"))
                 if t.get_text()]
        assert min(t.get_fontsize() for t in texts) >= 7, name  # readable in print at 100%
        title = fig._suptitle.get_text()
        assert title.startswith(("Which ", "How ")) and "logit(“Mary”) − logit(“John”)" in title
        if name in plotly_titles:
            assert title == plotly_titles[name]  # the same words in both backends
    for name in ("tokens", "heads"):
        (bar,) = [ax for ax in figs[name].axes if ax.get_label() == "<colorbar>"]
        assert bar.get_ylabel() == "logit contribution", name
    mary_value = float(viz.token_heatmap_data(caches["tokens"], mary, incorrect_tokens=john).values[2])
    assert f"Mary\n{mary_value:+.2f}" in {t.get_text() for t in figs["tokens"].axes[0].texts}
    left, right = figs["flow"].axes[:2]
    assert left.get_ylabel() == "projection on the answer direction" and left.get_xlabel() == "residual stream after"
    assert [t.get_text() for t in left.get_xticklabels()][:3] == _stream_labels(ioi[0])[:3]
    assert [t.get_text() for t in right.get_yticklabels()][0] == "“Mary” (pos 2)"
    assert right.get_xlabel().startswith("logit contribution (sum ")


@needs_mpl
def test_matplotlib_figures_use_a_symmetric_scale(ioi) -> None:
    _, _, _, caches, mary, john = ioi
    fig = viz.token_heatmap(caches["tokens"], mary, incorrect_tokens=john, backend="matplotlib")
    zmax = viz.token_heatmap_data(caches["tokens"], mary, incorrect_tokens=john).zmax
    (image,) = [ax.images[0] for ax in fig.axes if ax.images]
    assert image.get_clim() == (-zmax, zmax)
    fig = viz.head_grid(caches["heads"], mary, backend="matplotlib")
    hdata = viz.head_grid_data(caches["heads"], mary)
    (image,) = [ax.images[0] for ax in fig.axes if ax.images]
    assert image.get_clim() == (-hdata.zmax, hdata.zmax)
    assert torch.equal(torch.as_tensor(image.get_array().data), hdata.values)
    fig = viz.flow(caches["tokens"], mary, backend="matplotlib")
    assert len(fig.axes[0].lines) >= 3


# ------------------------------------------------------------------------------- side by side
@needs_plotly
def test_side_by_side_draws_compare_plot_panels() -> None:
    model = make_model("gpt2", n_layers=2, n_heads=2, d_model=8, d_mlp=16)
    clean = random_tokens(model, batch=1, pos=5, seed=1)
    corrupted = clean.clone()
    corrupted[:, 1] = (corrupted[:, 1] + 7) % model.cfg.d_vocab
    cmp = compare(model, clean, corrupted, answer_tokens=3, incorrect_tokens=5, layouts=["resid_pre"])
    fig = viz.side_by_side(cmp, "resid_pre", backend="plotly")
    panels = viz.heatmap_panels(cmp, "resid_pre")
    assert [list(map(list, t.z)) for t in fig.data] == [z.tolist() for z in panels.z]
    assert fig.layout.coloraxis.cmin == -panels.zmax and fig.layout.coloraxis.cmid == 0
    # the colour bar says what the colours measure; the title says what was patched, in words
    assert fig.layout.coloraxis.colorbar.title.text == "effect on the logit difference" == panels.units
    assert fig.layout.title.text.startswith("Patching the residual stream before each layer, by position (logit "
                                            "difference: clean run ")
    assert fig.layout.width is None
    with pytest.raises(DePassError, match="expected a Comparison"):
        viz.side_by_side("resid_pre", "resid_pre")  # type: ignore[arg-type]


def _readable_print_size(fig, name: str) -> None:
    """At most 7.2 in wide (as viz documents) and no text under 7 pt."""
    width, height = fig.get_size_inches()
    assert width <= 7.2 + 1e-9 and height <= 9.0 + 1e-9, (name, width, height)
    texts = [t for t in fig.findobj(lambda o: hasattr(o, "get_fontsize") and hasattr(o, "get_text")) if t.get_text()]
    assert min(t.get_fontsize() for t in texts) >= 7, name


@needs_mpl
def test_matplotlib_comparison_figures_fit_the_print_width() -> None:
    model, enc = toy.load("ioi")
    corrupted = PROMPT.replace("John gave", "Mary gave")
    cmp = compare(model, enc.encode(PROMPT), enc.encode(corrupted), answer_tokens=" Mary", incorrect_tokens=" John",
                  progress=False)
    for layout in cmp.layouts:
        for panels in (("depass_diff", "patching"), tuple(PANELS)):
            fig = viz.side_by_side(cmp, layout, panels=panels, backend="matplotlib")
            _readable_print_size(fig, f"{layout} {len(panels)}")
            data = viz.heatmap_panels(cmp, layout, panels=panels)
            axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
            assert [ax.get_title() for ax in axes] == list(data.titles)
            for ax, z in zip(axes, data.z):
                assert torch.equal(torch.as_tensor(ax.images[0].get_array().data), z)
                # the ioi toy's 15 positions and 8 heads all keep their labels
                assert [t.get_text() for t in ax.get_xticklabels()] == list(data.x_labels)
            assert [t.get_text() for t in axes[0].get_yticklabels()] == list(data.y_labels)


@needs_mpl
def test_matplotlib_comparison_of_a_big_model_thins_its_labels() -> None:
    """144 heads by 40 positions (GPT-2 small's grid): the figure stays on a page and labels every k-th row and
    column, so the labels do not overlap."""
    n_layers, n_pos, n_heads = 12, 40, 12
    gen = torch.Generator().manual_seed(0)
    maps = {name: torch.randn(n_layers, n_pos, n_heads, dtype=torch.float64, generator=gen) for name in PANELS}

    class BigComparison:  # what the plots read of a Comparison (viz.compare.ComparisonLike)
        layouts = {"attn_head_out_by_pos": SimpleNamespace(axis_names=("layer", "pos", "head"),
                                                           shape=(n_layers, n_pos, n_heads), **maps)}
        pos_labels = tuple(f"{p}: w{p}" for p in range(n_pos))
        metric_clean, metric_corrupted, incorrect_tokens = 1.0, -1.0, 5

        def __getitem__(self, layout: str):
            return self.layouts[layout]

    cmp = BigComparison()
    fig = viz.side_by_side(cmp, "attn_head_out_by_pos", backend="matplotlib")
    _readable_print_size(fig, "big")
    data = viz.heatmap_panels(cmp, "attn_head_out_by_pos")
    left, right = fig.axes[:2]  # the right panel shares the left one's rows (and their labels)
    for ticks, got, labels in ((left.get_xticks(), left.get_xticklabels(), data.x_labels),
                               (right.get_xticks(), right.get_xticklabels(), data.x_labels),
                               (left.get_yticks(), left.get_yticklabels(), data.y_labels)):
        step = int(ticks[1] - ticks[0])
        assert step > 1 and list(ticks) == list(range(0, len(labels), step))
        assert [t.get_text() for t in got] == list(labels[::step])


# --------------------------------------------------------------------------------------- saving
@needs_plotly
def test_save_html(ioi, tmp_path) -> None:
    _, _, _, caches, mary, john = ioi
    fig = viz.head_grid(caches["heads"], mary, incorrect_tokens=john, backend="plotly")
    path = viz.save(fig, tmp_path / "heads.html")
    text = path.read_text()
    assert "<html" in text[:200].lower() and "Which attention heads drive" in text
    assert '"responsive": true' in text and "width:100%" in text  # the figure follows the window's width
    # plotly.js is embedded (megabytes), not loaded from a CDN: the file opens offline
    assert len(text) > 1_000_000 and '<script src="https://cdn' not in text
    page = viz.save_html_page({"heads": fig, "tokens": viz.token_heatmap(caches["tokens"], mary, backend="plotly")},
                              tmp_path / "page.html", title="Mary & John")
    text = page.read_text()
    assert text.count("<h2>") == 2 and "Mary &amp; John" in text


@needs_mpl
def test_save_png_from_matplotlib(ioi, tmp_path) -> None:
    _, _, _, caches, mary, _ = ioi
    path = viz.save(viz.token_heatmap(caches["tokens"], mary, backend="matplotlib"), tmp_path / "tokens.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DePassError, match="HTML output needs an interactive plotly figure"):
        viz.save(viz.head_grid(caches["heads"], mary, backend="matplotlib"), tmp_path / "heads.html")


def test_save_rejects_bad_paths_and_objects(tmp_path) -> None:
    with pytest.raises(DePassError, match="must end in one of"):
        viz.save(object(), tmp_path / "fig.jpeg")
    with pytest.raises(DePassError, match="does not exist"):
        viz.save(object(), tmp_path / "missing" / "fig.png")
    with pytest.raises(DePassError, match="plotly or matplotlib figure"):
        viz.save(object(), tmp_path / "fig.png")


_KALEIDO = _version("kaleido")
_PLOTLY = _version("plotly")
_BUNDLED_EXPORTER = _KALEIDO is not None and _KALEIDO < (1, 0) and _PLOTLY is not None and _PLOTLY < (7, 0)
_NO_EXPORTER = HAS_PLOTLY and (_KALEIDO is None or (_KALEIDO < (1, 0) and _PLOTLY is not None and _PLOTLY >= (7, 0)))


@pytest.mark.skipif(not _BUNDLED_EXPORTER, reason="needs kaleido 0.2.x with plotly < 7 (the offline exporter)")
def test_save_png_from_plotly_with_the_bundled_exporter(ioi, tmp_path) -> None:
    _, _, _, caches, mary, _ = ioi
    path = viz.save(viz.head_grid(caches["heads"], mary, backend="plotly"), tmp_path / "heads.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not _NO_EXPORTER, reason="a plotly static exporter may be available")
def test_save_png_from_plotly_without_an_exporter_names_the_fix(ioi, tmp_path) -> None:
    _, _, _, caches, mary, _ = ioi
    with pytest.raises(DePassError, match="kaleido.*backend='matplotlib'"):
        viz.save(viz.head_grid(caches["heads"], mary, backend="plotly"), tmp_path / "heads.png")


# ------------------------------------------------------------------------------------- backends
def test_missing_viz_extra_names_the_install(ioi, monkeypatch) -> None:
    _, _, _, caches, mary, _ = ioi
    monkeypatch.setattr(_backend, "_installed", lambda name: False)  # as if neither library were installed
    for call in (lambda: viz.token_heatmap(caches["tokens"], mary), lambda: viz.head_grid(caches["heads"], mary),
                 lambda: viz.flow(caches["tokens"], mary), lambda: viz.token_heatmap(caches["tokens"], mary,
                                                                                       backend="plotly")):
        with pytest.raises(DePassError, match=r'pip install "depass_tl\[viz\]"'):
            call()
    with pytest.raises(DePassError, match="backend must be"):
        viz.resolve_backend("bokeh")


def test_plot_data_needs_no_plotting_library(ioi, monkeypatch) -> None:
    _, _, _, caches, mary, john = ioi
    monkeypatch.setattr(_backend, "_installed", lambda name: False)
    assert not math.isnan(viz.token_heatmap_data(caches["tokens"], mary).total)
    model = ioi[0]
    assert viz.head_grid_data(caches["heads"], mary, incorrect_tokens=john).values.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert viz.flow_data(caches["tokens"], mary).hooks


def test_a_plot_reads_the_position_its_numbers_come_from() -> None:
    """pos=-2 in a right-padded batch: logit_attrs counts back from each prompt's last real token; the plot's
    position (its label and marker) used the column, a pad, while its total came from the real token."""
    from tests.models import make_model, random_tokens

    model = make_model("gpt2", n_layers=2)
    toks = random_tokens(model, batch=2, pos=6)
    mask = torch.ones_like(toks)
    mask[1, 4:] = 0
    logits, dc = depass_tl.run_with_depass(model, toks, attention_mask=mask)
    data = viz.token_heatmap_data(dc, 5, batch=1, pos=-2)
    assert data.pos == 2  # prompt 1's last real token is column 3
    assert data.total == pytest.approx(float(logits[1, 2, 5]), abs=1e-9)
    # only the plotted prompt's length limits a negative position (attrs computed by hand for prompt 0)
    attrs = dc.logit_attrs(5, pos=torch.tensor([1, 0]))
    assert viz.token_heatmap_data(dc, attrs=attrs, batch=0, pos=-5).pos == 1
