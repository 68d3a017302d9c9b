"""Dataset runs (depass_tl.run_dataset): every row equals the prompt's own run, the run resumes after an
interruption without redoing or losing a row, and another run's folder is refused.

The reference for each row is ``run_with_depass`` on that prompt alone, unpadded (float64 models, so
padding in a batch changes nothing beyond 1e-10). The split over ``torch.distributed`` ranks is checked
by tests/test_distributed.py (2 gloo processes).
"""

from __future__ import annotations

import copy

import json
import warnings
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

import depass_tl
from depass_tl import DePassError
from depass_tl import dataset as ds
from tests.models import config_model, make_model, randomise, word_tokenizer

WORDS = ["When", " Mary", " and", " John", " went", " to", " the", " store", ",", " gave", " a", " drink"]
TEXTS = ["When Mary and John went to the store", "John gave a drink", "When Mary went", "Mary and John went to",
         "When John gave", "the store"]


def _text_model(side: str) -> Any:
    tok = word_tokenizer(WORDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = config_model(n_layers=2, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_mlp=32, d_vocab=len(tok),
                             act_fn="gelu", seed=0, dtype=torch.float64, tokenizer=tok, default_padding_side=side)
    randomise(model, seed=0, scale=0.3)
    return model.eval()


def _close(a: Any, b: Any, atol: float = 1e-10) -> None:
    f64 = torch.float64
    torch.testing.assert_close(torch.tensor(list(a), dtype=f64), torch.tensor(list(b), dtype=f64), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def model() -> Any:
    return make_model("gpt2", n_layers=2, d_vocab=40).eval()


def _id_prompts(n: int = 7) -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, 40, (int(torch.randint(2, 7, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]


def _alone(model: Any, prompt: Any, target: Any, contrast: Any = None, **kw: Any) -> tuple[tuple[str, ...], list[float]]:
    """Labels and attributions of one prompt run by itself."""
    inp = prompt if isinstance(prompt, str) else torch.tensor([prompt])
    _, dc = depass_tl.run_with_depass(model, inp, **kw)
    return dc.labels, dc.logit_attrs(target, incorrect_tokens=contrast)[:, 0].tolist()


@pytest.mark.parametrize("side", ["right", "left"])
def test_rows_equal_each_prompt_run_alone(side: str, tmp_path: Path) -> None:
    model = _text_model(side)
    targets = [" Mary", " John", " store", " drink", " Mary", " to"]
    done = depass_tl.run_dataset(model, TEXTS, target=targets, contrast=" and", batch_size=4, out=tmp_path / "a",
                                 progress=False)
    assert (done.written, done.skipped, done.n_prompts) == (len(TEXTS), 0, len(TEXTS))
    df = depass_tl.read_results(tmp_path / "a")
    assert df["index"].tolist() == list(range(len(TEXTS)))
    for i, row in df.iterrows():
        labels, values = _alone(model, TEXTS[i], targets[i], " and")
        assert tuple(row["labels"]) == labels
        _close(row["attributions"], values)
        assert list(row["tokens"]) == model.to_tokens(TEXTS[i])[0].tolist()
        assert list(row["str_tokens"]) == model.to_str_tokens(TEXTS[i])
        assert row["prompt"] == TEXTS[i]
        assert row["target"] == model.to_single_token(targets[i]) and row["contrast"] == model.to_single_token(" and")
        with torch.no_grad():
            logits = model(TEXTS[i])[0, -1]
        assert row["clean"] == pytest.approx(float(logits[row["target"]] - logits[row["contrast"]]), abs=1e-10)
        assert row["completeness_error"] < 1e-10 and row["hook_completeness_error"] < 1e-10
        assert sum(row["attributions"]) == pytest.approx(row["clean"], abs=1e-10)


@pytest.mark.parametrize("rule", ["softmax", "max", "ratio"])
def test_token_id_prompts_and_heads(model: Any, rule: str, tmp_path: Path) -> None:
    prompts = _id_prompts()
    targets = list(range(3, 3 + len(prompts)))
    spec = depass_tl.heads()
    depass_tl.run_dataset(model, prompts, target=targets, components=spec, mlp_rule=rule, batch_size=3,
                          out=tmp_path / "h", ids=[f"p{i}" for i in range(len(prompts))], progress=False)
    df = depass_tl.read_results(tmp_path / "h")
    assert df["id"].tolist() == [f"p{i}" for i in range(len(prompts))]
    assert df["prompt"].isna().all() and df["str_tokens"].isna().all()
    K = 4 + 2  # heads, rest, bias per layer group
    for i, row in df.iterrows():
        labels, values = _alone(model, prompts[i], targets[i], components=spec, mlp_rule=rule)
        assert tuple(row["labels"]) == labels and len(labels) == 2 * K
        _close(row["attributions"], values)
        sums = torch.tensor(list(row["attributions"]), dtype=torch.float64).reshape(2, K).sum(1)
        _close(sums.tolist(), [row["clean"]] * 2)  # each layer's group sums to the clean value
        assert row["completeness_error"] < 1e-10


def test_long_format(model: Any, tmp_path: Path) -> None:
    prompts = _id_prompts(3)
    depass_tl.run_dataset(model, prompts, target=5, out=tmp_path / "l", progress=False)
    wide = depass_tl.read_results(tmp_path / "l")
    long = depass_tl.read_results(tmp_path / "l", long=True)
    assert len(long) == sum(len(r) for r in wide["labels"])
    assert list(long.columns) == ["index", "id", "target", "contrast", "clean", "label", "attribution"]
    per_prompt = long.groupby("index")["attribution"].sum()
    _close(per_prompt.tolist(), wide["clean"].tolist())
    assert long.attrs["settings"]["quantity"] == "logit"


class _Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_run_resumes_without_redoing_or_losing_rows(model: Any, tmp_path: Path, monkeypatch) -> None:
    prompts = _id_prompts(9)
    out = tmp_path / "r"
    depass_tl.run_dataset(model, prompts, target=7, batch_size=2, out=tmp_path / "whole", progress=False)
    whole = depass_tl.read_results(tmp_path / "whole")

    real_rows, calls = ds._rows, []

    def interrupted(batch, *args, **kwargs):  # Ctrl-C while the 4th batch is being replayed
        calls.append(list(batch))
        if len(calls) == 4:
            raise _Interrupt
        return real_rows(batch, *args, **kwargs)

    monkeypatch.setattr(ds, "_rows", interrupted)
    with pytest.raises(_Interrupt):
        depass_tl.run_dataset(model, prompts, target=7, batch_size=2, rows_per_file=4, out=out, progress=False)
    monkeypatch.setattr(ds, "_rows", real_rows)
    kept = depass_tl.read_results(out)
    assert kept["index"].tolist() == [0, 1, 2, 3]  # the first file (2 batches); the 3rd batch was in memory
    (out / ".tmp-000000006-r0.parquet").write_bytes(b"half a file")  # a write cut short

    calls.clear()
    monkeypatch.setattr(ds, "_rows", lambda batch, *a, **k: calls.append(list(batch)) or real_rows(batch, *a, **k))
    again = depass_tl.run_dataset(model, prompts, target=7, batch_size=2, rows_per_file=4, out=out, progress=False)
    assert (again.written, again.skipped) == (5, 4)
    assert calls == [[4, 5], [6, 7], [8]]  # only what was not written
    assert not list(out.glob(".tmp-*"))
    resumed = depass_tl.read_results(out)
    assert resumed["index"].tolist() == list(range(9))
    for a, b in zip(resumed["attributions"], whole["attributions"]):
        assert list(a) == pytest.approx(list(b), abs=1e-12)
    assert depass_tl.run_dataset(model, prompts, target=7, out=out, progress=False).written == 0


def test_appended_prompts_are_done_on_resume(model: Any, tmp_path: Path) -> None:
    prompts = _id_prompts(5)
    depass_tl.run_dataset(model, prompts[:3], target=7, out=tmp_path / "g", progress=False)
    more = depass_tl.run_dataset(model, prompts, target=7, out=tmp_path / "g", progress=False)
    assert (more.written, more.skipped) == (2, 3)
    assert depass_tl.read_results(tmp_path / "g")["index"].tolist() == list(range(5))


def test_another_runs_folder_is_refused(model: Any, tmp_path: Path) -> None:
    prompts = _id_prompts(3)
    out = tmp_path / "x"
    depass_tl.run_dataset(model, prompts, target=7, out=out, progress=False)
    with pytest.raises(DePassError, match=r"another run \(different mlp_rule"):
        depass_tl.run_dataset(model, prompts, target=7, mlp_rule="ratio", out=out, progress=False)
    with pytest.raises(DePassError, match="different quantity"):
        depass_tl.run_dataset(model, prompts, target=7, contrast=8, out=out, progress=False)
    with pytest.raises(DePassError, match="rows for other prompts .*index 1"):
        depass_tl.run_dataset(model, [prompts[0], prompts[2], prompts[1]], target=7, out=out, progress=False)
    with pytest.raises(DePassError, match="resume=False"):
        depass_tl.run_dataset(model, prompts, target=7, out=out, resume=False, progress=False)
    assert json.loads((out / ds.SETTINGS_FILE).read_text())["mlp_rule"] == "Softmax(temperature=0.1)"


def test_a_resume_with_other_targets_weights_tokenisation_or_basis_is_refused(tmp_path: Path) -> None:
    """Each of these changes the rows' numbers; they were not recorded, so a resume kept the old rows beside
    new ones (found by a review): the target (row keys), prepend_bos, a subspace basis, the weights."""
    model = _text_model("right")
    out = tmp_path / "t"
    depass_tl.run_dataset(model, TEXTS[:2], target=" Mary", out=out, progress=False)
    with pytest.raises(DePassError, match=r"rows for other prompts .*index 0: not the prompt, target and contrast"):
        depass_tl.run_dataset(model, TEXTS[:3], target=" John", out=out, progress=False)
    with pytest.raises(DePassError, match=r"different prepend_bos: prepend_bos was None, now False"):
        depass_tl.run_dataset(model, TEXTS[:3], target=" Mary", out=out, progress=False, prepend_bos=False)
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[0].mlp.W_in[0, 0] += 1e-3
    with pytest.raises(DePassError, match=r"different model: .*'weights'"):
        depass_tl.run_dataset(edited, TEXTS[:3], target=" Mary", out=out, progress=False)
    assert depass_tl.run_dataset(model, TEXTS[:3], target=" Mary", out=out, progress=False).skipped == 2  # same: resumes
    g = torch.Generator().manual_seed(0)
    V1, V2 = (torch.linalg.qr(torch.randn(16, 2, generator=g, dtype=torch.float64)).Q for _ in range(2))
    out = tmp_path / "s"
    hook = "blocks.1.hook_resid_pre"
    depass_tl.run_dataset(model, TEXTS[:2], target=" Mary", out=out, progress=False,
                          components=depass_tl.subspace(hook, V1))
    with pytest.raises(DePassError, match=r"different components: .*tensors"):
        depass_tl.run_dataset(model, TEXTS[:3], target=" Mary", out=out, progress=False,
                              components=depass_tl.subspace(hook, V2))


def test_the_weights_fingerprint_reads_big_tensors_in_chunks(monkeypatch) -> None:
    """The fingerprint's float64 temporaries are bounded by chunks; chunked or not, the same fingerprint,
    and any changed value changes it."""
    t = torch.randn(1000, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    whole = ds._fingerprint([t])
    monkeypatch.setattr(ds, "_FINGERPRINT_CHUNK", 7)
    assert ds._fingerprint([t]) == whole
    changed = t.clone()
    changed[500] += 1
    assert ds._fingerprint([changed]) != whole


def test_bad_input(model: Any, tmp_path: Path) -> None:
    with pytest.raises(DePassError, match="one token or one per prompt"):
        depass_tl.run_dataset(model, _id_prompts(3), target=[1, 2], out=tmp_path / "b", progress=False)
    with pytest.raises(DePassError, match="not a single string"):
        depass_tl.run_dataset(model, "one prompt", target=1, out=tmp_path / "b", progress=False)
    with pytest.raises(DePassError, match="prompt 1 is str"):
        depass_tl.run_dataset(model, [[1, 2], "text"], target=1, out=tmp_path / "b", progress=False)
    with pytest.raises(DePassError, match="batch_size must be a positive integer"):
        depass_tl.run_dataset(model, _id_prompts(3), target=1, batch_size=0, out=tmp_path / "b", progress=False)
    with pytest.raises(DePassError, match="no tokenizer"):
        depass_tl.run_dataset(model, _id_prompts(3), target=" Mary", out=tmp_path / "b", progress=False)
    with pytest.raises(DePassError, match=r"prompts 0\.\.2: token ids must lie in \[0, 40\)"):
        depass_tl.run_dataset(model, [[1, 2], [3, 99], [4]], target=1, out=tmp_path / "b", progress=False)
    with pytest.raises(DePassError, match="distributed=True needs an initialised torch.distributed"):
        depass_tl.run_dataset(model, _id_prompts(3), target=1, out=tmp_path / "b", distributed=True)
    (tmp_path / "f").write_text("")
    with pytest.raises(DePassError, match="is a file"):
        depass_tl.run_dataset(model, _id_prompts(3), target=1, out=tmp_path / "f", progress=False)
    with pytest.raises(DePassError, match="holds no run_dataset results"):
        depass_tl.read_results(tmp_path / "nothing")


def test_files_are_plain_parquet(model: Any, tmp_path: Path) -> None:
    """Any Parquet reader sees one table: the folder is a Parquet dataset of whole files."""
    import pandas as pd

    depass_tl.run_dataset(model, _id_prompts(5), target=7, batch_size=2, rows_per_file=2, out=tmp_path / "p",
                          progress=False)
    parts = sorted(p.name for p in (tmp_path / "p").glob("part-*.parquet"))
    assert parts == ["part-000000000-r0.parquet", "part-000000002-r0.parquet", "part-000000004-r0.parquet"]
    assert pq.read_table(tmp_path / "p" / parts[0]).schema == ds._schema()
    assert sorted(pd.read_parquet(tmp_path / "p")["index"]) == list(range(5))
