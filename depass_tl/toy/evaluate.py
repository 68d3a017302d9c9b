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

from depass_tl.toy.data import FACTS, IOI_NAMES, Fact, IOIPrompt, ioi_prompts, repeated_sequences
from depass_tl.toy.encoder import ToyEncoder

__all__ = [
    "evaluate_facts",
    "evaluate_induction",
    "evaluate_ioi",
    "evaluate_ioi_circuit",
    "head_index",
    "ioi_metrics",
    "induction_head_scores",
    "ioi_circuit",
    "ioi_head_scores",
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
    kind: str = "ioi",
) -> dict[str, float]:
    """IO accuracy on IOI prompts of one kind (:data:`depass_tl.toy.ioi_data.IOI_KINDS`).

    Returns:
        ``io_top_name_accuracy`` (IO is the argmax among all names: the number we report),
        ``io_top1_accuracy`` (IO is the argmax over the whole vocabulary) and, for kinds with a
        subject, ``io_vs_s_accuracy`` (IO logit > S logit) and ``mean_logit_diff`` (IO − S).
    """
    prompts = ioi_prompts(n, split=split, seed=seed, kind=kind)  # type: ignore[arg-type]
    rows = [encoder.encode(p.text)[0].tolist() for p in prompts]
    logits = last_token_logits(model, rows)
    io = torch.tensor([encoder.token_id(p.io) for p in prompts])
    names = torch.tensor([encoder.token_id(" " + name) for name in IOI_NAMES])
    top_name = names[logits[:, names].argmax(-1)]
    out = {}
    if all(p.s is not None for p in prompts):
        s = torch.tensor([encoder.token_id(p.s) for p in prompts])
        diff = logits[torch.arange(n), io] - logits[torch.arange(n), s]
        out["io_vs_s_accuracy"] = float((diff > 0).float().mean())
    out["io_top_name_accuracy"] = float((top_name == io).float().mean())
    out["io_top1_accuracy"] = float((logits.argmax(-1) == io).float().mean())
    if all(p.s is not None for p in prompts):
        out["mean_logit_diff"] = float(diff.mean())
    return out


@torch.no_grad()
def ioi_head_scores(
    model: Any, encoder: ToyEncoder, prompts: Sequence[IOIPrompt]
) -> dict[str, Float[Tensor, "layer head"]]:
    """Per-head attention and direct logit attribution on IOI prompts (with a subject), averaged over prompts.

    From the model's own attention patterns (``hook_pattern``), for every head:

    * ``end_to_io``, ``end_to_s1``, ``end_to_s2``: attention from the last position (END) to the
      indirect object, the first and the second mention of the subject;
    * ``s2_to_s1``: attention from S2 to S1 (a duplicate-token head looks back at the earlier copy
      of its own token);
    * ``direct_logit_diff``: the head's output at END, through the final LayerNorm with its scale
      frozen, projected on ``W_U[:, IO] − W_U[:, S]`` (its direct effect on the logit difference).
    """
    rows = [encoder.encode(p.text)[0].tolist() for p in prompts]
    tokens, _ = pad_right(rows)
    where = {key: torch.tensor([p.positions()[key] for p in prompts]) for key in ("io", "s1", "s2", "end")}
    io = torch.tensor([encoder.token_id(p.io) for p in prompts])
    s = torch.tensor([encoder.token_id(p.s) for p in prompts])  # type: ignore[arg-type]
    batch, end = torch.arange(len(prompts)), where["end"]
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda name: name.endswith(("hook_pattern", "hook_z")) or name == "ln_final.hook_scale"
    )
    direction = (model.W_U[:, io] - model.W_U[:, s]).T  # [batch, d_model]
    scale = cache["ln_final.hook_scale"][batch, end]  # [batch, 1]
    scores: dict[str, list[Tensor]] = {k: [] for k in ("end_to_io", "end_to_s1", "end_to_s2", "s2_to_s1",
                                                       "direct_logit_diff")}
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, query, key]
        scores["end_to_io"].append(pattern[batch, :, end, where["io"]].mean(0))
        scores["end_to_s1"].append(pattern[batch, :, end, where["s1"]].mean(0))
        scores["end_to_s2"].append(pattern[batch, :, end, where["s2"]].mean(0))
        scores["s2_to_s1"].append(pattern[batch, :, where["s2"], where["s1"]].mean(0))
        z = cache[f"blocks.{layer}.attn.hook_z"][batch, end]  # [batch, head, d_head]
        out = torch.einsum("bhd,hdm->bhm", z, model.W_O[layer])  # [batch, head, d_model]
        if model.cfg.normalization_type == "LN":
            out = out - out.mean(-1, keepdim=True)
        scores["direct_logit_diff"].append(((out / scale[:, None]) * direction[:, None]).sum(-1).mean(0))
    return {k: torch.stack(v) for k, v in scores.items()}


def ioi_circuit(scores: dict[str, Tensor], *, threshold: float = 0.4) -> dict[str, list[str]]:
    """Name the heads of the IOI circuit from :func:`ioi_head_scores`, by their attention.

    * ``name_movers``: attend from END to the IO (``end_to_io >= threshold``, at least twice their
      attention to either S) and push the IO's logit over the subject's (``direct_logit_diff > 0``);
    * ``s_inhibition``: attend from END to S2 (``end_to_s2 >= threshold``);
    * ``duplicate_token``: attend from S2 to S1 (``s2_to_s1 >= threshold``).

    Each list is ordered by the score that defines it, largest first; heads are named ``L{l}H{h}``.
    """
    n_heads = scores["end_to_io"].shape[1]

    def ranked(mask: Tensor, key: str) -> list[str]:
        order = scores[key].flatten().argsort(descending=True).tolist()
        return [f"L{i // n_heads}H{i % n_heads}" for i in order if bool(mask.flatten()[i])]

    to_s = torch.maximum(scores["end_to_s1"], scores["end_to_s2"])
    movers = (scores["end_to_io"] >= threshold) & (scores["end_to_io"] >= 2 * to_s) & (scores["direct_logit_diff"] > 0)
    return {
        "name_movers": ranked(movers, "end_to_io"),
        "s_inhibition": ranked(scores["end_to_s2"] >= threshold, "end_to_s2"),
        "duplicate_token": ranked(scores["s2_to_s1"] >= threshold, "s2_to_s1"),
    }


@torch.no_grad()
def evaluate_ioi_circuit(
    model: Any, encoder: ToyEncoder, *, n: int = 200, seed: int = 4321
) -> dict[str, float | str]:
    """The IOI circuit's heads (:func:`ioi_circuit`) on held-out classic prompts, and their mean scores.

    Returns:
        ``name_mover_heads``, ``s_inhibition_heads``, ``duplicate_token_heads`` (space-separated
        ``L{l}H{h}``, possibly empty), and for the name movers their mean ``end_to_io``,
        ``end_to_s`` (the larger of S1 and S2) and summed ``direct_logit_diff``; for the
        S-inhibition heads their mean ``end_to_s2``.
    """
    scores = ioi_head_scores(model, encoder, ioi_prompts(n, split="heldout", seed=seed))
    circuit = ioi_circuit(scores)
    out: dict[str, float | str] = {
        "name_mover_heads": " ".join(circuit["name_movers"]),
        "s_inhibition_heads": " ".join(circuit["s_inhibition"]),
        "duplicate_token_heads": " ".join(circuit["duplicate_token"]),
    }

    def at(key: str, heads: list[str]) -> Tensor:
        return torch.stack([scores[key][head_index(h)] for h in heads])

    if circuit["name_movers"]:
        movers = circuit["name_movers"]
        out["name_mover_end_to_io"] = float(at("end_to_io", movers).mean())
        out["name_mover_end_to_s"] = float(torch.maximum(at("end_to_s1", movers), at("end_to_s2", movers)).mean())
        out["name_mover_direct_logit_diff"] = float(at("direct_logit_diff", movers).sum())
    if circuit["s_inhibition"]:
        out["s_inhibition_end_to_s2"] = float(at("end_to_s2", circuit["s_inhibition"]).mean())
    return out


def ioi_metrics(model: Any, encoder: ToyEncoder) -> dict[str, float | str]:
    """Everything the ``ioi`` toy's config records: accuracies per split and kind, and the circuit.

    ``{split}_*`` are :func:`evaluate_ioi` on classic prompts, ``{split}_{kind}_io_top_name_accuracy``
    the same for the other kinds, and the rest :func:`evaluate_ioi_circuit`.
    """
    metrics: dict[str, float | str] = {}
    for split in ("heldout", "train"):
        metrics |= {f"{split}_{k}": v for k, v in evaluate_ioi(model, encoder, split=split).items()}
        for kind in ("io_last", "one_name"):
            result = evaluate_ioi(model, encoder, split=split, kind=kind)
            metrics[f"{split}_{kind}_io_top_name_accuracy"] = result["io_top_name_accuracy"]
    return metrics | evaluate_ioi_circuit(model, encoder)


def head_index(label: str) -> tuple[int, int]:
    """``"L1H2"`` → ``(1, 2)``.

    Examples:
        >>> head_index("L10H3")
        (10, 3)
    """
    layer, _, head = label[1:].partition("H")
    return int(layer), int(head)


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
