"""Slow, obviously correct reference implementation of token-level DePass.

This is the independent oracle for the replay engine. It is written from the math in
DESIGN.md section 2, not from the engine's code, as explicit Python loops over components,
layers, batch entries, positions, heads, query/key positions and MLP neurons, in float64.
Only the clean run (``model.run_with_cache``) and the model's weights are used; no hook edits
the model. It is slow on purpose; use it on tiny models only (2 layers, d_model <= 16, a few
positions).

Components: ``tok{p}`` for each input position p, holding the clean
``blocks.0.hook_resid_pre[:, p]`` at position p only, and a final ``bias`` component that
starts at zero and receives every constant term (b_V, b_O, b_in, b_out, LN b, b_U).

Frozen from the clean run: every norm's ``hook_scale``, every ``attn.hook_pattern``, every
``mlp.hook_pre`` / ``mlp.hook_post`` (and ``mlp.hook_pre_linear`` for gated MLPs).

MLP rules (``mlp_rule``):

* ``"softmax"``: the clean post is split by a softmax over the *active* components (those whose
  pre-activation contribution gamma_c is not exactly 0) of gamma_c / temperature. Nothing active:
  everything goes to ``bias``. For gated MLPs gamma_c is the gate contribution ln2_c @ W_gate and
  the split quantity is post - b_in (b_in goes to ``bias``).
* ``"ratio"``: standard MLP: post_c = post / pre * gamma_c (pre == 0: all of post to ``bias``).
  Gated MLP: post_c = act(hook_pre) * (ln2_c @ W_in) (+ b_in for ``bias``).
* ``"max"``: all of the (split) post goes to the active component with the largest gamma_c,
  lowest index on ties; nothing active: ``bias``.
* ``"taylor"`` (the official DePass code's): standard MLP: as ``"ratio"``. Gated MLP:
  post_c = act(g) / g * pre_linear * (ln2_c @ W_gate), g = the clean hook_pre and pre_linear the
  clean hook_pre_linear (g == 0: all of post - b_in to ``bias``); b_in goes to ``bias``.
"""

from __future__ import annotations

import math

from typing import Any

import torch

MLP_RULES = ("softmax", "ratio", "max", "taylor")

HookedTransformer = Any  # a HookedTransformer (TL <= 3) or a TL-native TransformerBridge (TL 4, boot_native)

#: Norm modules by class name: HookedTransformer's, and the TL-native modules a Bridge wraps.
_NORM_KINDS = {
    "LayerNorm": "LN", "LayerNormPre": "LNPre", "RMSNorm": "RMS", "RMSNormPre": "RMSPre",
    "NativeLayerNormPre": "LNPre", "NativeRMSNorm": "RMS", "NativeRMSNormPre": "RMSPre", "Identity": "none",
}


def _unwrap(module: torch.nn.Module | None) -> torch.nn.Module | None:
    """The module a TransformerBridge component wraps (the module itself on a HookedTransformer)."""
    return getattr(module, "original_component", module) if module is not None else None


def _norm_kind(module: torch.nn.Module | None) -> str:
    """Name the normalisation a TL norm module applies ("LN", "LNPre", "RMS", "RMSPre", "none")."""
    module = _unwrap(module)
    if module is None or isinstance(module, torch.nn.Identity):
        return "none"
    name = type(module).__name__
    if name in _NORM_KINDS:
        return _NORM_KINDS[name]
    raise NotImplementedError(f"reference: unsupported norm module {name}")


def _norm_weight(module: torch.nn.Module, name: str) -> torch.Tensor:
    """``w`` / ``b`` of a HookedTransformer norm, ``weight`` / ``bias`` of the module a Bridge wraps."""
    inner = _unwrap(module)
    return getattr(inner, {"w": "weight", "b": "bias"}[name]) if inner is not module else getattr(module, name)


def _act_fn(mlp: torch.nn.Module):
    """The MLP's activation function: HookedTransformer's ``act_fn``, the native module's ``act``."""
    return mlp.act_fn if hasattr(mlp, "act_fn") and callable(mlp.act_fn) else _unwrap(mlp).act


def _bias(value: torch.Tensor | None, size: int, like: torch.Tensor) -> torch.Tensor:
    """A bias, or zeros where the model has none (the Bridge's bias-free gated MLP reads None)."""
    return torch.zeros(size, dtype=like.dtype) if value is None else value


def _norm_components(
    module: torch.nn.Module | None,
    scale: torch.Tensor | None,
    comps: torch.Tensor,
) -> torch.Tensor:
    """Apply a norm with frozen scale to each component; the LN bias goes to the last (bias) one.

    comps: [component, batch, pos, d_model]; scale: [batch, pos, 1] (clean hook_scale).
    """
    kind = _norm_kind(module)
    n_comp, n_batch, n_pos, _ = comps.shape
    out = torch.zeros_like(comps)
    for c in range(n_comp):
        is_bias = c == n_comp - 1
        for b in range(n_batch):
            for p in range(n_pos):
                x = comps[c, b, p]
                if kind == "none":
                    y = x.clone()
                else:
                    s = scale[b, p, 0]
                    if kind in ("LN", "LNPre"):
                        y = (x - x.mean()) / s
                    else:
                        y = x / s
                    if kind in ("LN", "RMS"):
                        y = y * _norm_weight(module, "w")
                    if kind == "LN" and is_bias:
                        y = y + _norm_weight(module, "b")
                out[c, b, p] = y
    return out


def _attention_components(
    attn: torch.nn.Module,
    pattern: torch.Tensor,
    ln1: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with frozen pattern per component.

    pattern: [batch, head, query_pos, key_pos]; ln1: [component, batch, pos, d_model].
    Returns (z [component, batch, pos, head, d_head], attn_out [component, batch, pos, d_model]).
    """
    n_comp, n_batch, n_pos, d_model = ln1.shape
    n_heads = attn.W_O.shape[0]
    d_head = attn.W_O.shape[1]
    # GQA: raw kv weights are [n_kv, d_model, d_head]; head h reads kv-head h // group.
    if hasattr(attn, "_W_V"):
        w_v_raw, b_v_raw = attn._W_V, attn._b_V
    else:
        w_v_raw, b_v_raw = attn.W_V, attn.b_V
    group = n_heads // w_v_raw.shape[0]

    z = torch.zeros(n_comp, n_batch, n_pos, n_heads, d_head, dtype=ln1.dtype)
    out = torch.zeros(n_comp, n_batch, n_pos, d_model, dtype=ln1.dtype)
    for c in range(n_comp):
        is_bias = c == n_comp - 1
        for b in range(n_batch):
            for h in range(n_heads):
                g = h // group
                # values of this component at every key position
                v = []
                for k in range(n_pos):
                    v_k = ln1[c, b, k] @ w_v_raw[g]
                    if is_bias:
                        v_k = v_k + b_v_raw[g]
                    v.append(v_k)
                for q in range(n_pos):
                    acc = torch.zeros(d_head, dtype=ln1.dtype)
                    for k in range(n_pos):
                        acc = acc + pattern[b, h, q, k] * v[k]
                    z[c, b, q, h] = acc
            for q in range(n_pos):
                acc = torch.zeros(d_model, dtype=ln1.dtype)
                for h in range(n_heads):
                    acc = acc + z[c, b, q, h] @ attn.W_O[h]
                if is_bias:
                    acc = acc + attn.b_O
                out[c, b, q] = acc
    return z, out


def _split_weights(gammas: list[float], rule: str, temperature: float) -> list[float] | None:
    """Weights alpha_c (sum 1) over components for one neuron, or None when nothing is active."""
    active = [c for c, g in enumerate(gammas) if g != 0.0]
    if not active:
        return None
    alpha = [0.0] * len(gammas)
    if rule == "softmax":
        top = max(gammas[c] for c in active)
        expo = {c: math.exp((gammas[c] - top) / temperature) for c in active}
        total = sum(expo.values())
        for c in active:
            alpha[c] = expo[c] / total
    elif rule == "max":
        best = active[0]
        for c in active[1:]:
            if gammas[c] > gammas[best]:
                best = c
        alpha[best] = 1.0
    else:
        raise ValueError(rule)
    return alpha


def _mlp_components(
    mlp: torch.nn.Module,
    ln2: torch.Tensor,
    clean_pre: torch.Tensor,
    clean_post: torch.Tensor,
    rule: str,
    temperature: float,
    clean_pre_linear: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP with frozen coefficients per component.

    clean_pre / clean_post: the clean ``mlp.hook_pre`` / ``mlp.hook_post`` [batch, pos, d_mlp]
    (for a gated MLP hook_pre is the gate pre-activation; clean_pre_linear its hook_pre_linear). Returns
    (post [component, batch, pos, d_mlp], mlp_out [component, batch, pos, d_model]).
    """
    n_comp, n_batch, n_pos, d_model = ln2.shape
    gated = getattr(mlp, "W_gate", None) is not None  # the Bridge's plain MLP reads W_gate as None
    d_mlp = mlp.W_in.shape[1]
    bias_c = n_comp - 1

    # gamma_c: the component's contribution to the split key
    #   standard MLP: ln2_c @ W_in (+ b_in for bias)  == contribution to hook_pre
    #   gated MLP:    ln2_c @ W_gate (softmax / max keys), ln2_c @ W_in (ratio, linear path)
    gamma = torch.zeros(n_comp, n_batch, n_pos, d_mlp, dtype=ln2.dtype)
    lin = torch.zeros(n_comp, n_batch, n_pos, d_mlp, dtype=ln2.dtype)
    for c in range(n_comp):
        for b in range(n_batch):
            for p in range(n_pos):
                if gated:
                    gamma[c, b, p] = ln2[c, b, p] @ mlp.W_gate
                    lin[c, b, p] = ln2[c, b, p] @ mlp.W_in
                else:
                    g = ln2[c, b, p] @ mlp.W_in
                    if c == bias_c:
                        g = g + mlp.b_in
                    gamma[c, b, p] = g

    # Per-neuron loop on Python floats (float64), for speed and clarity.
    gamma_l = gamma.tolist()  # [component][batch][pos][neuron]
    lin_l = lin.tolist()
    pre_l = clean_pre.tolist()  # [batch][pos][neuron]
    post_l = clean_post.tolist()
    act_l = _act_fn(mlp)(clean_pre).tolist() if gated else None  # frozen act(hook_pre)
    if gated and clean_pre_linear is None:  # a Bridge without hook_pre_linear: the components' sum is the clean value
        clean_pre_linear = lin.sum(0)
    lin_clean_l = clean_pre_linear.tolist() if gated else None  # frozen hook_pre_linear
    b_in_l = _bias(mlp.b_in, d_mlp, ln2).tolist()
    post_c = [
        [[[0.0] * d_mlp for _ in range(n_pos)] for _ in range(n_batch)] for _ in range(n_comp)
    ]
    for b in range(n_batch):
        for p in range(n_pos):
            for n in range(d_mlp):
                if gated:
                    if rule == "ratio":
                        # post_c = act(hook_pre) * (ln2_c @ W_in), + b_in for bias
                        for c in range(n_comp):
                            post_c[c][b][p][n] = act_l[b][p][n] * lin_l[c][b][p][n]
                        post_c[bias_c][b][p][n] += b_in_l[n]
                        continue
                    if rule == "taylor":
                        # act(g) = (act(g) / g) * g, split along the gate contributions; the up path whole
                        g = pre_l[b][p][n]
                        post_c[bias_c][b][p][n] += b_in_l[n]
                        if g == 0.0:
                            post_c[bias_c][b][p][n] += act_l[b][p][n] * lin_clean_l[b][p][n]
                            continue
                        for c in range(n_comp):
                            post_c[c][b][p][n] += act_l[b][p][n] / g * lin_clean_l[b][p][n] * gamma_l[c][b][p][n]
                        continue
                    # split post - b_in by the gate contributions; b_in goes to bias
                    to_split = post_l[b][p][n] - b_in_l[n]
                    post_c[bias_c][b][p][n] += b_in_l[n]
                else:
                    to_split = post_l[b][p][n]
                    if rule in ("ratio", "taylor"):
                        pre = pre_l[b][p][n]
                        if pre == 0.0:
                            post_c[bias_c][b][p][n] += to_split
                        else:
                            for c in range(n_comp):
                                post_c[c][b][p][n] = to_split / pre * gamma_l[c][b][p][n]
                        continue
                gammas = [gamma_l[c][b][p][n] for c in range(n_comp)]
                alpha = _split_weights(gammas, rule, temperature)
                if alpha is None:
                    post_c[bias_c][b][p][n] += to_split
                else:
                    for c in range(n_comp):
                        post_c[c][b][p][n] += alpha[c] * to_split
    post = torch.tensor(post_c, dtype=ln2.dtype)

    out = torch.zeros(n_comp, n_batch, n_pos, d_model, dtype=ln2.dtype)
    for c in range(n_comp):
        for b in range(n_batch):
            for p in range(n_pos):
                o = post[c, b, p] @ mlp.W_out
                if c == bias_c:
                    o = o + _bias(mlp.b_out, d_model, ln2)
                out[c, b, p] = o
    return post, out


@torch.no_grad()
def reference_depass(
    model: HookedTransformer,
    tokens: torch.Tensor,
    *,
    mlp_rule: str = "softmax",
    temperature: float = 0.1,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Token-level DePass by explicit loops.

    Returns (decomposition, labels). decomposition maps hook names to
    [component, batch, pos, ...] tensors: ``blocks.{l}.hook_resid_pre``,
    ``blocks.{l}.hook_attn_out``, ``blocks.{l}.attn.hook_z``, ``blocks.{l}.hook_resid_mid`` (not
    for attn-only), ``blocks.{l}.mlp.hook_post`` and ``blocks.{l}.hook_mlp_out`` (not for
    attn-only), ``blocks.{l}.hook_resid_post``, ``unembed.hook_in`` and ``logits``
    ([component, batch, pos, d_vocab]).
    labels: ``tok0 .. tok{P-1}, bias``.
    """
    if mlp_rule not in MLP_RULES:
        raise ValueError(f"mlp_rule {mlp_rule!r} not in {MLP_RULES}")
    cfg = model.cfg
    if cfg.parallel_attn_mlp or cfg.positional_embedding_type == "shortformer":
        raise NotImplementedError("reference: parallel_attn_mlp / shortformer not supported")
    _, cache = model.run_with_cache(tokens)
    x0 = cache["blocks.0.hook_resid_pre"].detach()
    n_batch, n_pos, d_model = x0.shape
    n_comp = n_pos + 1
    labels = [f"tok{p}" for p in range(n_pos)] + ["bias"]

    comps = torch.zeros(n_comp, n_batch, n_pos, d_model, dtype=x0.dtype)
    for p in range(n_pos):
        comps[p, :, p] = x0[:, p]

    result: dict[str, torch.Tensor] = {}
    for layer, block in enumerate(model.blocks):
        pre = f"blocks.{layer}"
        result[f"{pre}.hook_resid_pre"] = comps.clone()
        scale1 = cache[f"{pre}.ln1.hook_scale"] if f"{pre}.ln1.hook_scale" in cache else None
        ln1 = _norm_components(block.ln1, scale1, comps)
        z, attn_out = _attention_components(block.attn, cache[f"{pre}.attn.hook_pattern"], ln1)
        result[f"{pre}.attn.hook_z"] = z
        result[f"{pre}.hook_attn_out"] = attn_out
        comps = comps + attn_out
        if not cfg.attn_only:
            result[f"{pre}.hook_resid_mid"] = comps.clone()
            scale2 = cache[f"{pre}.ln2.hook_scale"] if f"{pre}.ln2.hook_scale" in cache else None
            ln2 = _norm_components(block.ln2, scale2, comps)
            post, mlp_out = _mlp_components(
                block.mlp,
                ln2,
                cache[f"{pre}.mlp.hook_pre"],
                cache[f"{pre}.mlp.hook_post"],
                mlp_rule,
                temperature,
                cache[f"{pre}.mlp.hook_pre_linear"] if f"{pre}.mlp.hook_pre_linear" in cache else None,
            )
            result[f"{pre}.mlp.hook_post"] = post
            result[f"{pre}.hook_mlp_out"] = mlp_out
            comps = comps + mlp_out
        result[f"{pre}.hook_resid_post"] = comps.clone()

    ln_final = getattr(model, "ln_final", None)
    scale_f = cache["ln_final.hook_scale"] if "ln_final.hook_scale" in cache else None
    final = _norm_components(ln_final, scale_f, comps)
    result["unembed.hook_in"] = final
    logits = torch.zeros(n_comp, n_batch, n_pos, model.W_U.shape[1], dtype=x0.dtype)
    for c in range(n_comp):
        for b in range(n_batch):
            for p in range(n_pos):
                lg = final[c, b, p] @ model.W_U
                if c == n_comp - 1:
                    lg = lg + model.b_U
                logits[c, b, p] = lg
    result["logits"] = logits
    return result, labels


def randomise_norms_and_biases(model: HookedTransformer, seed: int, scale: float = 0.3) -> None:
    """Set every norm weight to 1 + noise and every bias to noise (TL initialises them to 1 / 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            last = name.split(".")[-1]
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.dtype)
            if last == "w" or (last == "weight" and param.ndim == 1):  # HookedTransformer / Bridge norm weights
                param.copy_(1.0 + scale * noise)
            elif _is_bias_name(last):
                param.copy_(scale * noise)


def _is_bias_name(last: str) -> bool:
    """A bias parameter's last name: HookedTransformer's ``b``, ``b_*``, ``_b_*``; the Bridge's ``bias``."""
    return last in ("b", "bias") or last.startswith("b_") or last.startswith("_b_")


def _zero_biases(model: HookedTransformer) -> None:
    """Set every bias (b_V, b_O, b_in, b_out, LN b, b_U, ...) of ``model`` to zero in place."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _is_bias_name(name.split(".")[-1]):
                param.zero_()


@torch.no_grad()
def hooked_ratio_reference(
    model: HookedTransformer, tokens: torch.Tensor
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A second, independent reference for the ``ratio`` rule only, using TL's own forward.

    The ``ratio`` rule makes the frozen model linear in its input, so each component can be run
    separately through the TL model with hooks that force the clean norm scales and attention
    patterns and replace the MLP activation by its frozen slope. Token components run through a
    deep copy with all biases zeroed, starting from their one-position input; the bias component
    runs through the original model from a zero input. Returns the same keys as
    ``reference_depass`` minus ``attn.hook_z`` / ``mlp.hook_post`` (it records the TL hooks).
    """
    import copy

    cfg = model.cfg
    logits_clean, cache = model.run_with_cache(tokens)
    x0 = cache["blocks.0.hook_resid_pre"]
    n_batch, n_pos, _ = x0.shape
    no_bias = copy.deepcopy(model)
    _zero_biases(no_bias)

    wanted = ["hook_resid_pre", "hook_attn_out", "hook_resid_post"]
    if not cfg.attn_only:
        wanted += ["hook_resid_mid", "hook_mlp_out"]
    names = [f"blocks.{i}.{w}" for i in range(cfg.n_layers) for w in wanted] + ["unembed.hook_in"]

    def run_component(net: HookedTransformer, start: torch.Tensor, is_bias: bool):
        record: dict[str, torch.Tensor] = {}

        def force(name):
            def hook(value, hook):
                return cache[name]

            return hook

        def set_start(value, hook):
            return start

        def save_as(name):  # by the requested name: a Bridge hook's own name may be another alias
            def hook(value, hook):
                record[name] = value.detach().clone()
                return value

            return hook

        def frozen_post(layer):
            pre_name = f"blocks.{layer}.mlp.hook_pre"

            def hook(value, hook):
                mlp = net.blocks[layer].mlp
                clean_pre = cache[pre_name]
                clean_post = cache[f"blocks.{layer}.mlp.hook_post"]
                if getattr(mlp, "W_gate", None) is not None:
                    # post = act(clean gate) * pre_linear_c (+ b_in, zero in the copy)
                    lin = record[f"blocks.{layer}.mlp.hook_pre_linear"]
                    return _act_fn(mlp)(clean_pre) * lin + _bias(mlp.b_in, lin.shape[-1], lin)
                pre_c = record[pre_name]
                slope = torch.where(
                    clean_pre != 0, clean_post / clean_pre, torch.zeros_like(clean_pre)
                )
                out = slope * pre_c
                if is_bias:
                    out = torch.where(clean_pre != 0, out, clean_post)
                return out

            return hook

        hooks = [("blocks.0.hook_resid_pre", set_start)]
        for layer in range(cfg.n_layers):
            pre = f"blocks.{layer}"
            hooks.append((f"{pre}.attn.hook_pattern", force(f"{pre}.attn.hook_pattern")))
            for ln in ("ln1", "ln2"):
                if f"{pre}.{ln}.hook_scale" in cache:
                    hooks.append((f"{pre}.{ln}.hook_scale", force(f"{pre}.{ln}.hook_scale")))
            if not cfg.attn_only:
                hooks.append((f"{pre}.mlp.hook_pre", save_as(f"{pre}.mlp.hook_pre")))
                if f"{pre}.mlp.hook_pre_linear" in cache:
                    hooks.append((f"{pre}.mlp.hook_pre_linear", save_as(f"{pre}.mlp.hook_pre_linear")))
                hooks.append((f"{pre}.mlp.hook_post", frozen_post(layer)))
        if "ln_final.hook_scale" in cache:
            hooks.append(("ln_final.hook_scale", force("ln_final.hook_scale")))
        hooks += [(name, save_as(name)) for name in names]
        logits = net.run_with_hooks(tokens, fwd_hooks=hooks)
        record["logits"] = logits
        return record

    runs = []
    for p in range(n_pos):
        start = torch.zeros_like(x0)
        start[:, p] = x0[:, p]
        runs.append(run_component(no_bias, start, is_bias=False))
    runs.append(run_component(model, torch.zeros_like(x0), is_bias=True))
    result = {name: torch.stack([r[name] for r in runs]) for name in names + ["logits"]}
    labels = [f"tok{p}" for p in range(n_pos)] + ["bias"]
    return result, labels
