"""Sources: every embedding, head, MLP and the bias as components, credited where they are written."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from depass_tl.coefficients import FrozenRun
from depass_tl.components.base import BIAS, ComponentSpec
from depass_tl.components.custom_spec import check_complete
from depass_tl.replay.state import Group, InitialState, SourcesPlan

__all__ = ["SourcesSpec", "sources"]


@dataclass(frozen=True)
class SourcesSpec(ComponentSpec):
    """``embed``, ``pos_embed``, every ``L{l}H{h}``, every ``L{l}.mlp`` and ``bias``."""

    def init(self, run: FrozenRun, dtype: torch.dtype) -> InitialState:
        view = run.view
        B = run.batch
        resid = run.get("blocks.0.hook_resid_pre").to(dtype)
        rows = [run.get("hook_embed").to(dtype).expand_as(resid)]
        labels = ["embed"]
        if view.has_pos_embed_in_resid and "hook_pos_embed" in run.acts:
            rows.append(run.get("hook_pos_embed").to(dtype).expand(B, -1, -1))
            labels.append("pos_embed")
        n_src = len(rows)
        head_rows, mlp_rows = [], []
        for l, block in enumerate(view.blocks):
            n_heads = block.attn.W_O.shape[0]
            head_rows.append(tuple(range(len(labels), len(labels) + n_heads)))
            labels += [f"L{l}H{h}" for h in range(n_heads)]
            if block.mlp is None:
                mlp_rows.append(None)
            else:
                mlp_rows.append(len(labels))
                labels.append(f"L{l}.mlp")
        labels.append(BIAS)
        x = torch.zeros((len(labels),) + tuple(resid.shape), dtype=dtype, device=resid.device)
        x[:n_src] = torch.stack(rows)
        check_complete(x, resid, "blocks.0.hook_resid_pre", 1e-4, "hook_embed + hook_pos_embed",
                       model_dtype=run.view.dtype, edited=[h for h in run.edited_hooks if h == "blocks.0.hook_resid_pre"])
        plan = SourcesPlan(tuple(range(n_src)) + (len(labels) - 1,), tuple(head_rows), tuple(mlp_rows))
        return InitialState((Group("blocks.0.hook_resid_pre", x, tuple(labels)),), plan)


def sources() -> SourcesSpec:
    """Every embedding, head, MLP layer and the bias as components, each credited where it is written.

    ``embed`` and ``pos_embed`` start as the embeddings; every ``L{l}H{h}`` and ``L{l}.mlp`` starts at
    zero and, when the replay reaches its layer, receives what that module writes from the embeddings
    and constants (what no earlier head or MLP owns); from then on it flows through every later layer
    like any component, so its logit attribution includes its indirect effect. What a module writes
    by reading an earlier module's output stays with that earlier module. Equivalently: every path
    from the input to the logits is credited to the first head or MLP on it, or to ``embed`` /
    ``pos_embed`` / ``bias`` when it passes through none. Output biases (``b_O``, ``b_out``) and
    ``b_U`` go to ``bias``. The components sum exactly to every activation and logit.

    Examples:
        >>> import torch, depass_tl
        >>> from depass_tl.toy import random_model
        >>> cfg = dict(n_layers=2, d_model=8, n_ctx=8, d_head=4, n_heads=2,
        ...            d_mlp=16, d_vocab=20, act_fn="gelu", seed=0)
        >>> _, dc = depass_tl.run_with_depass(random_model(**cfg), torch.tensor([[1, 2, 3]]),
        ...                                   components=depass_tl.sources())
        >>> dc.labels
        ('embed', 'pos_embed', 'L0H0', 'L0H1', 'L0.mlp', 'L1H0', 'L1H1', 'L1.mlp', 'bias')
    """
    return SourcesSpec()
