"""``HookedEncoder`` (BERT, TL 2.x / 3.x): decomposed by DecompX, not by the decoder replay.

:func:`depass_tl.run_with_depass` on a ``HookedEncoder`` runs :func:`depass_tl.decompx.run_decompx`,
which reads the encoder through :func:`read_hooked_encoder` (an
:class:`~depass_tl.backends.base.EncoderSource`: weights, and the TL hook points whose clean values
it captures). TransformerLens 4 removed ``HookedEncoder``; there, BERT goes through transformers'
model classes or a ``TransformerBridge`` (:mod:`~depass_tl.backends.hf_bert`,
:mod:`~depass_tl.backends.bert_bridge`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from depass_tl.backends.base import Backend, EncoderSource, HookSite, class_named, encoder_site_names
from depass_tl.errors import UnsupportedModelError
from depass_tl.model_view import AttnView, EncoderLayerView, EncoderView, MLMHeadView, MLPView, NormView

__all__ = ["BACKEND", "SUPPORTED_ACTS", "is_hooked_encoder", "read_hooked_encoder"]

SUPPORTED_ACTS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu")
"""FFN activations DecompX runs on: ``act(0) = 0``, so the frozen slope ``act(x) / x`` loses nothing."""


def is_hooked_encoder(model: Any) -> bool:
    """True for a ``transformer_lens.HookedEncoder`` (or subclass), matched by class name (no TL import)."""
    return class_named(model, "HookedEncoder")


def _layer(block: Any) -> EncoderLayerView:
    attn, mlp = block.attn, block.mlp
    n_heads = attn.W_O.shape[0]
    return EncoderLayerView(
        attn=AttnView(attn.W_V.detach(), attn.b_V.detach(), attn.W_O.detach(), attn.b_O.detach(),
                      torch.arange(n_heads, device=attn.W_O.device)),
        ln1=NormView("LN", block.ln1.w.detach(), block.ln1.b.detach()),
        mlp=MLPView("standard", mlp.W_in.detach(), mlp.b_in.detach(), None, mlp.W_out.detach(), mlp.b_out.detach()),
        ln2=NormView("LN", block.ln2.w.detach(), block.ln2.b.detach()),
    )


def read_hooked_encoder(model: Any) -> EncoderSource:
    """Read a ``HookedEncoder``'s weights and hook points (nothing copied, nothing modified).

    Its classification head is not part of the model (TL has none): pass a
    :class:`~depass_tl.decompx.SequenceClassificationHead`. The MLM head and the unembedding are read.

    Raises:
        UnsupportedModelError: an activation with ``act(0) != 0``, a gated or mixture-of-experts MLP.
    """
    cfg = model.cfg
    if cfg.act_fn not in SUPPORTED_ACTS:
        raise UnsupportedModelError(
            f"cfg.act_fn={cfg.act_fn!r} is not supported (the GELU ratio needs f(0) = 0); "
            f"supported: {list(SUPPORTED_ACTS)}"
        )
    if getattr(cfg, "gated_mlp", False) or getattr(cfg, "num_experts", None):
        raise UnsupportedModelError("gated or mixture-of-experts MLPs are not supported in HookedEncoder replay")
    mlm = getattr(model, "mlm_head", None)
    unembed = getattr(model, "unembed", None)
    mlm_view = None
    if mlm is not None and unembed is not None:
        act = getattr(mlm, "act_fn", None)
        exact_gelu = isinstance(act, torch.nn.GELU) and act.approximate == "none"
        mlm_view = MLMHeadView(
            W=mlm.W.detach(), b=mlm.b.detach(), act_fn="gelu" if exact_gelu else repr(act),
            ln=NormView("LN", mlm.ln.w.detach(), mlm.ln.b.detach()), eps=float(mlm.ln.eps),
            W_U=unembed.W_U.detach(), b_U=unembed.b_U.detach(),
        )
    W_E = model.embed.embed.W_E
    view = EncoderView(
        layers=tuple(_layer(block) for block in model.blocks),
        act=model.blocks[0].mlp.act_fn,
        act_fn=str(cfg.act_fn),
        eps=float(cfg.eps),
        d_model=int(cfg.d_model),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        n_token_types=2,  # TL's TokenTypeEmbed has two rows
        dtype=W_E.dtype,
        device=W_E.device,
        mlm=mlm_view,
        backend="HookedEncoder",
    )
    sites = {name: HookSite(model.hook_dict[name]) for name in encoder_site_names(int(cfg.n_layers))}

    def forward(tokens: Tensor, token_type_ids: Tensor | None, mask: Tensor | None, with_head: bool) -> Tensor | None:
        if with_head:
            return model(tokens, return_type="logits", token_type_ids=token_type_ids, one_zero_attention_mask=mask)
        model.encoder_output(tokens, token_type_ids, mask)
        return None

    return EncoderSource(view=view, sites=sites, forward=forward)


BACKEND = Backend(
    name="HookedEncoder",
    matches=is_hooked_encoder,
    read_view=None,
    method="decompx",
    classes=(("transformer_lens", "HookedEncoder"),),
    priority=10,
    read_encoder=read_hooked_encoder,
)
