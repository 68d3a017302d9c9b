"""The DAS trainer on the hand-set distilled example."""

from __future__ import annotations

import pytest
import torch

from depass_tl.errors import DePassError
from depass_tl.subspace_patching import as_basis, subspace_patch_hook, train_das
from tests.subspace_patching.toy import SITE, build_toy, logit_diff, tokens

F64 = torch.float64
BASE, SOURCE = tokens(1, 1, 2), tokens(2, 3, 3)  # x -> x' with x' > x: gaps 1, 2, 1


def patched_effect(model, basis: torch.Tensor) -> float:
    """Fraction of the gap recovered, computed with a plain TL hook (not the report)."""
    _, cache = model.run_with_cache(SOURCE)
    y_b = logit_diff(model(BASE)).detach()
    y_s = logit_diff(model(SOURCE)).detach()
    hook = subspace_patch_hook(basis, cache[SITE], pos=-1)
    y_p = logit_diff(model.run_with_hooks(BASE, fwd_hooks=[(SITE, hook)])).detach()
    return float((y_p - y_b).sum() / (y_s - y_b).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_das_finds_a_direction_with_the_full_effect(seed: int) -> None:
    model = build_toy()
    res = train_das(model, BASE, SOURCE, SITE, logit_diff, steps=150, lr=0.05, seed=seed, progress=False)
    assert res.basis.shape == (3, 1)
    as_basis(res.basis)  # orthonormal within the documented tolerance
    assert len(res.losses) == 150 and res.losses[-1] < 1e-3 * res.losses[0]
    assert patched_effect(model, res.basis) >= 0.9


def test_maximize_reaches_the_analytic_optimum() -> None:
    # y_patch − y = Δ (aᵀv)(bᵀv), a = (1, 0, 1), b = (0, 2, 1): max over unit v is (|a||b| + aᵀb)/2
    # at the bisector v ∝ â + b̂.
    model = build_toy()
    res = train_das(model, BASE, SOURCE, SITE, logit_diff, steps=200, lr=0.05, seed=0,
                    objective="maximize", progress=False)
    a = torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    b = torch.tensor([0.0, 2.0, 1.0], dtype=F64)
    bisector = a / a.norm() + b / b.norm()
    assert patched_effect(model, res.basis) == pytest.approx((10**0.5 + 1) / 2, abs=1e-4)
    assert abs(float(res.basis[:, 0] @ bisector / bisector.norm())) == pytest.approx(1.0, abs=1e-4)


def test_k_two_and_reproducible_and_rng_untouched() -> None:
    model = build_toy()
    rng = torch.get_rng_state()
    r1 = train_das(model, BASE, SOURCE, SITE, logit_diff, k=2, steps=5, seed=3, progress=False)
    assert torch.equal(torch.get_rng_state(), rng)
    r2 = train_das(model, BASE, SOURCE, SITE, logit_diff, k=2, steps=5, seed=3, progress=False)
    assert r1.basis.shape == (3, 2) and torch.equal(r1.basis, r2.basis)
    as_basis(r1.basis)


def test_model_is_left_as_it_was(capsys: pytest.CaptureFixture[str]) -> None:
    model = build_toy()
    w_u = model.unembed.W_U if model.unembed.W_U.is_leaf else model.unembed.original_component.weight  # Bridge: a view
    w_u.requires_grad_(False)  # a user's own setting must survive
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_das(model, BASE, SOURCE, SITE, logit_diff, steps=3, progress=True)
    assert "DAS" in capsys.readouterr().err  # the progress bar
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_flags_restored_when_the_metric_fails() -> None:
    model = build_toy()
    calls = []

    def metric(logits: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) > 1:  # the first call scores the source run, the second is inside training
            raise RuntimeError("metric broke")
        return logit_diff(logits)

    with pytest.raises(RuntimeError, match="metric broke"):
        train_das(model, BASE, SOURCE, SITE, metric, steps=3, progress=False)
    assert all(p.requires_grad for p in model.parameters())
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be an int"),
        ({"k": 4}, "k must be an int"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"objective": "min"}, "objective must be"),
        ({"hook_name": "blocks.0.hook_nope"}, "not a hook of this model"),
        ({"source_tokens": tokens(1, 2)}, "same shape"),
        ({"metric": lambda logits: logits}, "scalar tensor or a \\[batch\\] tensor"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    args = {"base_tokens": BASE, "source_tokens": SOURCE, "hook_name": SITE, "metric": logit_diff,
            "steps": 2, "progress": False}
    args.update(kwargs)
    with pytest.raises(DePassError, match=match):
        train_das(build_toy(), **args)
