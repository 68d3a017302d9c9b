"""The shipped toy models do their tasks: fast, independent evaluations on fresh data.

The thresholds are the issues' requirements (IOI ≥ 95% on held-out prompts) or fixed bounds well
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
from depass_tl.toy.evaluate import evaluate_induction

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _half_losses(model: torch.nn.Module, half: int, seed: int) -> tuple[float, float]:
    """Mean loss predicting tokens 2..half (random) and the repeat of them (copyable)."""
    tokens = repeated_sequences(64, half_len=half, d_vocab=model.cfg.d_vocab, seed=seed)
    logprobs = model(tokens).log_softmax(-1)
    losses_first, losses_rep = [], []
    for pos in range(2, half + 1):  # predict token at pos from pos - 1 (first half, not the 1st token)
        losses_first.append(-logprobs[:, pos - 1, :].gather(-1, tokens[:, pos, None]).mean())
    for pos in range(half + 2, 2 * half + 1):  # the repeat, after its first token
        losses_rep.append(-logprobs[:, pos - 1, :].gather(-1, tokens[:, pos, None]).mean())
    return float(torch.stack(losses_first).mean()), float(torch.stack(losses_rep).mean())


@torch.no_grad()
def test_induction_copies_the_repeated_half() -> None:
    model, encoder = toy.load("induction")
    first, repeated = _half_losses(model, 24, seed=2024)
    uniform = math.log(len(encoder) - 1)
    assert first > uniform - 0.3  # random tokens cannot be predicted
    assert repeated < 1.0  # about 5.3 nats below: the repeat is copied
    reported = toy.info("induction")["metrics"]
    assert abs(repeated - reported["loss_repeated_half"]) < 0.15
    assert abs(first - reported["loss_first_half"]) < 0.2


@pytest.mark.parametrize("half", [6, 11, 17, 31])
@torch.no_grad()
def test_induction_copies_the_repeated_half_at_any_length(half: int) -> None:
    """A content-based copy works whatever the distance to the earlier occurrence (not a fixed offset)."""
    model, encoder = toy.load("induction")
    first, repeated = _half_losses(model, half, seed=100 + half)
    assert first > math.log(len(encoder) - 1) - 0.3
    assert repeated < 1.0


def _pattern_scores(model: torch.nn.Module, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[layer, head] previous-token and induction scores, read from TL's attention patterns."""
    tokens = repeated_sequences(50, half_len=half, d_vocab=model.cfg.d_vocab, seed=7)
    _, cache = model.run_with_cache(tokens)
    prev, ind = torch.zeros(model.cfg.n_layers, model.cfg.n_heads), torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]  # [batch, head, query, key]
        for q in range(2, tokens.shape[1]):
            prev[layer] += pattern[:, :, q, q - 1].mean(0) / (tokens.shape[1] - 2)
        for q in range(half + 1, 2 * half + 1):  # query at a repeated token, key after its first copy
            ind[layer] += pattern[:, :, q, q - half + 1].mean(0) / half
    return prev, ind


@torch.no_grad()
def test_induction_circuit_previous_token_head_and_induction_head() -> None:
    """Layer 0 has a previous-token head, layer 1 induction heads, and they are what copies.

    Scores above 0.5 mean more than half of the head's attention goes to the one position the
    circuit predicts, out of 2..49. Knocking out the previous-token head (zeroing its output)
    breaks the copy: the induction heads need it to find where to look (K-composition).
    """
    model, _ = toy.load("induction")
    prev, ind = _pattern_scores(model, half=20)
    assert float(prev[0].max()) > 0.5
    assert float(ind[1].max()) > 0.5
    assert float(ind[0].max()) < 0.1  # layer 0 cannot do induction: nothing before it says "previous token"
    reported = toy.info("induction")["metrics"]
    assert reported["prev_token_head"] == f"L0H{int(prev[0].argmax())}"
    assert reported["induction_head"] == f"L1H{int(ind[1].argmax())}"

    prev_head = int(prev[0].argmax())

    def knock_out(z: torch.Tensor, hook: object) -> torch.Tensor:
        z[:, :, prev_head] = 0.0
        return z

    _, repeated = _half_losses(model, 20, seed=5)
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", knock_out)]):
        _, knocked = _half_losses(model, 20, seed=5)
    assert knocked > repeated + 1.0


@torch.no_grad()
def test_induction_metrics_in_json_match_the_model() -> None:
    """The numbers the training script stored are what the shipped weights give now."""
    model, _ = toy.load("induction")
    reported = toy.info("induction")["metrics"]
    measured = evaluate_induction(model)
    assert measured.keys() == reported.keys()
    for key, value in reported.items():
        if isinstance(value, str):
            assert measured[key] == value
        else:
            assert measured[key] == pytest.approx(value, abs=1e-4), key


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
def test_ioi_heldout_accuracy_at_least_95_percent() -> None:
    model, encoder = toy.load("ioi")
    prompts = ioi_prompts(300, split="heldout", seed=777)
    logits = _last_logits_by_length(model, [encoder.encode(p.text)[0].tolist() for p in prompts])
    io = torch.tensor([encoder.token_id(p.io) for p in prompts])
    s = torch.tensor([encoder.token_id(p.s) for p in prompts])
    names = torch.tensor([encoder.token_id(" " + n) for n in IOI_NAMES])
    rows = torch.arange(len(prompts))
    io_vs_s = float((logits[rows, io] > logits[rows, s]).float().mean())
    top_name = float((names[logits[:, names].argmax(-1)] == io).float().mean())
    assert io_vs_s >= 0.95
    assert top_name >= 0.95
    reported = toy.info("ioi")["metrics"]
    assert reported["heldout_io_top_name_accuracy"] >= 0.95
    assert top_name > reported["heldout_io_top_name_accuracy"] - 0.05


@pytest.mark.parametrize("kind", ["io_last", "one_name"])
@torch.no_grad()
def test_ioi_other_kinds_heldout_accuracy_at_least_95_percent(kind: str) -> None:
    """The prompts that make copying the IO from context necessary (see depass_tl.toy.ioi_data)."""
    model, encoder = toy.load("ioi")
    prompts = ioi_prompts(200, split="heldout", seed=778, kind=kind)
    logits = _last_logits_by_length(model, [encoder.encode(p.text)[0].tolist() for p in prompts])
    io = torch.tensor([encoder.token_id(p.io) for p in prompts])
    names = torch.tensor([encoder.token_id(" " + n) for n in IOI_NAMES])
    top_name = float((names[logits[:, names].argmax(-1)] == io).float().mean())
    assert top_name >= 0.95
    reported = toy.info("ioi")["metrics"][f"heldout_{kind}_io_top_name_accuracy"]
    assert top_name > reported - 0.05


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
