"""Builders for the DecompX tests: small random HF BERT models, run through every backend the installed
TransformerLens offers.

The classifier fixtures (``clf32``, ``clf64``) are parametrised by backend: ``transformers`` (the HF
``BertForSequenceClassification`` itself; every TL version) and the installed TransformerLens's own BERT
class: ``HookedEncoder`` (the same weights converted offline) on TL < 4, a ``TransformerBridge`` (the same
encoder weights in a ``BertForMaskedLM`` folder, booted; the classifier head read from the HF state dict)
on TL 4, which removed HookedEncoder. Tests written against a fixture therefore run their real checks
through two backends on every TL version.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from tests._tl_version import HAS_BRIDGE, HAS_HOOKED, TL_VERSION

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

requires_hooked_encoder = pytest.mark.skipif(
    not HAS_HOOKED, reason=f"needs transformer_lens.HookedEncoder, which TL 4 removed (installed {TL_VERSION})"
)
requires_bridge = pytest.mark.skipif(
    not HAS_BRIDGE, reason=f"needs TransformerBridge (TL >= 3); installed TransformerLens {TL_VERSION}"
)
#: The installed TL's own BERT class: HookedEncoder (TL < 4) or, where TL removed it, the TransformerBridge.
TL_BACKEND = "HookedEncoder" if HAS_HOOKED else "TransformerBridge"
#: The backends a classifier test runs through: transformers' model and the installed TL's class.
BACKENDS = ["transformers", TL_BACKEND]
#: The backends of a masked-LM test.
MLM_BACKENDS = ["transformers"] + (["TransformerBridge"] if HAS_BRIDGE else []) + (["HookedEncoder"] if HAS_HOOKED else [])


@pytest.fixture(autouse=True)
def _quiet_tl_deprecations() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@dataclass
class Classifier:
    hf: Any  # transformers.BertForSequenceClassification (eval, eager attention)
    encoder: Any  # what run_decompx is called on: the HF model itself, or a HookedEncoder converted from it
    head: Any  # SequenceClassificationHead read from the HF state dict
    tokens: torch.Tensor  # [2, 7]
    token_type_ids: torch.Tensor  # two segments
    attention_mask: torch.Tensor  # row 1 padded from position 5
    backend: str = "transformers"


def random_bert(cls_name: str = "BertForSequenceClassification", *, dtype: torch.dtype = torch.float32,
                seed: int = 0, n_layers: int = 2, hidden_act: str = "gelu", **config: Any) -> Any:
    """A random transformers BERT re-initialised with a large std (peaked attention, curved GELU), eval mode."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import transformers

    cfg = transformers.BertConfig(
        **{
            "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": n_layers, "num_attention_heads": 4,
            "intermediate_size": 32, "max_position_embeddings": 16, "num_labels": 3, "hidden_act": hidden_act,
            "attn_implementation": "eager", **config,
        }
    )
    torch.manual_seed(seed)
    hf = getattr(transformers, cls_name)(cfg).eval().to(dtype)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.5)
    return hf


def tl_encoder(hf: Any, backend: str) -> Any:
    """A ``BertForSequenceClassification``'s encoder through ``backend``: the HF model itself, it converted to a
    HookedEncoder, or its encoder weights in a ``BertForMaskedLM`` booted as a TransformerBridge (the MLM head
    there is random and unused: the tests pass the classifier head)."""
    if backend == "transformers":
        return hf
    if backend == "HookedEncoder":
        from depass_tl.decompx import hooked_encoder_from_hf_bert

        return hooked_encoder_from_hf_bert(hf.state_dict(), hf.config, dtype=hf.dtype)
    import transformers

    from tests.bridge_models import boot_folder, save_hf_model

    torch.manual_seed(0)
    mlm = transformers.BertForMaskedLM(hf.config).eval().to(hf.dtype)
    _, unexpected = mlm.load_state_dict(hf.state_dict(), strict=False)
    assert sorted(unexpected) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                                  "classifier.weight"], unexpected  # every encoder weight went in
    return boot_folder(save_hf_model(mlm), dtype=hf.dtype)


def make_classifier(*, dtype: torch.dtype, seed: int = 0, n_layers: int = 2, backend: str = "transformers",
                    hidden_act: str = "gelu") -> Classifier:
    """Random BertForSequenceClassification, run as itself or through the installed TL (:func:`tl_encoder`)."""
    from depass_tl.decompx import SequenceClassificationHead

    hf = random_bert(dtype=dtype, seed=seed, n_layers=n_layers, hidden_act=hidden_act)
    encoder = tl_encoder(hf, backend)
    head = SequenceClassificationHead.from_hf_state_dict(hf.state_dict())
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, 50, (2, 7), generator=gen)
    token_type_ids = torch.zeros_like(tokens)
    token_type_ids[0, 4:] = 1
    token_type_ids[1, 3:5] = 1
    attention_mask = torch.ones_like(tokens)
    attention_mask[1, 5:] = 0
    return Classifier(hf, encoder, head, tokens, token_type_ids, attention_mask, backend)


@pytest.fixture(scope="module", params=BACKENDS)
def clf32(request: pytest.FixtureRequest) -> Classifier:
    return make_classifier(dtype=torch.float32, backend=request.param)


@pytest.fixture(scope="module", params=BACKENDS)
def clf64(request: pytest.FixtureRequest) -> Classifier:
    return make_classifier(dtype=torch.float64, backend=request.param)


@pytest.fixture(scope="module", params=[
    pytest.param((dtype, backend), id=f"{str(dtype)[6:]}-{backend}")
    for dtype in (torch.float32, torch.float64) for backend in BACKENDS
])
def clf(request: pytest.FixtureRequest) -> Classifier:
    """Both dtypes through every backend (``clf.hf.dtype`` tells the dtype)."""
    dtype, backend = request.param
    return make_classifier(dtype=dtype, backend=backend)


@pytest.fixture(scope="module")
def hf64() -> Classifier:
    """The float64 classifier through transformers only (for tests about the HF model itself)."""
    return make_classifier(dtype=torch.float64)


def random_encoder(*, dtype: torch.dtype, seed: int = 0) -> Any:
    """A HookedEncoder built from a config with every parameter drawn at random (MLM head included)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from transformer_lens import HookedEncoder, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        d_model=12,
        d_head=4,
        n_heads=3,
        d_mlp=24,
        n_layers=2,
        n_ctx=10,
        d_vocab=30,
        act_fn="gelu",
        attention_dir="bidirectional",
        dtype=dtype,
        device="cpu",
    )
    torch.manual_seed(seed)
    enc = HookedEncoder(cfg, move_to_device=False)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("ln.w") or name.endswith("ln1.w") or name.endswith("ln2.w"):
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.5)
    return enc.eval()


@pytest.fixture(scope="module")
def build_classifier() -> Any:
    """The :func:`make_classifier` builder, for tests that need other seeds or dtypes."""
    return make_classifier


@pytest.fixture(scope="module")
def build_random_encoder() -> Any:
    """The :func:`random_encoder` builder."""
    return random_encoder
