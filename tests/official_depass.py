"""An independent re-implementation of the official DePass code's recurrence, on a Hugging Face Llama.

Written from the specification of the official code (TsinghuaC3I/Decomposed-Forward-Pass at
568bd6d; /work/shared/reference/depass.md §1-§3), not from depass_tl: it reads only the HF modules
(``input_layernorm``, ``self_attn.{v,o}_proj``, ``post_attention_layernorm``, ``mlp.{gate,up,down}_proj``,
``model.norm``, ``lm_head``) and the clean states and attention probabilities of one HF forward
(eager attention), and follows the official formulas, edits included:

* frozen RMSNorm ``s_n = w / sqrt(mean(x_n²) + eps)`` from the real residual (§3.1);
* attention ``X_m[q] += Σ_h Σ_k A_h[q, k] W_O^h W_V^{g(h)} (s ⊙ X_m)[k]``, no biases (§3.2);
* MLP (§3.3): keys ``γ_m = (s ⊙ X_m) W_gate``, the clean activations ``z = SiLU(g) ⊙ up(x̂)``;
  ``softmax`` / ``max`` after the gate edits (``ignore_special_token``: ``γ_0 ← 0``; always
  ``γ_0[pos 0] ← 1``; ``|γ_last| < 1e-5 → 0``; a column with no non-zero key gives the last component
  key 1), over the non-zero keys; ``taylor``: ``α = γ / (g + 1e-8)`` with no edit;
  ``X_m += W_down(α_m ⊙ z)``;
* final norm and ``lm_head`` of the last position (§3.5).

Granularities: token level (§2.1, unchunked: one component per position plus the zero "left state",
dropped from the output) and head level (§2.2 ``attn_head``: ``[rest = states[2l], o_h ...]``, the MLP
of layer l first, scores ``[1:]``). Float64, batch 1, slow on purpose: tiny models only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def clean_states(hf: Any, tokens: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """``states`` (length 2L + 1: resid_pre, resid_mid per layer, then the final norm's input) and the
    attention probabilities ``[head, q, k]`` per layer, from one HF forward (batch 1, eager attention)."""
    layers = hf.model.layers
    pre: dict[int, Tensor] = {}
    attn_out: dict[int, Tensor] = {}
    post: dict[int, Tensor] = {}
    handles = []
    for l, layer in enumerate(layers):
        def save_pre(module, args, kwargs, l=l):  # noqa: ANN001
            x = args[0] if args else kwargs["hidden_states"]
            pre[l] = x.detach()[0]

        def save_attn(module, args, out, l=l):  # noqa: ANN001
            attn_out[l] = (out[0] if isinstance(out, tuple) else out).detach()[0]

        def save_post(module, args, out, l=l):  # noqa: ANN001
            post[l] = (out[0] if isinstance(out, tuple) else out).detach()[0]

        handles += [layer.register_forward_pre_hook(save_pre, with_kwargs=True),
                    layer.self_attn.register_forward_hook(save_attn), layer.register_forward_hook(save_post)]
    try:
        with torch.no_grad():
            out = hf(tokens, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    states: list[Tensor] = []
    for l in range(len(layers)):
        states += [pre[l], pre[l] + attn_out[l]]
    states.append(post[len(layers) - 1])
    return states, [a.detach()[0] for a in out.attentions]


def _rms_scale(norm: Any, x: Tensor) -> Tensor:
    """``w / sqrt(mean(x²) + eps)`` per position, ``[N, D]``."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    return norm.weight[None] / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _head_weights(layer: Any, cfg: Any) -> tuple[Tensor, Tensor, int]:
    """``W_V`` ``[KV, d_h, D]``, ``W_O`` ``[D, H, d_h]`` (the official views) and the GQA group size."""
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    d_h = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    W_V = layer.self_attn.v_proj.weight.view(KV, d_h, -1)
    W_O = layer.self_attn.o_proj.weight.view(-1, H, d_h)
    return W_V, W_O, H // KV


def _attention(X: Tensor, A: Tensor, layer: Any, cfg: Any, state: Tensor, *, per_head: bool = False) -> Tensor:
    """The official ``attn_decomposed_compute`` (or ``attn_head_contribution_compute`` with ``per_head``)."""
    x_hat = _rms_scale(layer.input_layernorm, state)[None] * X  # [M, N, D]
    W_V, W_O, group = _head_weights(layer, cfg)
    H = W_O.shape[1]
    out = []
    for h in range(H):
        v = torch.einsum("mkd,ed->mke", x_hat, W_V[h // group])  # [M, N, d_h]
        mixed = torch.einsum("qk,mke->mqe", A[h], v)
        out.append(torch.einsum("mqe,de->mqd", mixed, W_O[:, h]))
    stacked = torch.stack(out, 1)  # [M, H, N, D]
    return stacked if per_head else stacked.sum(1)


def _mlp(X: Tensor, layer: Any, state: Tensor, rule: str, temperature: float, ignore_special_token: bool) -> Tensor:
    """The official ``mlp_decomposed_compute``: the update of every component ``[M, N, D]``."""
    mlp = layer.mlp
    s = _rms_scale(layer.post_attention_layernorm, state)
    x_clean = s * state
    g = x_clean @ mlp.gate_proj.weight.T  # [N, I]
    z = torch.nn.functional.silu(g) * (x_clean @ mlp.up_proj.weight.T)  # the clean activations
    gamma = torch.einsum("mnd,id->mni", s[None] * X, mlp.gate_proj.weight)  # [M, N, I]
    if rule == "taylor":
        alpha = gamma / (g[None] + 1e-8)
    else:
        gamma = gamma.clone()
        if ignore_special_token:
            gamma[0] = 0.0
        gamma[0, 0] = 1.0
        last = gamma[-1]
        last[last.abs() < 1e-5] = 0.0
        zero_col = (gamma == 0).all(0)
        last[zero_col] = 1.0
        valid = gamma != 0
        if rule == "softmax":
            scores = torch.where(valid, gamma / temperature, torch.full_like(gamma, float("-inf")))
            alpha = torch.softmax(scores, dim=0)
        elif rule == "max":
            scores = torch.where(valid, gamma, torch.full_like(gamma, float("-inf")))
            alpha = torch.zeros_like(gamma).scatter_(0, scores.argmax(0, keepdim=True), 1.0)
        else:
            raise ValueError(rule)
    return torch.einsum("mni,di->mnd", alpha * z[None], mlp.down_proj.weight)


def _propagate(hf: Any, X: Tensor, states: list[Tensor], attns: list[Tensor], first_layer: int, *, skip_attn: bool,
               rule: str, temperature: float, ignore_special_token: bool) -> Tensor:
    cfg = hf.config
    for l in range(first_layer, cfg.num_hidden_layers):
        layer = hf.model.layers[l]
        if not (skip_attn and l == first_layer):
            X = X + _attention(X, attns[l], layer, cfg, states[2 * l])
        X = X + _mlp(X, layer, states[2 * l + 1], rule, temperature, ignore_special_token)
    return X


def _scores(hf: Any, X: Tensor, states: list[Tensor], target: int) -> Tensor:
    Y = _rms_scale(hf.model.norm, states[-1])[None] * X
    return Y[:, -1] @ hf.lm_head.weight[target]


@torch.no_grad()
def official_token_scores(hf: Any, tokens: Tensor, target: int, *, rule: str = "softmax", temperature: float = 0.1,
                          ignore_special_token: bool = True) -> Tensor:
    """``compute_attribute_score(get_last_layer_decomposed_state(prompt), -1, target)``: ``[N]`` per token."""
    states, attns = clean_states(hf, tokens)
    x0 = states[0]
    N = x0.shape[0]
    X = torch.zeros(N + 1, *x0.shape, dtype=x0.dtype)
    for j in range(N):
        X[j, j] = x0[j]
    X[-1] = x0 - X[:-1].sum(0)  # the left state: exactly 0 here
    X = _propagate(hf, X, states, attns, 0, skip_attn=False, rule=rule, temperature=temperature,
                   ignore_special_token=ignore_special_token)
    return _scores(hf, X, states, target)[:-1]


@torch.no_grad()
def official_head_scores(hf: Any, tokens: Tensor, layer: int, target: int, *, rule: str = "softmax",
                         temperature: float = 0.1) -> Tensor:
    """``get_layer_module_decomposed_state(type="attn_head")`` scores ``[1:]``: ``[H]`` per head of ``layer``."""
    states, attns = clean_states(hf, tokens)
    block = hf.model.layers[layer]
    heads = _attention(states[2 * layer][None], attns[layer], block, hf.config, states[2 * layer], per_head=True)[0]
    X = torch.cat([states[2 * layer][None], heads])  # [rest, o_1 .. o_H]
    X = _propagate(hf, X, states, attns, layer, skip_attn=True, rule=rule, temperature=temperature,
                   ignore_special_token=False)
    return _scores(hf, X, states, target)[1:]
