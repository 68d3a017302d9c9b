"""The tutorial notebooks: they execute without error, and are committed without outputs.

Every notebook in ``notebooks/`` is executed top to bottom in a fresh kernel (nbclient); a cell that
raises, including the notebooks' own ``assert`` cells that pin the claims their prose makes, fails
the test, and so does a progress bar in any output (``TQDM_DISABLE`` is unset, as for a student). ``06_gpt2_ioi.ipynb`` needs GPT-2's weights from the HuggingFace hub; tests never download,
so it runs its analysis only when the weights are already in the local cache, and otherwise is executed
to check that it says in one line what it needs and skips the rest (its code cells are also checked to
compile). ``05_decompx_bert.ipynb`` runs DecompX on the transformers model on every TL version; its
``HookedEncoder`` comparison runs where TL has the class, and on TL 4 the test checks that the cell
says it was skipped.

The notebooks are generated from their sources ``notebooks/src/NN_*.py`` (percent format) by
``notebooks/_build.py``; a test checks that the committed files are what it writes.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

from tests._tl_version import HAS_HOOKED

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ALL = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
NEEDS_GPT2 = {"06_gpt2_ioi.ipynb"}
COMPARES_HOOKED_ENCODER = {"05_decompx_bert.ipynb"}  # one cell compares with HookedEncoder, which TL 4 removed
TIMEOUT_S = 300  # per cell; every notebook runs in well under a minute on one CPU thread


def gpt2_weights_cached() -> bool:
    """True when ``HookedTransformer.from_pretrained("gpt2")`` works offline (no network is used)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    if not isinstance(try_to_load_from_cache("gpt2", "config.json"), str):
        return False  # the usual case offline: nothing cached, skip the slow attempt below
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from transformer_lens import HookedTransformer

        HookedTransformer.from_pretrained("gpt2")
    except OSError:  # what transformers raises offline when a file is not in the cache
        return False
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    return True


def execute(path: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    # the kernel must import this checkout's depass_tl, and must never reach the network
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # a student's setting: bars would show, so none may be drawn
    nb = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    return nb


PROGRESS_BAR = re.compile(r"\d+%\||\d+/\d+ \[[^\]]*(it/s|s/it)")


def progress_bars(nb: nbformat.NotebookNode) -> list[str]:
    """``"cell i: text"`` for every output of an executed notebook that is a progress bar (tqdm text or widget)."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.output_type == "stream" else ""
            widget = any("widget" in kind for kind in out.get("data", {}))
            if widget or PROGRESS_BAR.search(text):
                found.append(f"cell {i}: {text.strip()[:80] or 'a widget'}")
    return found


def test_progress_bar_pattern() -> None:
    assert PROGRESS_BAR.search("\r 40%|████      | 4/10 [00:01<00:02,  2.9it/s]")
    assert PROGRESS_BAR.search("DAS: 3/150 [00:00<00:05, 28.1it/s]")
    assert not PROGRESS_BAR.search("E(v) = 0.65 | whole site 100% of the effect")


def strip_magics(source: str) -> str:
    """Comment out IPython magics and shell escapes so that plain ``compile`` accepts the cell."""
    return re.sub(r"(?m)^(\s*)([%!])", r"\1# \2", source)


def test_notebooks_exist() -> None:
    assert ALL == [
        "01_quickstart.ipynb",
        "02_induction_circuit.ipynb",
        "03_ioi_side_by_side.ipynb",
        "04_subspace_illusion.ipynb",
        "05_decompx_bert.ipynb",
        "06_gpt2_ioi.ipynb",
    ]


@pytest.mark.parametrize("name", ALL)
def test_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs; run `python notebooks/_build.py`"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"


def _generator():
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import _build
    finally:
        sys.path.remove(str(NOTEBOOKS))
    return _build


def test_every_notebook_has_one_source() -> None:
    assert sorted(_generator().sources()) == ALL


@pytest.mark.parametrize("name", ALL)
def test_committed_notebooks_match_their_sources(name: str) -> None:
    built = _generator().build(name)
    committed = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], (
        f"{name} differs from notebooks/src/{name[:-6]}.py; edit the source and run `python notebooks/_build.py`"
    )
    assert (NOTEBOOKS / name).read_text() == nbformat.writes(built) + "\n"  # byte for byte: ids, metadata


def test_percent_format_round_trip() -> None:
    gen = _generator()
    text = "# %% [markdown]\n# # Title\n#\n# Some *text*.\n\n# %%\nx = 1\n\nprint(x)\n\n# %%\ny = 2\n"
    assert gen.parse(text) == [("md", "# Title\n\nSome *text*."), ("code", "x = 1\n\nprint(x)"), ("code", "y = 2")]
    with pytest.raises(ValueError, match="must start with"):
        gen.parse("x = 1\n# %%\n")
    with pytest.raises(ValueError, match="markdown lines must be comments"):
        gen.parse("# %% [markdown]\nnot a comment\n")


@pytest.mark.parametrize("name", ALL)
def test_code_cells_compile(name: str) -> None:
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            compile(strip_magics(cell.source), f"{name}[cell {i}]", "exec")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in NEEDS_GPT2])
def test_notebook_executes(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = execute(NOTEBOOKS / name, monkeypatch)
    assert progress_bars(nb) == [], f"{name} draws progress bars; pass progress=False"
    if name in COMPARES_HOOKED_ENCODER:
        printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        if HAS_HOOKED:
            assert "HookedEncoder vs transformers: max difference" in printed
        else:
            assert "skipped: transformer_lens.HookedEncoder is not available" in printed
            assert "HookedEncoder vs transformers" not in printed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEEDS_GPT2))
def test_gpt2_notebook_runs_or_says_what_it_needs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With GPT-2 cached it runs; offline without it, it prints one line and skips its cells (no download)."""
    if gpt2_weights_cached():
        execute(NOTEBOOKS / name, monkeypatch)
        return
    nb = execute(NOTEBOOKS / name, monkeypatch)
    assert progress_bars(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    printed = ["".join(o.get("text", "") for o in c.outputs) for c in code]
    skipped = [i for i, text in enumerate(printed) if text.startswith("Skipping this notebook")]
    assert len(skipped) == 1 and printed[skipped[0]].count("\n") == 1, printed
    assert "needs GPT-2 small's weights" in printed[skipped[0]]
    assert all(not c.outputs for c in code[skipped[0] + 1 :])  # every later cell ran as `pass`
