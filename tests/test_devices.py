"""Models split across devices: each block replays on its weights' device, with the same numbers.

TransformerLens splits a ``HookedTransformer`` with ``n_devices`` (block l on GPU ``l * n / n_layers``)
and a ``TransformerBridge`` through the Hugging Face ``device_map`` it was loaded with. Both need
several GPUs; the tests here use what one machine has:

* everywhere (CPU): a model whose config says ``n_devices=2`` is replayed (no longer refused) with
  exactly the numbers of the same model with ``n_devices=1`` (TL places every block on the CPU then);
* with CUDA (skipped without it: the placement cannot be made on a machine with one device): the
  first half of the blocks (and the embeddings) on ``cpu``, the second half, the final norm and the
  unembedding on ``cuda:0``, the residual stream moved between them by forward pre-hooks, as
  accelerate's dispatch (and TL's ``n_devices`` loop) do. Every decomposed hook, logit attribution,
  reverse-mode attribution and dataset row must equal the unsplit model's, float64, to 1e-9, and the
  decomposed activations of each block must lie on that block's device.

On a machine with CUDA: ``python -m pytest tests/test_devices.py`` (TL 3.x runs both model classes).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import depass_tl
from tests._tl_version import TL_VERSION, requires_bridge, requires_hooked
from tests.models import make_model

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(
    not CUDA, reason="needs a CUDA device: the split puts half the model on cpu and half on cuda:0"
)
RULES = ("softmax", "max", "ratio")
ATOL = 1e-9
#: Models whose own norms compute in float32 (HF Llama-family RMSNorm) round differently on CUDA and on
#: the CPU, so the split model's *clean* logits already differ from the unsplit ones (7.2e-7 on an H200,
#: float64 model); their decompositions are compared at this tolerance instead.
FLOAT32_NORM_ATOL = 2e-5


def _specs() -> dict[str, Any]:
    return {"tokens": depass_tl.tokens(), "heads": depass_tl.heads(), "sources": depass_tl.sources()}


def _tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, vocab, (2, 7), generator=torch.Generator().manual_seed(seed))


def _atol(split: Any, whole: Any) -> float:
    """:data:`ATOL`, or :data:`FLOAT32_NORM_ATOL` for a model with float32 norms split onto a CUDA device."""
    from tests.tl_cases import has_float32_norms

    on_cuda = any(p.device.type == "cuda" for p in split.parameters())
    return FLOAT32_NORM_ATOL if on_cuda and has_float32_norms(whole) else ATOL


def _assert_same(split: Any, whole: Any, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Every spec x rule: the split model's decomposition equals the unsplit model's."""
    atol = _atol(split, whole)
    for name, spec in _specs().items():
        for rule in RULES:
            kw = dict(components=spec, mlp_rule=rule, attention_mask=mask)
            logits_s, dc_s = depass_tl.run_with_depass(split, tokens, **kw)
            logits_w, dc_w = depass_tl.run_with_depass(whole, tokens, **kw)
            torch.testing.assert_close(logits_s.cpu(), logits_w, atol=atol, rtol=0)
            assert list(dc_s) == list(dc_w) and dc_s.labels == dc_w.labels
            for hook in dc_w:
                torch.testing.assert_close(dc_s[hook].cpu(), dc_w[hook], atol=atol, rtol=0, msg=f"{name} {rule} {hook}")
            answer = tokens[:, -1]
            torch.testing.assert_close(dc_s.logit_attrs(answer, incorrect_tokens=5).cpu(),
                                       dc_w.logit_attrs(answer, incorrect_tokens=5), atol=atol, rtol=0)
            err_s, err_w = dc_s.completeness_error(), dc_w.completeness_error()
            assert err_s == pytest.approx(err_w, abs=atol) and max(err_w.values()) < 1e-5  # HF norms: float32 inside


def _assert_placed(split: Any, n_layers: int) -> None:
    """The replay ran each block where its weights are: its stored outputs are on that device."""
    _, dc = depass_tl.run_with_depass(split, _tokens(split.cfg.d_vocab))
    half = n_layers // 2
    assert dc[f"blocks.{half - 1}.hook_resid_post"].device.type == "cpu"
    assert dc[f"blocks.{half}.hook_attn_out"].device.type == "cuda"
    assert dc["unembed.hook_in"].device.type == "cuda"


def _assert_other_entry_points(split: Any, whole: Any, tmp_path: Path) -> None:
    """Reverse mode (attribute) and run_dataset on the split model."""
    tokens = _tokens(split.cfg.d_vocab, seed=1)
    atol = _atol(split, whole)
    for spec in (depass_tl.tokens(), depass_tl.heads(layer=0)):
        a = depass_tl.attribute(split, tokens, target=7, components=spec, mode="reverse")
        b = depass_tl.attribute(whole, tokens, target=7, components=spec, mode="reverse")
        torch.testing.assert_close(a.values.cpu(), b.values, atol=atol, rtol=0)
    prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]  # padded in one batch
    for model, out in ((split, "s"), (whole, "w")):
        depass_tl.run_dataset(model, prompts, target=7, batch_size=3, out=tmp_path / out, progress=False)
    s, w = depass_tl.read_results(tmp_path / "s"), depass_tl.read_results(tmp_path / "w")
    for x, y in zip(s["attributions"], w["attributions"]):
        assert list(x) == pytest.approx(list(y), abs=atol)


def _move_inputs(device: torch.device) -> Any:
    """A forward pre-hook moving a module's tensor inputs to ``device`` (what accelerate's hooks do)."""

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    return hook


# ---------------------------------------------------------------------------------------- CPU
def test_n_devices_is_replayed_like_one_device() -> None:
    """``cfg.n_devices=2`` is no longer refused; on the CPU TL places every block there, same numbers."""
    whole = make_model("gpt2", n_layers=2).eval()
    split = copy.deepcopy(whole)
    split.cfg.n_devices = 2
    tokens = _tokens(whole.cfg.d_vocab)
    for rule in RULES:
        _, a = depass_tl.run_with_depass(split, tokens, mlp_rule=rule)
        _, b = depass_tl.run_with_depass(whole, tokens, mlp_rule=rule)
        for hook in b:
            assert torch.equal(a[hook], b[hook])


# ---------------------------------------------------------------------------------------- CUDA
@requires_cuda
@requires_hooked
def test_hooked_transformer_split_over_cpu_and_cuda(tmp_path: Path) -> None:
    """A HookedTransformer's blocks on two devices (TL's ``n_devices`` layout, one GPU + the CPU)."""
    whole = make_model("gpt2", n_layers=4, d_vocab=40).eval()
    split = copy.deepcopy(whole)
    gpu = torch.device("cuda:0")
    for module in [*split.blocks[2:], split.ln_final, split.unembed]:
        module.to(gpu)
        module.register_forward_pre_hook(_move_inputs(gpu), with_kwargs=True)
    split.cfg.n_devices = 2  # as TL records a split (its own placement needs two GPUs)
    _assert_placed(split, 4)
    tokens = _tokens(40)
    _assert_same(split, whole, tokens)
    mask = torch.ones_like(tokens)
    mask[0, 5:] = 0  # right padding
    _assert_same(split, whole, tokens, mask)
    _assert_other_entry_points(split, whole, tmp_path)


@requires_cuda
@requires_bridge
def test_bridge_split_over_cpu_and_cuda(tmp_path: Path) -> None:
    """A TransformerBridge over a Llama-family HF model dispatched by accelerate over ``cpu`` and ``cuda:0``."""
    import transformers
    from accelerate import dispatch_model

    from tests.bridge_models import boot_folder, local_folder

    folder = local_folder("llama", n_layers=4)
    whole = boot_folder(folder, dtype=torch.float64)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float64).eval()
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "cpu", "model.layers.2": 0, "model.layers.3": 0, "model.norm": 0, "lm_head": 0}
    dispatch_model(hf, device_map=device_map, main_device="cpu")  # main_device cpu: nothing is offloaded
    # TL refuses a *realized* map mixing cpu and cuda because from_pretrained offloads the cpu entries
    # (weights materialised per call); dispatched with main_device="cpu" the weights really live on both.
    del hf.hf_device_map
    from transformer_lens.model_bridge import TransformerBridge

    split = TransformerBridge.boot_transformers(str(folder), hf_model=hf, device="cpu", dtype=torch.float64)
    split.eval()
    split.cfg.n_devices = 2
    assert split.cfg.d_vocab == whole.cfg.d_vocab, TL_VERSION
    _assert_placed(split, 4)
    tokens = _tokens(whole.cfg.d_vocab)
    _assert_same(split, whole, tokens)
    _assert_other_entry_points(split, whole, tmp_path)
