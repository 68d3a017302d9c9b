"""Quality measures of the toy models, used by the training script and in the tutorials.

Each function runs the model on freshly generated data (no hooks, no gradients) and returns plain
floats, so the numbers can be stored in a model's JSON config and printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from depass_tl.toy.data import FACTS, IOI_NAMES, Fact, ioi_prompts, repeated_sequences
from depass_tl.toy.encoder import ToyEncoder

__all__ = [
    "evaluate_facts",
    "evaluate_induction",
    "evaluate_ioi",
    "induction_head_scores",
    "last_token_logits",
    "pad_right",
]


def pad_right(rows: Sequence[Sequence[int]]) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Right-pad token rows with BOS (id 0); return the tokens and each row's length.

    With a causal model, padding after the last real token does not change any real position.
    """
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    tokens = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return tokens, lengths


def last_token_logits(
    model: Any, rows: Sequence[Sequence[int]]
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last real token of each (right-padded) row."""
    tokens, lengths = pad_right(rows)
    logits = model(tokens, return_type="logits")
    return logits[torch.arange(len(rows)), lengths - 1]


@torch.no_grad()
def induction_head_scores(
    model: Any, *, n: int = 100, half_len: int = 24, seed: int = 4321
) -> dict[str, Float[Tensor, "layer head"]]:
    """Previous-token and induction scores of every head, from its attention pattern.

    On ``n`` :func:`repeated_sequences` of ``half_len``:

    * ``prev_token``: mean attention from each position ``q >= 2`` to ``q - 1``;
    * ``induction``: mean attention from each position ``q`` of the repeated half to ``q - half_len + 1``
      (the token after the earlier occurrence of the current token).

    Returns:
        ``{"prev_token": [layer, head], "induction": [layer, head]}``, each in ``[0, 1]``.
    """
    tokens = repeated_sequences(n, half_len=half_len, d_vocab=model.cfg.d_vocab, seed=seed)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    prev_q = torch.arange(2, tokens.shape[1])
    ind_q = torch.arange(half_len + 1, 2 * half_len + 1)
    prev, ind = [], []
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, query, key]
        prev.append(pattern[:, :, prev_q, prev_q - 1].mean((0, 2)))
        ind.append(pattern[:, :, ind_q, ind_q - half_len + 1].mean((0, 2)))
    return {"prev_token": torch.stack(prev), "induction": torch.stack(ind)}


@torch.no_grad()
def evaluate_induction(
    model: Any, *, n: int = 200, half_len: int = 24, seed: int = 12345,
    other_lengths: Sequence[int] = (8, 16, 31),
) -> dict[str, float | str]:
    """Loss on the first vs the repeated half of random repeated sequences, and the circuit's heads.

    Returns:
        ``loss_first_half`` (predicting tokens 2..half_len, which are random: about
        ``log(d_vocab - 1)``) and ``loss_repeated_half`` (predicting the repeat of tokens
        2..half_len from the tokens at positions half_len+1..2*half_len-1; induction makes it
        small). The first token of each half is excluded from both (it is not predictable).
        ``loss_repeated_half_len{L}`` is the same loss for each repeat length in ``other_lengths``
        (an induction circuit does not care about the length). ``prev_token_head`` /
        ``induction_head`` name the head (``"L{l}H{h}"``) with the highest score from
        :func:`induction_head_scores`, and ``prev_token_score`` / ``induction_score`` give it.
    """
    metrics: dict[str, float | str] = {}
    for length in (half_len, *other_lengths):
        tokens = repeated_sequences(n, half_len=length, d_vocab=model.cfg.d_vocab, seed=seed + length)
        logprobs = model(tokens, return_type="logits").log_softmax(-1)
        # loss at position p predicts token p + 1
        nll = -logprobs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos - 1]
        repeated = float(nll[:, length + 1 :].mean())  # predicts tokens length+2..2*length
        if length == half_len:
            metrics["loss_first_half"] = float(nll[:, 1:length].mean())  # predicts tokens 2..length
            metrics["loss_repeated_half"] = repeated
        else:
            metrics[f"loss_repeated_half_len{length}"] = repeated
    for kind, scores in induction_head_scores(model, half_len=half_len).items():
        layer, head = divmod(int(scores.argmax()), scores.shape[1])
        metrics[f"{kind}_head"] = f"L{layer}H{head}"
        metrics[f"{kind}_score"] = float(scores[layer, head])
    return metrics


@torch.no_grad()
def evaluate_ioi(
    model: Any,
    encoder: ToyEncoder,
    *,
    split: str = "heldout",
    n: int = 500,
    seed: int = 12345,
) -> dict[str, float]:
    """IO accuracy on IOI prompts.

    Returns:
        ``io_vs_s_accuracy`` (IO logit > S logit), ``io_top_name_accuracy`` (IO is the argmax among
        all names: the number we report), ``io_top1_accuracy`` (IO is the argmax over the whole
        vocabulary) and ``mean_logit_diff`` (IO − S).
    """
    prompts = ioi_prompts(n, split=split, seed=seed)  # type: ignore[arg-type]
    rows = [encoder.encode(p.text)[0].tolist() for p in prompts]
    logits = last_token_logits(model, rows)
    io = torch.tensor([encoder.token_id(p.io) for p in prompts])
    s = torch.tensor([encoder.token_id(p.s) for p in prompts])
    names = torch.tensor([encoder.token_id(" " + name) for name in IOI_NAMES])
    batch = torch.arange(n)
    diff = logits[batch, io] - logits[batch, s]
    top_name = names[logits[:, names].argmax(-1)]
    return {
        "io_vs_s_accuracy": float((diff > 0).float().mean()),
        "io_top_name_accuracy": float((top_name == io).float().mean()),
        "io_top1_accuracy": float((logits.argmax(-1) == io).float().mean()),
        "mean_logit_diff": float(diff.mean()),
    }


@torch.no_grad()
def evaluate_facts(
    model: Any, encoder: ToyEncoder, *, facts: Sequence[Fact] = FACTS
) -> dict[str, float]:
    """Recall accuracy on the fact table, and the same with every MLP output zero-ablated.

    Returns:
        ``recall_accuracy`` (the attribute is the top-1 token), ``recall_accuracy_no_mlp`` (the
        same with ``hook_mlp_out`` of every layer set to 0; near chance if facts live in the MLPs)
        and ``chance`` (1 / number of attributes of a relation).
    """
    rows = [encoder.encode(f.prompt)[0].tolist() for f in facts]
    target = torch.tensor([encoder.token_id(f.attribute) for f in facts])
    acc = float((last_token_logits(model, rows).argmax(-1) == target).float().mean())

    def zero(act: Tensor, hook: object) -> Tensor:
        return torch.zeros_like(act)

    hooks = [(f"blocks.{layer}.hook_mlp_out", zero) for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        ablated = last_token_logits(model, rows)
    acc_no_mlp = float((ablated.argmax(-1) == target).float().mean())
    n_attr = {f.relation: set() for f in facts}
    for f in facts:
        n_attr[f.relation].add(f.attribute)
    chance = sum(1 / len(a) for a in n_attr.values()) / len(n_attr)
    return {"recall_accuracy": acc, "recall_accuracy_no_mlp": acc_no_mlp, "chance": chance}
