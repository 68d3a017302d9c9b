"""Build a TransformerLens ``HookedEncoder`` from a Hugging Face BERT state dict, offline.

``HookedEncoder.from_pretrained`` needs the Hugging Face hub, and TransformerLens's own
``convert_bert_weights`` wants a ``BertForPreTraining`` module (it reads ``cls.predictions``,
which a ``BertForSequenceClassification`` does not have). This module maps the ``bert.*`` keys of
a sequence-classification state dict onto the ``HookedEncoder`` parameter names itself. The MLM,
NSP and unembedding parameters, which such a checkpoint does not have, are set to zero so that
nothing is left uninitialised; use the pooler/classifier through
:class:`~depass_tl.decompx.heads.SequenceClassificationHead`.

TransformerLens < 4 only (TL 4 removed ``HookedEncoder``). DecompX does not need the conversion: the
transformers model itself goes to :func:`depass_tl.run_with_depass` on every TL version, with the same
numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import einops
import torch
from torch import Tensor

from depass_tl.decompx._compat import hooked_encoder_class
from depass_tl.errors import DePassError, UnsupportedModelError

if TYPE_CHECKING:
    from transformer_lens import HookedEncoder

__all__ = ["hooked_encoder_from_hf_bert"]

_SUPPORTED_ACTS = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu"}


def _config_value(hf_config: Any, name: str) -> Any:
    if isinstance(hf_config, Mapping):
        if name not in hf_config:
            raise DePassError(f"hf_config has no field {name!r}; pass a transformers.BertConfig or its to_dict()")
        return hf_config[name]
    if not hasattr(hf_config, name):
        raise DePassError(f"hf_config has no field {name!r}; pass a transformers.BertConfig or its to_dict()")
    return getattr(hf_config, name)


def _get(state_dict: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state_dict:
        raise DePassError(
            f"state dict has no key {key!r}; expected the state dict of a transformers "
            "BertForSequenceClassification (keys 'bert.embeddings.*', 'bert.encoder.layer.*', ...)"
        )
    return state_dict[key].detach()


def hooked_encoder_from_hf_bert(
    state_dict: Mapping[str, Tensor],
    hf_config: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> HookedEncoder:
    """Convert the ``bert.*`` weights of a BERT checkpoint into a ``HookedEncoder``, without the hub.

    Args:
        state_dict: ``model.state_dict()`` of a ``BertForSequenceClassification``, ``BertForMaskedLM``
            (or any model whose encoder keys start with ``bert.``).
        hf_config: the matching ``transformers.BertConfig`` (or its ``to_dict()``).
        dtype: dtype of the returned encoder.
        device: device of the returned encoder.

    Returns:
        A ``HookedEncoder`` in eval mode whose ``encoder_output`` equals the HF encoder's last
        hidden state. Its MLM head and unembedding come from ``cls.predictions.*`` and its NSP head
        from ``cls.seq_relationship.*`` where the checkpoint has them (``BertForMaskedLM``,
        ``BertForPreTraining``); else they are zero, and :meth:`MLMHead.from_encoder` refuses them.

    Raises:
        DePassError: a key is missing or the config uses something ``HookedEncoder`` cannot run
            (non-absolute position embeddings, more than 2 token types, an unknown activation).

    Examples:
        >>> import os; os.environ["HF_HUB_OFFLINE"] = "1"
        >>> import warnings; warnings.filterwarnings("ignore", category=DeprecationWarning)
        >>> import transformers
        >>> cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
        ...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)
        >>> hf = transformers.BertForSequenceClassification(cfg).eval()
        >>> enc = hooked_encoder_from_hf_bert(hf.state_dict(), cfg)
        >>> enc.cfg.n_layers, enc.cfg.d_model
        (1, 8)
    """
    HookedEncoder = hooked_encoder_class()  # raises on TransformerLens 4
    from transformer_lens import HookedTransformerConfig

    act = _config_value(hf_config, "hidden_act")
    if act not in _SUPPORTED_ACTS:
        raise UnsupportedModelError(
            f"hidden_act={act!r} is not supported; supported: {sorted(_SUPPORTED_ACTS)}"
        )
    pos_type = (
        hf_config.get("position_embedding_type", "absolute")
        if isinstance(hf_config, Mapping)
        else getattr(hf_config, "position_embedding_type", "absolute")
    )
    if pos_type not in (None, "absolute"):
        raise UnsupportedModelError(
            f"position_embedding_type={pos_type!r}: HookedEncoder only has absolute position embeddings"
        )
    n_types = _config_value(hf_config, "type_vocab_size")
    if n_types != 2:
        raise UnsupportedModelError(
            f"type_vocab_size={n_types}: HookedEncoder hard-codes 2 token types"
        )

    d_model = int(_config_value(hf_config, "hidden_size"))
    n_heads = int(_config_value(hf_config, "num_attention_heads"))
    d_vocab = int(_config_value(hf_config, "vocab_size"))
    n_layers = int(_config_value(hf_config, "num_hidden_layers"))
    cfg = HookedTransformerConfig(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=int(_config_value(hf_config, "intermediate_size")),
        n_layers=n_layers,
        n_ctx=int(_config_value(hf_config, "max_position_embeddings")),
        eps=float(_config_value(hf_config, "layer_norm_eps")),
        d_vocab=d_vocab,
        act_fn=_SUPPORTED_ACTS[act],
        attention_dir="bidirectional",
        dtype=dtype,
        device=str(device),
        tokenizer_name=None,
    )

    emb = "bert.embeddings."
    sd: dict[str, Tensor] = {
        "embed.embed.W_E": _get(state_dict, emb + "word_embeddings.weight"),
        "embed.pos_embed.W_pos": _get(state_dict, emb + "position_embeddings.weight"),
        "embed.token_type_embed.W_token_type": _get(state_dict, emb + "token_type_embeddings.weight"),
        "embed.ln.w": _get(state_dict, emb + "LayerNorm.weight"),
        "embed.ln.b": _get(state_dict, emb + "LayerNorm.bias"),
    }
    for layer in range(n_layers):
        p = f"bert.encoder.layer.{layer}."
        t = f"blocks.{layer}."
        for name, hf_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            weight = _get(state_dict, p + f"attention.self.{hf_name}.weight")  # [(head d_head), d_model]
            bias = _get(state_dict, p + f"attention.self.{hf_name}.bias")
            sd[t + f"attn.W_{name}"] = einops.rearrange(
                weight, "(head d_head) d_model -> head d_model d_head", head=n_heads
            )
            sd[t + f"attn.b_{name}"] = einops.rearrange(bias, "(head d_head) -> head d_head", head=n_heads)
        sd[t + "attn.W_O"] = einops.rearrange(
            _get(state_dict, p + "attention.output.dense.weight"),
            "d_model (head d_head) -> head d_head d_model",
            head=n_heads,
        )
        sd[t + "attn.b_O"] = _get(state_dict, p + "attention.output.dense.bias")
        sd[t + "ln1.w"] = _get(state_dict, p + "attention.output.LayerNorm.weight")
        sd[t + "ln1.b"] = _get(state_dict, p + "attention.output.LayerNorm.bias")
        sd[t + "mlp.W_in"] = _get(state_dict, p + "intermediate.dense.weight").T  # [d_model, d_mlp]
        sd[t + "mlp.b_in"] = _get(state_dict, p + "intermediate.dense.bias")
        sd[t + "mlp.W_out"] = _get(state_dict, p + "output.dense.weight").T  # [d_mlp, d_model]
        sd[t + "mlp.b_out"] = _get(state_dict, p + "output.dense.bias")
        sd[t + "ln2.w"] = _get(state_dict, p + "output.LayerNorm.weight")
        sd[t + "ln2.b"] = _get(state_dict, p + "output.LayerNorm.bias")
    if "bert.pooler.dense.weight" in state_dict:
        sd["pooler.W"] = _get(state_dict, "bert.pooler.dense.weight").T
        sd["pooler.b"] = _get(state_dict, "bert.pooler.dense.bias")
    mlm = "cls.predictions."
    if mlm + "transform.dense.weight" in state_dict:  # BertForMaskedLM / BertForPreTraining: the MLM head
        sd["mlm_head.W"] = _get(state_dict, mlm + "transform.dense.weight").T
        sd["mlm_head.b"] = _get(state_dict, mlm + "transform.dense.bias")
        sd["mlm_head.ln.w"] = _get(state_dict, mlm + "transform.LayerNorm.weight")
        sd["mlm_head.ln.b"] = _get(state_dict, mlm + "transform.LayerNorm.bias")
        # [d_model, d_vocab]; BERT ties it to the word embeddings, and save_pretrained drops the tied copy
        decoder = state_dict.get(mlm + "decoder.weight")
        sd["unembed.W_U"] = (sd["embed.embed.W_E"] if decoder is None else decoder).T
        bias = state_dict.get(mlm + "decoder.bias")
        sd["unembed.b_U"] = _get(state_dict, mlm + "bias") if bias is None else bias
    if "cls.seq_relationship.weight" in state_dict:  # BertForPreTraining: the next-sentence head
        sd["nsp_head.W"] = _get(state_dict, "cls.seq_relationship.weight").T
        sd["nsp_head.b"] = _get(state_dict, "cls.seq_relationship.bias")

    encoder = HookedEncoder(cfg, move_to_device=False)
    if torch.device(device).type != "cpu":
        encoder = encoder.to(device)
    own = encoder.state_dict()
    for key, value in own.items():
        if key not in sd:  # MLM / NSP / unembed (and pooler if absent): zero, never uninitialised
            sd[key] = torch.zeros_like(value)
        elif sd[key].shape != value.shape:
            raise DePassError(
                f"weight {key!r} has shape {tuple(sd[key].shape)} but the config implies "
                f"{tuple(value.shape)}; does hf_config match the state dict?"
            )
    encoder.load_state_dict({k: v.to(dtype) for k, v in sd.items() if k in own}, strict=True)
    return encoder.eval()
