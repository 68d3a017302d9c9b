"""Builders for the DecompX tests: small random HF BERT classifiers converted offline."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _quiet_tl_deprecations() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@dataclass
class Classifier:
    hf: Any  # transformers.BertForSequenceClassification (eval)
    encoder: Any  # HookedEncoder
    head: Any  # SequenceClassificationHead
    tokens: torch.Tensor  # [2, 7]
    token_type_ids: torch.Tensor  # two segments
    attention_mask: torch.Tensor  # row 1 padded from position 5


def make_classifier(*, dtype: torch.dtype, seed: int = 0, n_layers: int = 2) -> Classifier:
    """Random BertForSequenceClassification re-initialised with a large std, converted offline."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import transformers

    from depass_tl.decompx import SequenceClassificationHead, hooked_encoder_from_hf_bert

    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    hf = transformers.BertForSequenceClassification(cfg).eval().to(dtype)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.5)  # large enough for peaked attention and curved GELU
    encoder = hooked_encoder_from_hf_bert(hf.state_dict(), cfg, dtype=dtype)
    head = SequenceClassificationHead.from_hf_state_dict(hf.state_dict())
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, 50, (2, 7), generator=gen)
    token_type_ids = torch.zeros_like(tokens)
    token_type_ids[0, 4:] = 1
    token_type_ids[1, 3:5] = 1
    attention_mask = torch.ones_like(tokens)
    attention_mask[1, 5:] = 0
    return Classifier(hf, encoder, head, tokens, token_type_ids, attention_mask)


@pytest.fixture(scope="module")
def clf32() -> Classifier:
    return make_classifier(dtype=torch.float32)


@pytest.fixture(scope="module")
def clf64() -> Classifier:
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
