"""transformers' BERT (``BertForSequenceClassification``, ``BertForMaskedLM``): decomposed by DecompX.

The way to run DecompX on TransformerLens 4, which has no ``HookedEncoder`` (and whose BERT
``TransformerBridge`` adapter has no classification head): pass the Hugging Face model itself to
:func:`depass_tl.run_with_depass`. :func:`read_hf_bert` reads its weights into an
:class:`~depass_tl.model_view.EncoderView` (HF ``Linear`` weights are ``[out, in]``; the view holds
them transposed, TL style) and names the modules whose inputs or outputs the capture reads, under the
``HookedEncoder`` hook names (:func:`~depass_tl.backends.base.encoder_site_names`), so results are
keyed the same way on every TL version. No TransformerLens import is needed.

Refused with :class:`~depass_tl.errors.UnsupportedModelError`: other model types (RoBERTa, ...),
other BERT heads, non-absolute position embeddings, decoders / cross-attention, an activation with
``act(0) != 0``, a model in training mode (dropout), and an attention implementation other than
``"eager"`` (``sdpa`` never forms the attention probabilities DecompX freezes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from depass_tl.backends.base import Backend, EncoderSource, HookSite, class_named, encoder_site_names
from depass_tl.errors import UnsupportedModelError
from depass_tl.model_view import AttnView, EncoderLayerView, EncoderView, MLMHeadView, MLPView, NormView

__all__ = ["BACKEND", "HEADS", "SUPPORTED_ACTS", "is_hf_model", "read_hf_bert"]

HEADS = ("BertForSequenceClassification", "BertForMaskedLM")
"""The transformers classes DecompX reads (by class name, subclasses included)."""

SUPPORTED_ACTS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu")
"""``config.hidden_act`` values DecompX runs on (``act(0) = 0``)."""


def is_hf_model(model: Any) -> bool:
    """True for any transformers ``PreTrainedModel`` (matched by class name, nothing imported).

    Every transformers model reaches this backend, so that a RoBERTa or a GPT-2 gets a message saying
    what to do instead of "not a HookedTransformer".
    """
    return class_named(model, "PreTrainedModel")


def _weight(module: Any) -> tuple[Tensor, Tensor | None]:
    """``(W [in, out], b)`` of a ``Linear`` (or a TransformerBridge wrapping one)."""
    bias = getattr(module, "bias", None)
    return module.weight.detach().T, None if bias is None else bias.detach()


def _norm(module: Any) -> NormView:
    return NormView("LN", module.weight.detach(), module.bias.detach())


def _check(model: Any) -> str:
    """The head kind (``"classification"`` / ``"mlm"``), or raise saying what is not supported."""
    config = model.config
    name = type(model).__name__
    model_type = getattr(config, "model_type", None)
    if model_type != "bert" or not class_named(model, "BertPreTrainedModel"):
        hint = (
            " For a decoder, wrap it: TransformerBridge.boot_transformers(...) (TL >= 3) or "
            "HookedTransformer.from_pretrained(...) (TL < 4), then call depass_tl.run_with_depass on that."
            if getattr(config, "is_decoder", False) or "CausalLM" in name or "LMHead" in name
            else ""
        )
        raise UnsupportedModelError(
            f"DecompX reads BERT models ({', '.join(HEADS)}); got {name} (model_type={model_type!r}).{hint}"
        )
    kind = "classification" if class_named(model, HEADS[0]) else "mlm" if class_named(model, HEADS[1]) else None
    if kind is None:
        raise UnsupportedModelError(
            f"{name} is not supported: DecompX reads {' and '.join(HEADS)} (the classification head "
            "is carried through the pooler and classifier, the MLM head through its transform)."
        )
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        raise UnsupportedModelError(
            f"config.position_embedding_type={config.position_embedding_type!r}: DecompX needs absolute "
            "position embeddings (relative ones enter the attention scores, not the residual stream)."
        )
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise UnsupportedModelError("a BERT decoder (is_decoder / add_cross_attention) is not supported; use an encoder.")
    if not isinstance(config.hidden_act, str) or config.hidden_act not in SUPPORTED_ACTS:
        raise UnsupportedModelError(
            f"config.hidden_act={config.hidden_act!r} is not supported (the frozen slope act(x)/x needs "
            f"act(0) = 0); supported: {list(SUPPORTED_ACTS)}"
        )
    impl = getattr(config, "_attn_implementation", "eager")
    if impl not in (None, "eager"):
        raise UnsupportedModelError(
            f"the model runs attention with {impl!r}, which never forms the attention probabilities that "
            "DecompX freezes. Load it with attn_implementation=\"eager\" (from_pretrained(..., "
            "attn_implementation=\"eager\")) or call model.set_attn_implementation(\"eager\") first."
        )
    if model.training:
        raise UnsupportedModelError(
            f"the {name} is in training mode (dropout is active); call model.eval() first."
        )
    return kind


def _layer(layer: Any, n_heads: int) -> EncoderLayerView:
    attn = layer.attention
    W_V, b_V = _weight(attn.self.value)  # [d_model, (head d_head)]
    W_O, b_O = _weight(attn.output.dense)  # [(head d_head), d_model]
    d_model = W_V.shape[0]
    d_head = W_V.shape[1] // n_heads
    assert b_V is not None and b_O is not None  # internal: BERT's linear layers have biases
    W_in, b_in = _weight(layer.intermediate.dense)
    W_out, b_out = _weight(layer.output.dense)
    return EncoderLayerView(
        attn=AttnView(
            W_V.reshape(d_model, n_heads, d_head).permute(1, 0, 2), b_V.reshape(n_heads, d_head),
            W_O.reshape(n_heads, d_head, d_model), b_O, torch.arange(n_heads, device=W_O.device),
        ),
        ln1=_norm(attn.output.LayerNorm),
        mlp=MLPView("standard", W_in, b_in, None, W_out, b_out),
        ln2=_norm(layer.output.LayerNorm),
    )


def _sites(bert: Any) -> dict[str, HookSite]:
    sites = {"hook_full_embed": HookSite(bert.embeddings)}
    for l, layer in enumerate(bert.encoder.layer):
        p = f"blocks.{l}."
        sites[p + "attn.hook_pattern"] = HookSite(layer.attention.self, "output", 1)  # (context, probabilities)
        sites[p + "hook_attn_out"] = HookSite(layer.attention.output.dense)
        sites[p + "hook_resid_mid"] = HookSite(layer.attention.output.LayerNorm, "input", 0)
        sites[p + "mlp.hook_pre"] = HookSite(layer.intermediate.dense)
        sites[p + "mlp.hook_post"] = HookSite(layer.intermediate)
        sites[p + "hook_mlp_out"] = HookSite(layer.output.dense)
        sites[p + "hook_resid_post"] = HookSite(layer.output.LayerNorm, "input", 0)
        sites[p + "hook_normalized_resid_post"] = HookSite(layer.output.LayerNorm)
    assert set(sites) == set(encoder_site_names(len(bert.encoder.layer)))  # internal: the capture's contract
    return sites


def read_hf_bert(model: Any, *, backend: str = "transformers") -> EncoderSource:
    """Read a transformers ``BertForSequenceClassification`` / ``BertForMaskedLM`` (nothing copied or modified).

    Args:
        model: the HF model, in eval mode, with ``attn_implementation="eager"``.
        backend: recorded as :attr:`~depass_tl.model_view.EncoderView.backend`.

    Raises:
        UnsupportedModelError: see the module docstring.
    """
    kind = _check(model)
    config = model.config
    bert = model.bert
    n_heads = int(config.num_attention_heads)
    pooler = classifier = mlm = None
    if kind == "classification":
        if bert.pooler is None:
            raise UnsupportedModelError("this BertForSequenceClassification has no pooler; DecompX reads the pooled [CLS].")
        W_pool, b_pool = _weight(bert.pooler.dense)
        W_cls, b_cls = _weight(model.classifier)
        assert b_pool is not None and b_cls is not None  # internal: nn.Linear with bias
        pooler, classifier = (W_pool, b_pool), (W_cls, b_cls)
    else:
        pred = model.cls.predictions
        W, b = _weight(pred.transform.dense)
        W_U, b_U = _weight(pred.decoder)
        assert b is not None  # internal
        mlm = MLMHeadView(
            W=W, b=b, act_fn=str(config.hidden_act), ln=_norm(pred.transform.LayerNorm),
            eps=float(pred.transform.LayerNorm.eps), W_U=W_U, b_U=b_U,
        )
    W_E = bert.embeddings.word_embeddings.weight
    view = EncoderView(
        layers=tuple(_layer(layer, n_heads) for layer in bert.encoder.layer),
        act=bert.encoder.layer[0].intermediate.intermediate_act_fn,
        act_fn=str(config.hidden_act),
        eps=float(config.layer_norm_eps),
        d_model=int(config.hidden_size),
        d_vocab=int(config.vocab_size),
        n_ctx=int(config.max_position_embeddings),
        n_token_types=int(config.type_vocab_size),
        dtype=W_E.dtype,
        device=W_E.device,
        pooler=pooler,
        classifier=classifier,
        mlm=mlm,
        backend=backend,
    )

    def forward(tokens: Tensor, token_type_ids: Tensor | None, mask: Tensor | None, with_head: bool) -> Tensor | None:
        out = model(input_ids=tokens, token_type_ids=token_type_ids, attention_mask=mask, return_dict=True)
        return out.logits if with_head else None

    return EncoderSource(view=view, sites=_sites(bert), forward=forward)


BACKEND = Backend(
    name="transformers",
    matches=is_hf_model,
    read_view=None,
    method="decompx",
    priority=5,
    read_encoder=read_hf_bert,
)
