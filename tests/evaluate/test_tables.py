"""The committed faithfulness tables are the benchmark's output for the current code (cheaply checked).

``python benchmarks/faithfulness.py --write`` commits per-prompt rows (docs/faithfulness/)
and the Markdown rendered from them (docs/faithfulness.md, README.md). Here:

1. the Markdown between the markers is exactly the rendering of the committed rows (no model runs);
2. the rows were made with the shipped toy weights and the current method lists (rules, baselines);
3. a few rows (one prompt per toy, a few methods per level) are recomputed with the current code and
   must match (scores to float tolerance, pass counts exactly; wall time is not compared).

When one fails, re-run ``python benchmarks/faithfulness.py --write`` and commit what it writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from depass_tl.evaluate.tables import between_markers, render_docs, render_readme
from depass_tl.evaluate.toy_benchmark import (
    TOKEN_MEASURE_COLUMNS,
    BenchmarkResults,
    head_columns,
    head_methods_for,
    run_prompt,
    task_means,
    token_methods_for,
    weights_fingerprint,
)
from depass_tl.evaluate.toy_tasks import load_task, task_names
from tests._tl_version import TL_MAJOR

from tests.evaluate._captum import HAS_CAPTUM

# TL 2.x cannot load the shipped toy state dicts (their attn.mask buffers are saved with shape [0, 0];
# TL 2.x builds [n_ctx, n_ctx] and load_state_dict(strict=True) refuses them): no toy, no rows to recompute.
needs_toys = pytest.mark.skipif(TL_MAJOR < 3, reason="depass_tl.toy.load cannot load the shipped toys on TL 2.x")

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "faithfulness"
#: the toys of the committed rows (read without importing depass_tl.toy, so collection needs no toy)
TOYS = sorted(json.loads((RESULTS / "meta.json").read_text())["tasks"])
RERUN = "re-run `python benchmarks/faithfulness.py --write` and commit what it writes"


@pytest.fixture(scope="module")
def results() -> BenchmarkResults:
    return BenchmarkResults.read(RESULTS)


def test_markdown_is_the_rendering_of_the_committed_rows(results):
    docs = between_markers((ROOT / "docs" / "faithfulness.md").read_text(), "faithfulness")
    readme = between_markers((ROOT / "README.md").read_text(), "faithfulness")
    assert docs == render_docs(results), f"docs/faithfulness.md is not the rendering of the committed rows; {RERUN}"
    assert readme == render_readme(results), f"README.md's faithfulness block is stale; {RERUN}"


def test_rows_cover_every_toy_with_its_shipped_weights(results):
    assert sorted(results.meta["tasks"]) == sorted(task_names()), f"the toys changed; {RERUN}"
    for toy, meta in results.meta["tasks"].items():
        assert meta["weights"] == weights_fingerprint(toy), f"the {toy} toy was retrained; {RERUN}"
        n = meta["n_prompts"]
        for df in (results.tokens, results.heads):
            rows = df[df["toy"] == toy]
            assert sorted(set(rows["prompt"])) == list(range(n))
            assert len(rows) == n * rows["method"].nunique()  # every method on every prompt


@needs_toys
@pytest.mark.parametrize("toy", TOYS)
def test_method_lists_are_current(results, toy):
    """A new MLP rule (or baseline) must show up in the tables: the lists come from the registries."""
    task = load_task(toy, n=1, seed=results.meta["seed"])
    for df, current in ((results.tokens, token_methods_for(task, captum=False)),
                        (results.heads, head_methods_for(task, captum=False))):
        committed = list(dict.fromkeys(df[df["toy"] == toy]["method"]))
        assert [m for m in committed if "captum" not in m] == list(current), f"the method list changed; {RERUN}"
        assert any("captum" in m for m in committed), "the committed tables must include the captum baselines"


# one prompt per toy (first, last, middle) and a few methods per level: a few seconds in all
CHECKED_PROMPT = {"ioi": 0, "induction": -1, "facts": 20}


def _subset(methods: dict, names: list[str]) -> dict:
    return {n: methods[n] for n in names if n in methods}


@needs_toys
@pytest.mark.parametrize("toy", TOYS)
def test_committed_rows_reproduce_with_the_current_code(results, toy):
    meta = results.meta["tasks"][toy]
    task = load_task(toy, n=meta["n_prompts"], seed=results.meta["seed"])
    index = CHECKED_PROMPT.get(toy, 0) % len(task.prompts)
    tm = token_methods_for(task, captum=HAS_CAPTUM, seed=results.meta["seed"])
    hm = head_methods_for(task, captum=False, seed=results.meta["seed"])
    depass = [n for n in tm if n.startswith("depass")]
    t_names = [depass[0], depass[-1], "attention rollout", "random"] + (["grad x input (captum)"] if HAS_CAPTUM else [])
    h_names = [depass[0], "exact ablation (resample)", "attribution patching (resample)", "random"]
    token_rows, head_rows = run_prompt(task, index, token_methods=_subset(tm, t_names),
                                       head_methods=_subset(hm, h_names), means=task_means(task))
    for df, rows, columns in ((results.tokens, token_rows, TOKEN_MEASURE_COLUMNS),
                              (results.heads, head_rows, ["clean", "corrupt", *head_columns(results.meta["head_k"])])):
        committed = df[(df["toy"] == toy) & (df["prompt"] == index)].set_index("method")
        for row in rows:
            old = committed.loc[row["method"]]
            for c in columns:
                assert math.isclose(row[c], float(old[c]), rel_tol=1e-4, abs_tol=1e-6), (
                    f"{toy} prompt {index} {row['method']} {c}: now {row[c]}, committed {old[c]}; {RERUN}")
            for c in ("forward", "backward", "replay"):
                assert row[c] == old[c], f"{toy} {row['method']} {c}: now {row[c]}, committed {old[c]}; {RERUN}"
