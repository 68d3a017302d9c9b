"""The README's first example runs as written, on whichever model class the installed TransformerLens gives."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _python_blocks(section: str) -> list[str]:
    body = re.search(rf"^## {re.escape(section)}\n(.*?)^## ", README, flags=re.M | re.S)
    assert body, section
    return re.findall(r"^```python\n(.*?)^```", body.group(1), flags=re.M | re.S)


def test_minimal_example_runs_and_its_comments_are_true() -> None:
    first = _python_blocks("A minimal example")[0]
    namespace: dict = {}
    exec(compile(first, "README.md (A minimal example)", "exec"), namespace)  # noqa: S102
    dcache = namespace["dcache"]
    assert tuple(dcache["blocks.1.hook_resid_post"].shape) == (16, 1, 15, 64)  # what the comment says
    assert dcache.labels[0] == "tok0" and dcache.labels[-2:] == ("tok14", "bias")
    attrs = dcache.logit_attrs(" Mary", incorrect_tokens=" John")
    logits = namespace["logits"][0, -1]
    model = namespace["model"]
    clean = logits[model.to_single_token(" Mary")] - logits[model.to_single_token(" John")]
    torch.testing.assert_close(attrs.sum(), clean, rtol=0, atol=1e-4)
    assert "token" in dcache.to_dataframe(" Mary").columns


def test_toy_model_example_runs() -> None:
    block = _python_blocks("Toy models")[0]
    namespace: dict = {}
    exec(compile(block, "README.md (Toy models)", "exec"), namespace)  # noqa: S102
    assert namespace["model"].to_str_tokens("When Mary and John") == ["<|BOS|>", "When", " Mary", " and", " John"]
