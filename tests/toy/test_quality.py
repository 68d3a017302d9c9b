"""The shipped toy models do their tasks: fast, independent evaluations on fresh data.

The thresholds are the issue's requirements (IOI ≥ 90% on held-out prompts) or fixed bounds well
above chance; each test also checks that the model still matches the number stored in its JSON
config (what the training script reported), within sampling noise.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import pytest
import torch

from depass_tl import toy
from depass_tl.toy.data import FACTS, IOI_NAMES, ioi_prompts, repeated_sequences

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@torch.no_grad()
def test_induction_copies_the_repeated_half() -> None:
    model, encoder = toy.load("induction")
    half = 24
    tokens = repeated_sequences(64, half_len=half, d_vocab=len(encoder), seed=2024)
    logprobs = model(tokens).log_softmax(-1)
    losses_first, losses_rep = [], []
    for pos in range(2, half + 1):  # predict token at pos from pos - 1 (first half, not the 1st token)
        losses_first.append(-logprobs[:, pos - 1, :].gather(-1, tokens[:, pos, None]).mean())
    for pos in range(half + 2, 2 * half + 1):  # the repeat, after its first token
        losses_rep.append(-logprobs[:, pos - 1, :].gather(-1, tokens[:, pos, None]).mean())
    first = float(torch.stack(losses_first).mean())
    repeated = float(torch.stack(losses_rep).mean())
    uniform = math.log(len(encoder) - 1)
    assert first > uniform - 0.3  # random tokens cannot be predicted
    assert repeated < 0.5
    reported = toy.info("induction")["metrics"]
    assert repeated < reported["loss_repeated_half"] + 0.1
    assert abs(first - reported["loss_first_half"]) < 0.2


def _last_logits_by_length(model: torch.nn.Module, rows: list[list[int]]) -> torch.Tensor:
    """Logits at the last token, running prompts of equal length together (no padding)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[len(row)].append(i)
    out = torch.empty(len(rows), model.cfg.d_vocab)
    for idx in groups.values():
        out[idx] = model(torch.tensor([rows[i] for i in idx]))[:, -1]
    return out


@torch.no_grad()
def test_ioi_heldout_accuracy_at_least_90_percent() -> None:
    model, encoder = toy.load("ioi")
    prompts = ioi_prompts(300, split="heldout", seed=777)
    logits = _last_logits_by_length(model, [encoder.encode(p.text)[0].tolist() for p in prompts])
    io = torch.tensor([encoder.token_id(p.io) for p in prompts])
    s = torch.tensor([encoder.token_id(p.s) for p in prompts])
    names = torch.tensor([encoder.token_id(" " + n) for n in IOI_NAMES])
    rows = torch.arange(len(prompts))
    io_vs_s = float((logits[rows, io] > logits[rows, s]).float().mean())
    top_name = float((names[logits[:, names].argmax(-1)] == io).float().mean())
    assert io_vs_s >= 0.9
    assert top_name >= 0.9
    reported = toy.info("ioi")["metrics"]
    assert reported["heldout_io_top_name_accuracy"] >= 0.9
    assert top_name > reported["heldout_io_top_name_accuracy"] - 0.05


@torch.no_grad()
def test_ioi_canonical_prompt() -> None:
    model, encoder = toy.load("ioi")
    tokens = encoder.encode("When Mary and John went to the store, John gave a drink to")
    assert encoder.to_str_tokens(model(tokens)[0, -1].argmax().reshape(1)) == [" Mary"]
    tokens = encoder.encode("When Mary and John went to the store, Mary gave a drink to")
    assert encoder.to_str_tokens(model(tokens)[0, -1].argmax().reshape(1)) == [" John"]


@torch.no_grad()
def test_facts_are_recalled_through_the_mlps() -> None:
    model, encoder = toy.load("facts")
    rows = [encoder.encode(f.prompt)[0].tolist() for f in FACTS]
    target = torch.tensor([encoder.token_id(f.attribute) for f in FACTS])
    accuracy = float((_last_logits_by_length(model, rows).argmax(-1) == target).float().mean())
    hooks = [(f"blocks.{l}.hook_mlp_out", lambda act, hook: act * 0) for l in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        ablated = float((_last_logits_by_length(model, rows).argmax(-1) == target).float().mean())
    assert accuracy >= 0.95
    assert ablated < 0.4  # chance is 1/8
    reported = toy.info("facts")["metrics"]
    assert accuracy == pytest.approx(reported["recall_accuracy"], abs=1 / len(FACTS) + 1e-9)
