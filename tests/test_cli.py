"""The ``depass-tl`` command line: the printed numbers are the library's, figures are written, and
bad input ends with one clear line and exit status 2 (in-process through ``main``, and once as a
real process through ``python -m depass_tl.cli``)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import depass_tl
from depass_tl import toy, viz
from depass_tl.cli import main
from depass_tl.viz import _backend

PROMPT = "When Mary and John went to the store, John gave a drink to"
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def ioi():
    model, enc = toy.load("ioi")
    return model, enc, enc.encode(PROMPT)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["attribute", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _rows(out: str, section: str) -> list[tuple[str, float]]:
    """(label, value) of the ranked rows of one table of the output."""
    block = out.split(section, 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in block.splitlines():
        m = re.match(r"\s+\d+\s+(\S+(?: \d+)?)\s.*?([+-]\d+\.\d{4})$", line)
        if m:
            rows.append((m.group(1), float(m.group(2))))
    return rows


def test_attribute_prints_the_librarys_numbers(ioi, capsys) -> None:
    model, enc, toks = ioi
    rc, out, err = _run(capsys, PROMPT, "--target", " Mary", "--contrast", " John", "--top", "5")
    assert rc == 0 and err == ""
    mary, john = enc.token_id(" Mary"), enc.token_id(" John")
    _, dc = depass_tl.run_with_depass(model, toks)
    attrs = dc.logit_attrs(mary, incorrect_tokens=john)[:, 0]
    tok_order = sorted(range(len(dc.labels) - 1), key=lambda c: -abs(float(attrs[c])))[:5]
    rows = _rows(out, "Tokens:")
    assert [label for label, _ in rows] == [f"pos {c}" for c in tok_order]  # tok{p} is component p
    assert [v for _, v in rows] == pytest.approx([float(attrs[c]) for c in tok_order], abs=1e-4)
    first = next(line for line in out.splitlines() if re.match(rf"\s+1\s+pos {tok_order[0]}\s", line))
    assert repr(enc.to_str_tokens(PROMPT)[tok_order[0]]) in first

    _, dh = depass_tl.run_with_depass(model, toks, components=depass_tl.heads())
    hattrs = dh.logit_attrs(mary, incorrect_tokens=john)[:, 0]
    heads = [c for c, label in enumerate(dh.labels) if re.fullmatch(r"L\d+H\d+", label)]
    head_order = sorted(heads, key=lambda c: -abs(float(hattrs[c])))[:5]
    rows = _rows(out, "Heads:")
    assert [label for label, _ in rows] == [dh.labels[c] for c in head_order]
    assert [v for _, v in rows] == pytest.approx([float(hattrs[c]) for c in head_order], abs=1e-4)

    with torch.no_grad():
        logits = model(toks)[0, -1]
    clean = float(logits[mary] - logits[john])
    m = re.search(r"clean logit\[' Mary'\] − logit\[' John'\] = ([+-]\d+\.\d+)", out)
    assert m is not None and float(m.group(1)) == pytest.approx(clean, abs=1e-4)
    sums = re.findall(r"sum over components: ([+-]\d+\.\d+)", out)
    assert sums and float(sums[0]) == pytest.approx(clean, abs=1e-4)
    errs = [float(e) for e in re.findall(r"\|sum - clean\| = (\S+);", out)]
    assert len(errs) == 2 and max(errs) < 1e-4


def test_options_reach_the_library(ioi, capsys) -> None:
    model, enc, toks = ioi
    mary = enc.token_id(" Mary")
    rc, out, _ = _run(capsys, PROMPT, "--target", " Mary", "--components", "sources", "--mlp-rule", "ratio",
                      "--top", "3")
    assert rc == 0 and "Sources:" in out and "Tokens:" not in out and "Heads:" not in out
    assert "mlp_rule=ratio" in out and "--contrast gives a logit difference" in out
    _, ds = depass_tl.run_with_depass(model, toks, components=depass_tl.sources(), mlp_rule="ratio")
    attrs = ds.logit_attrs(mary)[:, 0]
    order = sorted(range(len(ds.labels) - 1), key=lambda c: -abs(float(attrs[c])))[:3]
    rows = _rows(out, "Sources:")
    assert [label for label, _ in rows] == [ds.labels[c] for c in order]
    assert [v for _, v in rows] == pytest.approx([float(attrs[c]) for c in order], abs=1e-4)

    rc, out, _ = _run(capsys, PROMPT, "--target", " Mary", "--components", "tokens", "--temperature", "1.0")
    _, dt = depass_tl.run_with_depass(model, toks, temperature=1.0)
    attrs = dt.logit_attrs(mary)[:, 0]
    top = max(range(len(dt.labels) - 1), key=lambda c: abs(float(attrs[c])))
    assert rc == 0 and "(temperature 1.0)" in out and "Heads:" not in out
    assert _rows(out, "Tokens:")[0][1] == pytest.approx(float(attrs[top]), abs=1e-4)


@pytest.mark.skipif(not HAS_MPL, reason="--png needs matplotlib (the viz extra)")
def test_html_is_the_explorer_from_one_capture_and_png_the_figures(ioi, capsys, tmp_path, monkeypatch) -> None:
    model, enc, toks = ioi
    captures = []
    capture = depass_tl.capture
    monkeypatch.setattr(depass_tl, "capture", lambda *a, **k: captures.append(1) or capture(*a, **k))
    html, png = tmp_path / "fig.html", tmp_path / "fig.png"
    argv = (PROMPT, "--target", " Mary", "--contrast", " John", "--mlp-rule", "ratio")
    rc, out, _ = _run(capsys, *argv, "--html", str(html), "--png", str(png))
    assert rc == 0 and len(captures) == 1  # one forward pass for the tables, the page and every MLP rule
    # stdout is the run without --html/--png plus one line per file written
    rc, plain, _ = _run(capsys, *argv)
    assert out.startswith(plain) and out[len(plain):].lstrip("\n").splitlines() == [
        f"wrote {html}", *(f"wrote {tmp_path / f'fig-{k}.png'}" for k in ("tokens", "token-flow", "heads"))]
    # the page holds the data the public API builds from the same model (every rule, top-8 candidates)
    text = html.read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="depass-data">(.*?)</script>', text, re.S)
    run = capture(model, toks, extra_hooks=viz.explorer_hooks(model.cfg.n_layers))
    expected = viz.explorer_data(
        viz.explorer_caches(run, progress=False), target=enc.token_id(" Mary"), contrast=enc.token_id(" John"),
        top_k=8, decode=lambda i: enc.vocab[i], str_tokens=enc.to_str_tokens(toks), rule="ratio", prompt=PROMPT,
        model="toy model 'ioi'",
    )
    assert json.loads(blob.group(1)) == json.loads(json.dumps(expected))
    assert len(text) < 200_000 and "<script src" not in text  # one small self-contained page
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["fig-heads.png", "fig-token-flow.png", "fig-tokens.png"]
    assert all((tmp_path / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    one = tmp_path / "heads.png"  # a single figure keeps the exact name
    rc, _, _ = _run(capsys, PROMPT, "--target", " Mary", "--components", "heads", "--png", str(one))
    assert rc == 0 and one.read_bytes()[:4] == b"\x89PNG"


def test_html_needs_no_plotting_library(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(_backend, "_installed", lambda name: False)  # neither plotly nor matplotlib installed
    page = tmp_path / "page.html"
    rc, out, err = _run(capsys, PROMPT, "--target", " Mary", "--html", str(page))
    assert rc == 0 and err == "" and f"wrote {page}" in out
    assert 'id="depass-data"' in page.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["", "--target", " Mary"], "the prompt is empty"),
        (["   ", "--target", " Mary"], "the prompt is empty"),
        ([PROMPT, "--target", " Mary and"], r"--target ' Mary and' is 2 tokens \[' Mary', ' and'\], not one"),
        ([PROMPT, "--target", "Mary"], r"did you mean ' Mary'\?"),
        ([PROMPT, "--target", " Zebra"], "not in the toy vocabulary"),
        ([PROMPT, "--target", " Mary", "--contrast", ""], "--contrast is empty"),
        (["When Mary kissed a zebra", "--target", " Mary"], "word ' kissed' in 'When Mary kissed a zebra' is not in the toy"),
        ([PROMPT, "--target", " Mary", "--model", "not-a-model"],
         r"unknown model 'not-a-model': not a toy model \(facts, induction, ioi\)"),
        ([PROMPT, "--target", " Mary", "--top", "0"], "--top must be at least 1"),
        ([PROMPT, "--target", " Mary", "--temperature", "0"], "--temperature must be > 0"),
        ([PROMPT, "--target", " Mary", "--html", "out.png"], "--html needs a file name ending in .html"),
        ([PROMPT, "--target", " Mary", "--png", "/no/such/folder/x.png"], "does not exist"),
        ([PROMPT + ", John" * 10, "--target", " Mary"], r"the prompt is 35 tokens, longer than the model.s context \(32\)"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, argv: list[str], message: str) -> None:
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("depass-tl: error: ") and err.count("\n") == 1
    assert re.search(message, err), err


SAME_TOKEN = "depass-tl: error: --contrast ' Mary' is the same token as --target ' Mary'; the contrast must be a "


def test_a_contrast_equal_to_the_target_is_refused_before_any_work(capsys, monkeypatch, tmp_path) -> None:
    """It would print tables of zeros (and --html failed later, in explorer_data); the same line for each command."""
    import depass_tl.toy

    def no_model_work(*args, **kwargs):
        raise AssertionError("a model was loaded or run")

    monkeypatch.setattr(depass_tl.toy, "load", no_model_work)
    monkeypatch.setattr(depass_tl, "capture", no_model_work)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT}) + "\n", encoding="utf-8")
    same = ["--target", " Mary", "--contrast", " Mary"]
    errors = []
    for argv in (["attribute", PROMPT, *same], ["attribute", PROMPT, *same, "--html", str(tmp_path / "page.html")],
                 ["dataset", str(prompts), *same, "--out", str(tmp_path / "out.parquet")]):
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 2 and out == "" and err.count("\n") == 1, argv
        errors.append(err)
    assert errors[0] == errors[1] == errors[2] and errors[0].startswith(SAME_TOKEN), errors[0]
    assert "different token" in errors[0] and "leave --contrast out" in errors[0]
    assert list(tmp_path.iterdir()) == [prompts]  # no page, no dataset folder


def test_two_spellings_of_the_target_token_are_refused_as_a_contrast(capsys, monkeypatch) -> None:
    """Texts that differ can still be one token id (tokenizers normalise); checked once the ids are known."""
    from depass_tl.toy.encoder import ToyEncoder

    token_id = ToyEncoder.token_id
    monkeypatch.setattr(ToyEncoder, "token_id", lambda self, t: token_id(self, " Mary" if t == " Marie" else t))
    rc, out, err = _run(capsys, PROMPT, "--target", " Mary", "--contrast", " Marie")
    mary = toy.load("ioi")[1].token_id(" Mary")
    assert rc == 2 and out == ""
    assert err.startswith(f"depass-tl: error: --contrast ' Marie' is the same token as --target ' Mary' (both are "
                          f"token {mary}); the contrast must be a different token"), err


def test_missing_viz_extra_is_reported_before_any_work(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(_backend, "_installed", lambda name: False)
    rc, out, err = _run(capsys, PROMPT, "--target", " Mary", "--png", str(tmp_path / "f.png"))
    assert rc == 2 and out == "" and 'pip install "depass_tl[viz]"' in err
    assert not (tmp_path / "f.png").exists()


def test_argparse_errors_exit_2(capsys) -> None:
    for argv in (["attribute", PROMPT], ["attribute", PROMPT, "--target", " Mary", "--components", "neurons"],
                 ["attribute", PROMPT, "--target", " Mary", "--mlp-rule", "nope"], []):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--target" in err and "neurons" in err and "nope" in err and "taylor" in err  # taylor among the choices


def test_runs_as_a_module_in_a_fresh_process() -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "depass_tl.cli", "attribute", PROMPT, "--target", " Mary", "--contrast", " John",
         "--top", "3"],
        capture_output=True, text=True, cwd=root, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    config = toy.info("ioi")["model_config"]
    n_heads = config["n_layers"] * config["n_heads"]
    assert "Tokens: top 3 of 15" in proc.stdout and f"Heads: top 3 of {n_heads}" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_local_hugging_face_folder_loads_as_a_bridge(capsys) -> None:
    """Any causal LM saved with its tokenizer (here a random GPT-2) works offline through the Bridge (TL >= 3)."""
    from tests._tl_version import HAS_BRIDGE, TL_VERSION

    if not HAS_BRIDGE:
        pytest.skip(f"needs TransformerBridge (TL >= 3); installed TransformerLens {TL_VERSION}")
    from tests.bridge_models import local_folder

    folder = local_folder("gpt2")
    rc, out, err = _run(capsys, " t5 t7 t9 t11", "--target", " t3", "--contrast", " t4", "--model", str(folder),
                        "--top", "3")
    assert rc == 0, err
    assert "(TransformerBridge.boot_transformers)" in out and "Heads: top 3 of" in out
    errs = [float(e) for e in re.findall(r"\|sum - clean\| = (\S+);", out)]
    assert len(errs) == 2 and max(errs) < 1e-4
    # a prompt longer than the model's context is refused, not cut at n_ctx (TL's to_tokens truncates by default)
    rc, out, err = _run(capsys, " t5" * 40, "--target", " t3", "--model", str(folder))
    assert rc == 2 and "longer than the model's context (cfg.n_ctx=32)" in err, (rc, err)
