"""Training of the toy models (CPU, fixed seeds, a tqdm progress bar).

``python scripts/train_toy.py induction|ioi|facts|all`` calls :func:`train` and :func:`save_trained`,
which overwrite the shipped model folders in ``depass_tl/toy/weights/`` (through
:func:`depass_tl.toy.save`, so the weights, config and tokenizer stay in one format). Each model
trains in a few minutes on one CPU thread. Training builds a ``HookedTransformer``, so it needs
TransformerLens < 4; the saved models load on every version.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from depass_tl.errors import DePassError
from depass_tl.toy.checkpoint import save
from depass_tl.toy.data import (
    FACTS,
    IOI_TRAINING_MIX,
    copy_sequences,
    facts_vocab,
    induction_vocab,
    ioi_prompts,
    ioi_vocab,
)
from depass_tl.toy.encoder import ToyEncoder
from depass_tl.toy.evaluate import evaluate_facts, evaluate_induction, ioi_metrics, pad_right

__all__ = ["MODEL_CONFIGS", "TRAINING", "TrainResult", "save_trained", "train"]

# HookedTransformerConfig keyword arguments (d_vocab is added from the vocabulary).
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "induction": dict(
        n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=64, attn_only=True,
        normalization_type="LN", positional_embedding_type="standard", act_fn=None,
    ),
    "ioi": dict(
        n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=32, attn_only=True,
        normalization_type="LN", positional_embedding_type="standard", act_fn=None,
    ),
    "facts": dict(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=16, act_fn="gelu",
        normalization_type="LN", positional_embedding_type="standard",
    ),
}

# Optimisation settings per model.
TRAINING: dict[str, dict[str, Any]] = {
    "induction": dict(steps=3000, batch=64, lr=2e-3, weight_decay=0.01, seq_len=64),
    "ioi": dict(steps=2500, batch=64, lr=1e-3, weight_decay=0.01, max_extra_bos=3, mix=dict(IOI_TRAINING_MIX)),
    "facts": dict(steps=1500, batch=128, lr=2e-3, weight_decay=0.0),
}

_DESCRIPTIONS = {
    "induction": (
        "2-layer attention-only model trained on random tokens in which earlier segments recur at random "
        "distances (depass_tl.toy.data.copy_sequences)"
    ),
    "ioi": (
        "2-layer attention-only model trained on IOI sentences (depass_tl.toy.ioi_data: classic ABBA/BABA, "
        "IO named last, one name); held-out templates and name pairs"
    ),
    "facts": "2-layer model with MLPs that recalls the synthetic facts in depass_tl.toy.data.FACTS",
}


@dataclass
class TrainResult:
    """A trained toy model, its encoder, and its evaluation numbers."""

    model: Any  # a HookedTransformer
    encoder: ToyEncoder
    metrics: dict[str, float]
    training: dict[str, Any] = field(default_factory=dict)


def _vocab(name: str) -> list[str]:
    return {"induction": induction_vocab, "ioi": ioi_vocab, "facts": facts_vocab}[name]()


def _hooked_classes() -> tuple[Any, Any]:
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        raise DePassError(
            "training a toy model builds a HookedTransformer, which TransformerLens 4 removed; train with "
            "transformer-lens<4 (the saved model then loads on every version)"
        ) from None
    return HookedTransformer, HookedTransformerConfig


def build_config(name: str, d_vocab: int, *, seed: int = 0) -> Any:
    """The ``HookedTransformerConfig`` of toy model ``name`` (float32, CPU)."""
    if name not in MODEL_CONFIGS:
        raise DePassError(f"unknown toy model {name!r}; available: {sorted(MODEL_CONFIGS)}")
    _, HookedTransformerConfig = _hooked_classes()
    return HookedTransformerConfig(
        **MODEL_CONFIGS[name], d_vocab=d_vocab, seed=seed, device="cpu", dtype=torch.float32
    )


def _masked_lm_loss(model: Any, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Next-token loss over the real (non-padding) positions, and the last token's loss."""
    logits = model(tokens, return_type="logits")[:, :-1]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    ).view(tokens.shape[0], -1)
    pos = torch.arange(nll.shape[1])
    mask = pos[None, :] < (lengths[:, None] - 1)
    last = nll[torch.arange(len(lengths)), lengths - 2]
    return (nll * mask).sum() / mask.sum() + last.mean()


def _last_token_loss(model: Any, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    logits = model(tokens, return_type="logits")
    batch = torch.arange(len(lengths))
    return torch.nn.functional.cross_entropy(logits[batch, lengths - 2], tokens[batch, lengths - 1])


def train(name: str, *, seed: int = 0, steps: int | None = None, progress: bool = True) -> TrainResult:
    """Train toy model ``name`` from scratch with fixed seeds on the CPU.

    Args:
        name: ``"induction"``, ``"ioi"`` or ``"facts"``.
        seed: Seed of the weight initialisation and the data.
        steps: Override the number of optimisation steps (for quick experiments).
        progress: Show a tqdm progress bar.

    Returns:
        The trained model (eval mode), its encoder and its evaluation metrics.
    """
    if name not in MODEL_CONFIGS:
        raise DePassError(f"unknown toy model {name!r}; available: {sorted(MODEL_CONFIGS)}")
    settings = dict(TRAINING[name])
    if steps is not None:
        settings["steps"] = steps
    torch.manual_seed(seed)
    random.seed(seed)
    encoder = ToyEncoder(_vocab(name))
    HookedTransformer, _ = _hooked_classes()
    model = HookedTransformer(build_config(name, len(encoder), seed=seed))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    n_steps = settings["steps"]
    warmup = max(1, n_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / n_steps)
    )
    rng = random.Random(seed)
    bar = tqdm(range(n_steps), desc=f"train {name}", disable=not progress)
    for step in bar:
        if name == "induction":
            tokens = copy_sequences(
                settings["batch"], seq_len=settings["seq_len"], d_vocab=len(encoder),
                seed=seed * 1_000_003 + step,
            )
            logits = model(tokens, return_type="logits")
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
            )
        elif name == "ioi":
            # the training mixture of IOI_TRAINING_MIX: classic prompts, IO named last, one name
            prompts = ioi_prompts(settings["batch"], split="train", seed=seed * 1_000_003 + step, kind="mix")
            # 0-3 extra BOS tokens in front shift the sentence, so the model cannot rely on
            # absolute positions (without this it fails on held-out templates of other lengths)
            rows = [
                [0] * rng.randint(0, settings["max_extra_bos"]) + encoder.encode(p.text + p.io)[0].tolist()
                for p in prompts
            ]
            loss = _masked_lm_loss(model, *pad_right(rows))
        else:
            facts = rng.choices(FACTS, k=settings["batch"])
            rows = [encoder.encode(f.prompt + f.attribute)[0].tolist() for f in facts]
            loss = _last_token_loss(model, *pad_right(rows))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    if name == "induction":
        metrics = evaluate_induction(model)
    elif name == "ioi":
        metrics = ioi_metrics(model, encoder)
    else:
        metrics = evaluate_facts(model, encoder)
    return TrainResult(model, encoder, metrics, training=dict(settings, seed=seed))


def save_trained(result: TrainResult, name: str, directory: str | Path) -> Path:
    """Write trained toy model ``name`` to ``directory/name`` with :func:`depass_tl.toy.save`; returns that folder."""
    return save(result.model, result.encoder.vocab, Path(directory) / name, name=name,
                description=_DESCRIPTIONS[name], metrics=result.metrics, training=result.training)
