"""One rank of the sharded-replay check (tests/test_distributed.py launches two with torch.distributed.run).

Every rank builds the same seeded tiny models, captures the same inputs, and compares
``replay(run, spec, distributed=True)`` with its own one-process ``replay(run, spec)`` for every
registered rule and a range of specs (several groups, a spec no rank can split, padding, chunking,
the official key edits), then ``run_with_depass(..., distributed=True)`` and ``gather=False`` +
``gather()``. Writes ``{out}/rank{r}.json`` with the cases it checked and the largest difference;
exits non-zero on the first mismatch.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py OUT_DIR``
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import depass_tl  # noqa: E402
from depass_tl.capture import capture  # noqa: E402
from depass_tl.distributed import ShardedDePassCache  # noqa: E402
from depass_tl.replay.rules import rule_names  # noqa: E402
from tests.models import make_model, random_tokens  # noqa: E402


def close(a: torch.Tensor, b: torch.Tensor, exact: bool) -> float:
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    tol = 0.0 if exact else 1e-9 * max(1.0, float(b.abs().max()))
    if a.shape != b.shape or diff > tol:
        raise AssertionError(f"shape {tuple(a.shape)} vs {tuple(b.shape)}, max diff {diff:.3g} > {tol:.3g}")
    return diff


def compare(name: str, got, ref, exact: bool, checked: list, worst: list) -> None:
    assert got.labels == ref.labels, name
    assert sorted(got) == sorted(ref), (name, sorted(got), sorted(ref))
    for hook in ref:
        try:
            worst[0] = max(worst[0], close(got[hook], ref[hook], exact))
        except AssertionError as e:
            raise AssertionError(f"rank {dist.get_rank()}: {name} at {hook}: {e}") from None
    checked.append(name)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    checked: list[str] = []
    worst = [0.0]
    for arch in ("gpt2", "llama"):
        model = make_model(arch, n_layers=2, d_model=16, n_heads=4, d_mlp=32)
        toks = random_tokens(model, batch=2, pos=7)
        mask = torch.ones_like(toks)
        mask[0, :2] = 0  # a left-padded row: padding moves are reduced across ranks
        specs = {
            "tokens": depass_tl.tokens(), "heads1": depass_tl.heads(1), "heads_all": depass_tl.heads(),
            "modules0": depass_tl.modules(0), "neurons0": depass_tl.neurons(0, top_k=5), "sources": depass_tl.sources(),
        }
        extra = set().union(*(s.required_hooks(2) for s in specs.values()))
        runs = {"plain": capture(model, toks, extra_hooks=extra),
                "padded": capture(model, toks, attention_mask=mask, extra_hooks=extra)}
        for rule in rule_names():
            exact = False  # chunks change the matmuls' shapes: equal to float rounding, not bit for bit
            for run_name, run in runs.items():
                for spec_name, spec in specs.items():
                    if run_name == "padded" and spec_name not in ("tokens", "heads_all"):
                        continue
                    if arch == "llama" and spec_name not in ("tokens", "heads_all", "sources"):
                        continue  # gpt2 runs every spec; llama (gated MLP, RMS norm) the kinds of groups
                    ref = depass_tl.replay(run, spec, mlp_rule=rule)
                    got = depass_tl.replay(run, spec, mlp_rule=rule, distributed=True)
                    compare(f"{arch}/{rule}/{run_name}/{spec_name}", got, ref, exact, checked, worst)
            for kw in ({"chunk_size": 2}, {"max_memory": "1MB"}) if arch == "gpt2" else ():
                ref = depass_tl.replay(runs["plain"], depass_tl.tokens(), mlp_rule=rule, **kw)
                got = depass_tl.replay(runs["plain"], depass_tl.tokens(), mlp_rule=rule, distributed=True, **kw)
                compare(f"{arch}/{rule}/{next(iter(kw))}", got, ref, exact, checked, worst)
            if rule in ("softmax", "max"):  # the official key edits wrap the rule's statistics
                ref = depass_tl.replay(runs["plain"], mlp_rule=rule, ignore_special_token=True)
                got = depass_tl.replay(runs["plain"], mlp_rule=rule, ignore_special_token=True, distributed=True)
                compare(f"{arch}/{rule}/ignore_special_token", got, ref, exact, checked, worst)
        logits, ref = depass_tl.run_with_depass(model, toks, components=depass_tl.heads())
        logits2, sharded = depass_tl.run_with_depass(model, toks, components=depass_tl.heads(), distributed=True,
                                                     gather=False)
        assert isinstance(sharded, ShardedDePassCache) and torch.equal(logits, logits2)
        assert 0 < len(sharded.rows) < len(ref.labels), sharded.rows  # each rank holds a share
        rows = torch.tensor(sharded.rows)
        for hook, t in sharded.activations.items():
            close(t, ref[hook][rows], False)
        compare(f"{arch}/run_with_depass/gather()", sharded.gather(), ref, False, checked, worst)
        assert torch.allclose(sharded.gather().logit_attrs(3), ref.logit_attrs(3), atol=1e-9)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({"checked": checked, "worst": worst[0],
                                                      "world": dist.get_world_size()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(Path(sys.argv[1]))
