"""Component sharding over ``torch.distributed``: ``replay`` / ``run_with_depass(..., distributed=True)``.

The real check runs two gloo processes on CPU (``tests/dist_worker.py``, launched with
``python -m torch.distributed.run --standalone --nproc_per_node 2``): every registered rule, specs of
one and of several groups, a spec no rank can split (``sources()``: one rank holds every component,
the other none), padding, chunk budgets and the official key edits, each equal to the one-process
replay to float rounding. The tests here check the pieces in one process: the chunk assignment, the
statistics merge across ranks for every competitive rule (and a wrapped one), and the refusals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import depass_tl
from depass_tl.capture import capture
from depass_tl.distributed import _slots, merge_gathered
from depass_tl.errors import DePassError, DePassValueError
from depass_tl.replay.rules import get_rule, official_key_edits, rule_names
from depass_tl.replay.shard import Shard, assign
from tests.models import make_model, random_tokens

ROOT = Path(__file__).resolve().parents[1]


def test_assign_balances_rows_times_positions() -> None:
    """Longest chunk first to the least loaded rank; every rank gets a chunk when there are enough."""
    chunks = [(0, 0, 2, 0), (0, 2, 4, 2), (0, 4, 6, 4), (0, 6, 8, 6), (0, 8, 9, 0)]  # costs 16, 12, 8, 4, 8
    owner = assign(chunks, 2, 8)
    load = [sum((b - a) * (8 - lo) for (g, a, b, lo), r in zip(chunks, owner) if r == k) for k in range(2)]
    assert sorted(load) == [24, 24]
    assert assign(chunks, 5, 8) == [0, 1, 2, 4, 3]
    assert assign(chunks[:1], 3, 8) == [0]  # fewer chunks than ranks: the others hold none


def test_one_process_shard_owns_every_chunk() -> None:
    s = Shard()
    chunks = [(0, 0, 3, 0), (0, 3, 4, 0)]
    assert s.owns(chunks, 5) == [True, True] and s.rows(4) == [0, 1, 2, 3]
    assert s.chunk_rows(10) is None


def _keys(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, 2, 5, 6, generator=g, dtype=torch.float64)
    k[k.abs() < 0.3] = 0.0  # inactive components
    k[1] = k[0]  # ties across ranks: the max rule keeps the lower index
    return k


@pytest.mark.parametrize("rule_name", [n for n in rule_names() if not get_rule(n).linear] + ["softmax+edits"])
def test_statistics_merged_across_ranks_equal_one_pass(rule_name: str) -> None:
    """Two ranks fold halves of a group (global row numbers), exchange tensors, merge: as one pass."""
    rule = get_rule(rule_name.split("+")[0])
    if rule_name.endswith("+edits"):
        rule = official_key_edits(rule, 0, ignore_special_token=True, official_position0=False)
    keys = _keys(0, 8)
    shape = tuple(keys.shape[1:])
    whole = rule.init_stats(shape, keys.dtype, keys.device)
    whole.fold(keys.clone(), 0, 0)
    ranks = [rule.init_stats(shape, keys.dtype, keys.device) for _ in range(2)]
    ranks[1].fold(keys[0:2].clone(), 0, 0)  # rank 1 holds the first rows, rank 0 the rest: order must not matter
    ranks[0].fold(keys[2:].clone(), 2, 0)
    n_slots = len(_slots(ranks[0]))
    gathered = [[getattr(*_slots(st)[i]).clone() for st in ranks] for i in range(n_slots)]  # what all_gather gives
    for mine in ranks:
        merge_gathered(mine, gathered)
        for (o, n), (wo, wn) in zip(_slots(mine), _slots(whole)):
            torch.testing.assert_close(getattr(o, n), getattr(wo, wn), rtol=1e-12, atol=0)
        target = torch.rand(shape, dtype=torch.float64)
        bias = torch.tensor([5])
        got = mine.allocate(keys[2:].clone() if rule.reads_keys else None, target, bias, 2, 6, 0)
        ref = whole.allocate(keys[2:].clone() if rule.reads_keys else None, target, bias, 2, 6, 0)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_refusals() -> None:
    model = make_model("gpt2", n_layers=1)
    run = capture(model, random_tokens(model, batch=1, pos=4))
    with pytest.raises(DePassError, match="distributed=True needs an initialised torch.distributed"):
        depass_tl.replay(run, distributed=True)
    with pytest.raises(DePassValueError, match="gather=False"):
        depass_tl.replay(run, gather=False)


def _launch(tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_worker.py"), str(tmp_path)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this torch build has no torch.distributed gloo backend to start two CPU processes with")
def test_two_gloo_ranks_replay_like_one_process(tmp_path: Path) -> None:
    """Two CPU processes, each replaying its share of the components: every case equals one process."""
    done = _launch(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["checked"] == results[1]["checked"] and results[0]["world"] == 2
    checked = results[0]["checked"]
    for rule in rule_names():
        assert f"gpt2/{rule}/plain/tokens" in checked and f"llama/{rule}/padded/heads_all" in checked
    assert "gpt2/run_with_depass/gather()" in checked and len(checked) >= 50
