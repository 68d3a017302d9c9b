"""Head / neuron ranking methods for the component-level protocol, by display name.

Each is called as ``fn(model, tokens, target, *, level, incorrect, corrupt_tokens, means)`` and
returns ``[batch, n_layers, n_units]`` scores (larger = more important for the answer) or an
:class:`~depass_tl.evaluate.baselines.Attribution`. ``corrupt_tokens`` are the prompts of the
task's corruption (same shape as ``tokens``); ``means`` the units' mean activations over the task's
prompts (:func:`~depass_tl.evaluate.ablation.mean_activations`).

* DePass, one variant per MLP rule (:func:`~depass_tl.evaluate.baselines.depass_variants`).
* Exact single-unit ablation, zero / mean / resample (:func:`~depass_tl.evaluate.ablation.exact_ablation_scores`).
* Attribution patching (Nanda 2023) from a zero and from the corrupted activation.
* Activation patching from TransformerLens (heads only): ``transformer_lens.patching.
  get_act_patch_attn_head_out_all_pos`` restores each head's clean output in the corrupted run
  (denoising); the score is the recovered logit difference. Run per prompt (TL's patching metric
  returns one number per run).
* Layer integrated gradients from captum, from the corrupted activation (``[eval]`` extra).
* Random (seeded per prompt).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from depass_tl.evaluate.ablation import exact_ablation_scores
from depass_tl.evaluate.baselines import DEFAULT_TEMPERATURES, Attribution, prompt_seed, depass_variants
from depass_tl.evaluate.captum_methods import DEFAULT_DELTA_TOL, layer_integrated_gradients, require_captum
from depass_tl.evaluate.component_metrics import (
    Level,
    attribution_patching,
    check_level,
    depass_unit_scores,
    logit_metric,
    n_units,
)
from depass_tl.evaluate.token_metrics import target_ids
from depass_tl.errors import DePassError

__all__ = ["ComponentMethod", "activation_patching", "component_methods"]

ComponentMethod = Callable[..., "Tensor | Attribution"]


def activation_patching(
    model: Any,
    tokens: Tensor,
    target: int | Sequence[int] | Tensor,
    *,
    corrupt_tokens: Tensor,
    incorrect: int | Sequence[int] | Tensor | None = None,
) -> Tensor:
    """TransformerLens activation patching per head (denoising), one prompt at a time.

    For prompt ``b``: ``get_act_patch_attn_head_out_all_pos(model, corrupt[b], clean_cache[b], m)``
    runs the corrupted prompt with one head's ``hook_z`` (all positions) restored from the clean run;
    the score is ``m(patched) − m(corrupt)`` with ``m`` the target logit (or ``target − incorrect``).
    TL's per-call progress bar (written to stderr) is not shown.

    Returns:
        ``[batch, n_layers, n_heads]`` (float64, CPU).
    """
    import transformer_lens.patching as tlp

    check_level(model, "heads")
    tokens = tokens.to(model.cfg.device)
    corrupt_tokens = corrupt_tokens.to(model.cfg.device)
    if corrupt_tokens.shape != tokens.shape:
        raise DePassError(f"corrupt_tokens must have the shape of tokens {tuple(tokens.shape)}; got {tuple(corrupt_tokens.shape)}.")
    B = tokens.shape[0]
    ids = torch.tensor(target_ids(target, B, model.cfg.d_vocab))
    bad = None if incorrect is None else torch.tensor(target_ids(incorrect, B, model.cfg.d_vocab))
    out = []
    for b in range(B):
        one_bad = None if bad is None else bad[b : b + 1]

        def metric(logits: Tensor, b: int = b, one_bad: Tensor | None = one_bad) -> Tensor:
            return logit_metric(logits, ids[b : b + 1], one_bad)[0]

        with torch.no_grad():
            _, clean_cache = model.run_with_cache(tokens[b : b + 1])
            base = float(metric(model(corrupt_tokens[b : b + 1], return_type="logits")))
            with contextlib.redirect_stderr(io.StringIO()):  # TL draws a progress bar per call
                patched = tlp.get_act_patch_attn_head_out_all_pos(model, corrupt_tokens[b : b + 1], clean_cache, metric)
        out.append(patched.double().cpu() - base)
    return torch.stack(out)


def _depass(model: Any, tokens: Tensor, target: Any, *, level: Level, incorrect: Any = None, mlp_rule: str,
            temperature: float, **_: Any) -> Attribution:
    scores, streams = depass_unit_scores(model, tokens, target, incorrect, level, mlp_rule, temperature)
    return Attribution(scores, replay=streams)


def _exact(model: Any, tokens: Tensor, target: Any, *, level: Level, ablation: str, incorrect: Any = None,
           corrupt_tokens: Tensor | None = None, means: Tensor | None = None, **_: Any) -> Tensor:
    return exact_ablation_scores(model, tokens, target, incorrect=incorrect, level=level, ablation=ablation,  # type: ignore[arg-type]
                                 means=means, corrupt_tokens=corrupt_tokens)


def _atp(model: Any, tokens: Tensor, target: Any, *, level: Level, corrupt: bool, incorrect: Any = None,
         corrupt_tokens: Tensor | None = None, **_: Any) -> Tensor:
    if corrupt and corrupt_tokens is None:
        raise DePassError("attribution patching from the corrupted run needs corrupt_tokens.")
    return attribution_patching(model, tokens, target, incorrect=incorrect, level=level,
                                corrupt_tokens=corrupt_tokens if corrupt else None)


def _act_patch(model: Any, tokens: Tensor, target: Any, *, incorrect: Any = None,
               corrupt_tokens: Tensor | None = None, **_: Any) -> Tensor:
    if corrupt_tokens is None:
        raise DePassError("activation patching needs corrupt_tokens.")
    return activation_patching(model, tokens, target, corrupt_tokens=corrupt_tokens, incorrect=incorrect)


def _layer_ig(model: Any, tokens: Tensor, target: Any, *, level: Level, delta_tol: float, incorrect: Any = None,
              corrupt_tokens: Tensor | None = None, **_: Any) -> Attribution:
    if corrupt_tokens is None:
        raise DePassError("layer integrated gradients needs corrupt_tokens (the baseline prompts).")
    r = layer_integrated_gradients(model, tokens, target, baseline_tokens=corrupt_tokens, incorrect=incorrect,
                                   level=level, delta_tol=delta_tol)
    return Attribution(r.scores, info={"ig_steps": float(r.steps), "ig_delta": r.delta,
                                       "ig_converged": float(r.converged)})


def _random(model: Any, tokens: Tensor, target: Any, *, level: Level, seed: int, **_: Any) -> Tensor:
    L, U = model.cfg.n_layers, n_units(model, level)
    rows = [torch.rand(L, U, generator=torch.Generator().manual_seed(prompt_seed(seed, r)), dtype=torch.float64)
            for r in tokens.tolist()]
    return torch.stack(rows)


def component_methods(
    *,
    level: Level = "heads",
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    attn_only: bool = False,
    ablations: Sequence[str] = ("zero", "mean", "resample"),
    captum: bool = True,
    ig_delta: float = DEFAULT_DELTA_TOL,
    seed: int = 0,
) -> dict[str, ComponentMethod]:
    """The standard unit rankings, by display name (see the module docstring).

    Args:
        level: ``"heads"`` or ``"neurons"`` (TL's activation patching is per head only).
        ablations: the exact single-unit ablations to include.
        captum: include captum's layer integrated gradients (needs the ``[eval]`` extra; checked here).

    Raises:
        CaptumMissingError: ``captum=True`` and captum is not installed.

    Examples:
        >>> list(component_methods(attn_only=True, captum=False, ablations=("zero",)))
        ['depass (no MLP: every rule)', 'exact ablation (zero)', 'attribution patching (zero)', 'attribution patching (resample)', 'activation patching (TL, denoising)', 'random']
    """
    if level not in ("heads", "neurons"):
        raise DePassError(f"level must be 'heads' or 'neurons'; got {level!r}.")
    out: dict[str, ComponentMethod] = {}
    for name, kw in depass_variants(temperatures, attn_only=attn_only).items():
        out[name] = partial(_depass, **kw)
    for ablation in ablations:
        out[f"exact ablation ({ablation})"] = partial(_exact, ablation=ablation)
    out["attribution patching (zero)"] = partial(_atp, corrupt=False)
    out["attribution patching (resample)"] = partial(_atp, corrupt=True)
    if level == "heads":
        out["activation patching (TL, denoising)"] = _act_patch
    if captum:
        require_captum()
        out["layer integrated gradients (captum)"] = partial(_layer_ig, delta_tol=ig_delta)
    out["random"] = partial(_random, seed=seed)
    return out
