"""Hand-built one-layer models (HookedTransformer, or a TL-native TransformerBridge on TL 4) whose outputs are known on paper (float64, no norms).

* :func:`linear_token_model`: attention-only, one head, ``W_Q = W_K = 0`` (uniform causal attention),
  ``W_E[v] = [w_v, 0]``, ``W_V = W_O = I``, ``W_U[:, TARGET] = e_0``. At the last position
  ``logit[TARGET] = w[last] + mean_j w[tok_j]``; every other logit is 0.
* :func:`linear_head_model`: attention-only, three heads with ``d_head = 1``; head ``h`` reads
  ``w`` (dim 0) and writes ``c_h`` to dim ``h + 1``; ``logit[TARGET] = Σ_h c_h · z_h`` with
  ``z_h`` = the prefix mean of ``w``; ``logit[WRONG] = THETA`` (a bias).
* :func:`linear_neuron_model`: attention writes nothing; neuron ``n`` computes
  ``relu(w[tok] + b_n)`` and writes ``c_n`` to ``logit[TARGET]``; ``logit[WRONG] = THETA``.
"""

from __future__ import annotations

from typing import Any

import torch

from tests.models import config_model

HookedTransformer = Any  # the installed TL's model class (tests/models.py)

TARGET = 7
WRONG = 6
THETA = 5.0
REPLACE = 6  # a token with w = 0 (used as the replacement token)
WEIGHTS = [0.0, 4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0]  # w_v for v = 0..7; 0 is BOS


def _blank(**cfg_kwargs: object) -> HookedTransformer:
    model = config_model(n_layers=1, n_ctx=16, d_vocab=8, normalization_type=None, dtype=torch.float64, seed=0,
                         **cfg_kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval()


def linear_token_model(weights: list[float] = WEIGHTS) -> HookedTransformer:
    model = _blank(d_model=2, d_head=2, n_heads=1, attn_only=True)
    with torch.no_grad():
        model.embed.W_E[:, 0] = torch.tensor(weights, dtype=torch.float64)
        model.blocks[0].attn.W_V[0] = torch.eye(2)
        model.blocks[0].attn.W_O[0] = torch.eye(2)
        model.unembed.W_U[0, TARGET] = 1.0
    return model


def token_logit(row: list[int], weights: list[float] = WEIGHTS) -> float:
    """The closed form of :func:`linear_token_model`'s target logit at the last position."""
    return weights[row[-1]] + sum(weights[t] for t in row) / len(row)


def token_prob(row: list[int], weights: list[float] = WEIGHTS) -> float:
    logit = torch.tensor(token_logit(row, weights), dtype=torch.float64)
    return float(logit.exp() / (logit.exp() + len(weights) - 1))


def linear_head_model(c: tuple[float, float, float] = (3.0, -1.0, 2.0), weights: list[float] | None = None) -> HookedTransformer:
    w = [0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0] if weights is None else weights
    model = _blank(d_model=4, d_head=1, n_heads=3, attn_only=True)
    with torch.no_grad():
        model.embed.W_E[:, 0] = torch.tensor(w, dtype=torch.float64)
        for h in range(3):
            model.blocks[0].attn.W_V[h, 0, 0] = 1.0
            model.blocks[0].attn.W_O[h, 0, h + 1] = c[h]
        model.unembed.W_U[1:, TARGET] = 1.0
        model.unembed.b_U[WRONG] = THETA
    return model


def linear_neuron_model(c: tuple[float, float, float] = (1.0, 3.0, 5.0), b: tuple[float, float, float] = (0.0, -1.0, -3.0)) -> HookedTransformer:
    w = [0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0]
    model = _blank(d_model=2, d_head=2, n_heads=1, d_mlp=3, act_fn="relu")
    with torch.no_grad():
        model.embed.W_E[:, 0] = torch.tensor(w, dtype=torch.float64)
        model.blocks[0].mlp.W_in[0, :] = 1.0
        model.blocks[0].mlp.b_in[:] = torch.tensor(b, dtype=torch.float64)
        for n in range(3):
            model.blocks[0].mlp.W_out[n, 1] = c[n]
        model.unembed.W_U[1, TARGET] = 1.0
        model.unembed.b_U[WRONG] = THETA
    return model
