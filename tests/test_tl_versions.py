"""Version compatibility: what depass_tl attaches and refuses on the installed TransformerLens (2.x / 3.x / 4.x).

Runs in every CI environment; each test states which TL versions it is about.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import depass_tl
from depass_tl.errors import UnsupportedModelError
from depass_tl.install import install_methods
from tests._tl_version import HAS_BRIDGE, HAS_HOOKED, TL_MAJOR, TL_VERSION, requires_hooked

ROOT = Path(__file__).resolve().parents[1]


def test_import_in_a_fresh_interpreter_never_fails() -> None:
    code = "import depass_tl, depass_tl.decompx, depass_tl.compare; print(sorted(depass_tl.install_methods()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_methods_attached_to_the_classes_this_version_has() -> None:
    expected = (["HookedTransformer", "HookedEncoder"] if HAS_HOOKED else []) + (
        ["TransformerBridge"] if HAS_BRIDGE else []
    )
    assert install_methods() == expected, TL_VERSION
    if HAS_BRIDGE:
        from transformer_lens.model_bridge import TransformerBridge

        assert getattr(TransformerBridge.run_with_depass, "__depass_tl__", False)


def test_a_missing_class_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_tl(name: str, *args, **kwargs):
        if name.startswith("transformer_lens"):
            raise ImportError(f"simulated: {name} missing")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_tl)
    assert install_methods() == []


def test_an_existing_foreign_method_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from depass_tl import install

    module = types.ModuleType("fake_tl")
    module.TransformerBridge = type("TransformerBridge", (), {"run_with_depass": lambda self: "theirs"})
    module.HookedTransformer = type("HookedTransformer", (), {})
    monkeypatch.setitem(sys.modules, "fake_tl", module)
    monkeypatch.setattr(install, "_TARGETS", (("fake_tl", "TransformerBridge"), ("fake_tl", "HookedTransformer")))
    assert install_methods() == ["HookedTransformer"]
    assert module.TransformerBridge().run_with_depass() == "theirs"
    assert module.HookedTransformer.run_with_depass is install._run_with_depass_method


def test_declared_constraint_admits_the_installed_version() -> None:
    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(Requirement(d) for d in deps if Requirement(d).name.replace("_", "-") == "transformer-lens")
    assert TL_VERSION in req.specifier, (str(req.specifier), TL_VERSION)


def test_decompx_says_what_to_install_on_tl4() -> None:
    from depass_tl.decompx._compat import hooked_encoder_class

    if HAS_HOOKED:
        assert hooked_encoder_class().__name__ == "HookedEncoder"
    else:
        with pytest.raises(UnsupportedModelError, match="removed in TransformerLens 4.0"):
            hooked_encoder_class()


def test_attention_score_attrs_names_both_model_classes() -> None:
    """It runs on a HookedTransformer (TL 2.x / 3.x) and a TransformerBridge (TL 3.x / 4.x); anything else is refused."""
    with pytest.raises(depass_tl.DePassError, match="supports HookedTransformer and TransformerBridge models; got Linear"):
        depass_tl.attention_score_attrs(torch.nn.Linear(2, 2), None, None, 0, key_pos=0)  # type: ignore[arg-type]


def test_wrong_object_names_both_model_classes() -> None:
    with pytest.raises(depass_tl.DePassError, match="TransformerBridge"):
        depass_tl.run_with_depass(torch.nn.Linear(2, 2), torch.tensor([[1, 2]]))


# ------------------------------------------------------------------- HookedTransformer (TL 2.x / 3.x)


@requires_hooked
def test_unembed_input_rebuilt_where_tl_has_no_unembed_hook() -> None:
    """TL 2.x has no ``unembed.hook_in``: capture rebuilds it from the frozen final scale; TL 3 hooks it."""
    from tests.models import make_model, random_tokens

    model = make_model("gpt2")
    toks = random_tokens(model)
    run = depass_tl.capture(model, toks)
    assert ("unembed.hook_in" in model.hook_dict) == (TL_MAJOR >= 3)
    last = run.acts[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    with torch.no_grad():
        torch.testing.assert_close(run.acts["unembed.hook_in"], model.ln_final(last), rtol=0, atol=1e-12)
    _, dc = depass_tl.run_with_depass(model, toks)
    assert max(dc.completeness_error(relative=True).values()) < 1e-10


@requires_hooked
def test_moe_routing_follows_the_installed_tl() -> None:
    """TL 2.x always renormalises the top-k routing weights (it has no ``cfg.norm_topk_prob``)."""
    from tests.models import make_model, random_tokens

    model = make_model("llama", num_experts=4, experts_per_token=2, dtype=torch.float32)
    for block in model.blocks:  # TL builds MoE experts in torch's default dtype
        block.mlp.to(torch.float32)
    for rule in ("softmax", "ratio"):
        _, dc = depass_tl.run_with_depass(model, random_tokens(model), mlp_rule=rule)
        assert max(dc.completeness_error(relative=True).values()) < 1e-5, rule


@requires_hooked
def test_padded_strings_use_the_requested_side() -> None:
    """TL 2.x's ``get_attention_mask`` has no ``padding_side``; the model's tokenizer must stay unchanged."""
    from depass_tl.capture import tokens_and_mask
    from tests.models import make_model, word_tokenizer
    from transformer_lens import HookedTransformer

    words = [" a", " b", " c", " d", " e"]
    tok = word_tokenizer(words)
    cfg = make_model("gpt2", d_vocab=len(tok)).cfg
    model = HookedTransformer(cfg, tokenizer=tok).eval()
    side_before = model.tokenizer.padding_side
    for side in ("left", "right"):
        tokens, mask = tokens_and_mask(model, [" a b c", " d"], padding_side=side)
        pad_at = 0 if side == "left" else -1
        assert mask is not None and int(mask[1, pad_at]) == 0 and int(mask[0].sum()) == tokens.shape[1]
    assert model.tokenizer.padding_side == side_before


@requires_hooked
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_processed_weights_are_exact(arch: str) -> None:
    """``load_and_process_state_dict`` with every flag (TL 2.x keeps ``normalization_type='LN'``)."""
    import copy
    import warnings

    from tests.models import make_model, random_tokens

    model = make_model(arch)
    processed = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processed.load_and_process_state_dict(
            copy.deepcopy(model.state_dict()), fold_ln=True, center_writing_weights=True, center_unembed=True,
            fold_value_biases=True,
        )
    toks = random_tokens(model)
    for rule in ("softmax", "ratio"):
        logits, dc = depass_tl.run_with_depass(processed, toks, mlp_rule=rule)
        assert max(dc.completeness_error(relative=True).values()) < 1e-10, (arch, rule)
    if TL_MAJOR < 3:  # TL 2.x folds the LN weights but keeps LayerNorm modules (a different model); exact anyway
        return
    with torch.no_grad():  # TL 3: processing leaves the output unchanged up to centring the logits
        diff = logits - model(toks)
        torch.testing.assert_close(diff - diff.mean(-1, keepdim=True), torch.zeros_like(diff), rtol=0, atol=1e-5)
