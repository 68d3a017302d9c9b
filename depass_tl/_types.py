"""Shape aliases and the dimension vocabulary (TransformerLens's names plus ``component``)."""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["CompResid", "CompHidden", "Tokens", "Resid", "Pattern", "Scale"]

CompResid = Float[Tensor, "component batch pos d_model"]
CompHidden = Float[Tensor, "component batch pos d_mlp"]
Resid = Float[Tensor, "batch pos d_model"]
Pattern = Float[Tensor, "batch head_index query_pos key_pos"]
Scale = Float[Tensor, "batch pos 1"]
Tokens = Int[Tensor, "batch pos"]
