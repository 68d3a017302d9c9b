"""``depass-tl dataset``: the rows are the library's (each prompt's own run), a second run resumes, and
bad files end with one line naming the line and field, exit status 2. (Under torchrun: tests/test_distributed.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import depass_tl
from depass_tl import toy
from depass_tl.cli import main

RECORDS = [
    {"name": "a", "prompt": "When Mary and John went to the store, John gave a drink to", "answer": " Mary", "wrong": " John"},
    {"name": "b", "prompt": "When John and Mary went to the store, Mary gave a drink to", "answer": " John", "wrong": " Mary"},
    {"name": "c", "prompt": "When Mary and John went to the store, Mary gave a drink to", "answer": " John", "wrong": " Mary"},
]


def _jsonl(path: Path, records: list[dict], extra: str = "") -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n" + extra)
    return path


def test_dataset_writes_the_librarys_rows_and_resumes(tmp_path: Path, capsys) -> None:
    file = _jsonl(tmp_path / "p.jsonl", RECORDS)
    out = tmp_path / "attrs.parquet"
    argv = ["dataset", str(file), "--target-field", "answer", "--contrast-field", "wrong", "--id-field", "name",
            "--out", str(out), "--batch-size", "2", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 rows" in printed and "(0 already there)" in printed and "on 1 process" in printed
    df = depass_tl.read_results(out)
    assert df["id"].tolist() == ["a", "b", "c"]
    model, _ = toy.load("ioi")
    for r, (_, row) in zip(RECORDS, df.iterrows()):
        _, dc = depass_tl.run_with_depass(model, r["prompt"])
        expected = dc.logit_attrs(r["answer"], incorrect_tokens=r["wrong"])[:, 0]
        torch.testing.assert_close(torch.tensor(list(row["attributions"]), dtype=torch.float32), expected,
                                   atol=1e-5, rtol=1e-5)
        assert tuple(row["labels"]) == dc.labels and row["target"] == model.to_single_token(r["answer"])
    assert f"over 3 rows = {float(df['completeness_error'].max()):.2e}" in printed
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "wrote 0 rows" in again and "(3 already there)" in again


def test_one_target_for_all_and_heads(tmp_path: Path, capsys) -> None:
    file = _jsonl(tmp_path / "p.jsonl", RECORDS[:2])
    out = tmp_path / "h"
    assert main(["dataset", str(file), "--target", " Mary", "--components", "heads", "--out", str(out),
                 "--no-progress"]) == 0
    assert "the logit at each prompt's last token" in capsys.readouterr().out
    df = depass_tl.read_results(out)
    assert df["contrast"].isna().all() and df["labels"][0][0] == "L0H0"


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "When Mary"}\n', "line 1 has no field 'answer'"),
    ('{"prompt": "When Mary", "answer": " Mary"}\nnot json\n', "line 2 is not JSON"),
    ('["When Mary"]\n', "line 1 is a JSON list, not an object"),
    ("\n\n", "holds no prompts"),
])
def test_bad_files_end_with_one_line(tmp_path: Path, capsys, content: str, message: str) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text(content)
    assert main(["dataset", str(file), "--target-field", "answer", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("depass-tl: error: ") and message in err and err.count("\n") == 1


def test_a_record_whose_contrast_is_its_target_is_refused(tmp_path: Path, capsys) -> None:
    """Its logit difference and every attribution would be 0: a data error, refused like a missing field."""
    file = _jsonl(tmp_path / "p.jsonl", [RECORDS[0], dict(RECORDS[1], wrong=" John")])
    out = tmp_path / "o"
    assert main(["dataset", str(file), "--target-field", "answer", "--contrast-field", "wrong", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"depass-tl: error: {file}: the contrast of record 1 is its target "
                                                   "' John' (1 of 2 records); the contrast must be a different token")
    assert not out.exists()


def test_missing_file_and_bad_sizes(tmp_path: Path, capsys) -> None:
    assert main(["dataset", str(tmp_path / "none.jsonl"), "--target", " Mary", "--out", str(tmp_path / "o")]) == 2
    assert "is not a file" in capsys.readouterr().err
    file = _jsonl(tmp_path / "p.jsonl", RECORDS[:1])
    assert main(["dataset", str(file), "--target", " Mary", "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
