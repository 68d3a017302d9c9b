"""Concurrent calls on one model: every result is that call's own, complete and correct.

Capture is the only part that touches the model (hooks, tokenizer); it holds the model's lock, and
the replay is pure. Several threads call the API on the same model with different inputs, mixing
``run_with_depass`` with token and head components, string answers (tokenizer lookups) and reverse
mode; each result is compared with the same call made alone beforehand.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

import depass_tl
from tests.model_classes import CLASSES, known_word, model_of, n_hooks

THREADS = 3
CALLS = 12


def _inputs(model: Any, toks: torch.Tensor) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(4, 40, (2, 3 + i % 4), generator=gen) for i in range(6)]


def _call(model: Any, tokens: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One of three kinds of call; returns (clean logits, attributions of one answer)."""
    word = known_word(model, 1 + i % 3)
    if i % 3 == 0:
        logits, dc = depass_tl.run_with_depass(model, tokens)
        return logits, dc.logit_attrs(word)
    if i % 3 == 1:
        logits, dc = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads(1), mlp_rule="ratio")
        return logits, dc.logit_attrs(word, incorrect_tokens=known_word(model, 5))
    att = depass_tl.attribute(model, tokens, target=word, mode="reverse")
    return att.target, att.values


@pytest.mark.parametrize("kind", CLASSES)
def test_concurrent_calls_on_one_model(kind: str) -> None:
    model, toks = model_of(kind)
    inputs = _inputs(model, toks)
    expected = {(i, j): _call(model, inputs[j], i) for i in range(3) for j in range(len(inputs))}
    failures: list[str] = []

    def work(thread: int) -> None:
        for k in range(CALLS):
            i, j = (thread + k) % 3, (thread * 5 + k) % len(inputs)
            try:
                got = _call(model, inputs[j], i)
            except Exception as e:  # collected and reported by the main thread
                failures.append(f"thread {thread} call {k}: {type(e).__name__}: {e}")
                continue
            want = expected[(i, j)]
            for a, b in zip(got, want):
                if a.shape != b.shape or not torch.allclose(a, b, rtol=0, atol=1e-5):
                    failures.append(f"thread {thread} call {k} (kind {i}, input {j}): a different result")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert n_hooks(model) == 0
    # each result is also complete against its own logits
    logits, dc = depass_tl.run_with_depass(model, inputs[0])
    torch.testing.assert_close(dc.logit_attrs(5).sum(0), logits[:, -1, 5], rtol=0, atol=1e-4)
