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


class _ThreadShard(Shard):
    """Rank ``rank`` of ``size`` threads in one process: the collectives through a shared list and a
    barrier (what :class:`~depass_tl.distributed.ComponentShard` does over ``torch.distributed``)."""

    def __init__(self, rank: int, size: int, board: list, barrier) -> None:  # type: ignore[no-untyped-def]
        self.rank, self.size, self.board, self.barrier = rank, size, board, barrier
        self.units = 0

    def _exchange(self, mine: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Every rank's tensors: ``out[i][r]`` is rank ``r``'s ``i``-th tensor."""
        self.board[self.rank] = [t.clone() for t in mine]
        self.barrier.wait()
        out = [[self.board[r][i] for r in range(self.size)] for i in range(len(mine))]
        self.barrier.wait()  # nobody overwrites the board before every rank has read it
        return out

    def reduce_one(self, stats) -> None:  # type: ignore[no-untyped-def]
        self.units += 1
        merge_gathered(stats, self._exchange([getattr(o, n) for o, n in _slots(stats)]))

    def reduce_sums(self, sums: dict[str, torch.Tensor]) -> None:
        names = sorted(sums)
        for name, parts in zip(names, self._exchange([sums[n] for n in names])):
            sums[name].copy_(torch.stack(parts).sum(0))


def _threaded_replay(run, init, rule, size: int, **kw):  # type: ignore[no-untyped-def]
    """Replay on ``size`` threads, each with its :class:`_ThreadShard`; returns the summed outputs and the shards."""
    import threading

    from depass_tl.replay.engine import replay_components

    board: list = [None] * size
    barrier = threading.Barrier(size, timeout=120)
    shards = [_ThreadShard(r, size, board, barrier) for r in range(size)]
    outs: list = [None] * size
    errors: list = []

    def work(r: int) -> None:
        try:
            outs[r] = replay_components(run, init, mlp_rule=rule, dtype=torch.float64, shard=shards[r], **kw)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {name: sum(o[name] for o in outs) for name in outs[0]}, shards


@pytest.mark.parametrize("rule_name", ["softmax", "max", "ratio", "softmax+edits"])
@pytest.mark.parametrize("padded", [False, True])
def test_three_ranks_in_threads_replay_like_one_process(rule_name: str, padded: bool) -> None:
    """The flat engine's sharded path without torch.distributed: three ranks in threads, two components per
    chunk, so a rank owns chunks that are not next to each other (a unit's rows fold in several runs)
    and holds none of some units (it still reduces them); summed, the ranks equal one process."""
    from depass_tl.replay.engine import replay_components
    from depass_tl.replay.layout import State

    model = make_model("gpt2", n_layers=2)
    toks = random_tokens(model, batch=2, pos=9)
    mask = torch.ones_like(toks)
    mask[0, :3] = 0
    run = capture(model, toks, attention_mask=mask if padded else None)
    rule = get_rule(rule_name.split("+")[0])
    if rule_name.endswith("+edits"):
        rule = official_key_edits(rule, 0, ignore_special_token=True, official_position0=False)
    init = depass_tl.tokens().init(run, torch.float64)
    ref = replay_components(run, init, mlp_rule=rule, dtype=torch.float64, chunk_size=2)
    got, shards = _threaded_replay(run, init, rule, 3, chunk_size=2)
    assert sorted(got) == sorted(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-12, msg=name)
    if not rule.linear:  # every rank reduced the same units; the ones it holds nothing of too
        assert len({s.units for s in shards}) == 1 and shards[0].units > 0
    # the layout really exercised what the shard path must handle
    plan = [s.owned for s in shards]
    every = tuple(sorted({c for p in plan for c in p}, key=lambda c: (c[0], c[1])))
    units = []
    for p in plan:
        st = State(p, init.group_size, (2, 9, model.cfg.d_model), torch.float64, torch.device("cpu"), 2**30, 2**30,
                   every)
        for g in range(len(init.groups)):
            st.enter(g)
        units.append([u for mp in st.mlp_passes() for u in mp.units])
    assert len({tuple((u.g, u.p0, u.p1) for u in us) for us in units}) == 1  # the same units on every rank
    flat = [u for us in units for u in us]
    assert any(u.n_comp == 0 for u in flat)  # a rank with none of a unit's components
    assert any(any(b != a + 1 for a, b in zip(u.rows, u.rows[1:])) for u in flat)  # rows in several runs
    assert sum(u.has_bias for u in flat) == len(units[0])  # each unit's bias on exactly one rank
