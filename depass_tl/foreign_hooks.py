"""Hooks the user attached before calling depass_tl: which edits a replay follows exactly, which it refuses.

:func:`depass_tl.capture` records, for every hook point that held a hook of the user's, whether the
hook changed the activation passing through it (``FrozenRun.edited_hooks``). Read-only hooks
(caching, printing) change nothing and are always fine. An edit is replayed exactly when

* it changes a **frozen coefficient**: the replay reads the edited value from the clean run instead
  of recomputing it (:data:`FROZEN`: attention scores and patterns, queries and keys, norm scales,
  and ``mlp.hook_post`` where the MLP rule splits the captured activation), or
* it happens **at or before the start** of the components (e.g. any edit in layer 0 when the
  components start at ``blocks.1.hook_resid_pre``): the edited activation is part of the starting
  state.

Any other edit changes an activation the replay recomputes from the components (the residual stream,
values, ``hook_z``, ``hook_attn_out``, ``hook_mlp_out``, ``mlp.hook_pre``, the logits ...), so the
components could not sum to the hooked model's output: :func:`check_edits` refuses it by hook name
with the fixes (docs/reliability.md has the table). The completeness guard (:mod:`depass_tl.guard`)
checks every replay afterwards in any case.

Examples:
    >>> hook_position("blocks.2.hook_mlp_out"), hook_position("blocks.2.hook_resid_post"), hook_position("blocks.3.hook_resid_pre")
    (22, 24, 25)
    >>> is_frozen("blocks.0.attn.hook_pattern"), is_frozen("blocks.0.hook_mlp_out")
    (True, False)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from depass_tl.errors import ForeignHookError
from depass_tl.model_view import MLPView, ModelView
from depass_tl.replay.rules import MLPRule

__all__ = ["FROZEN", "is_frozen", "hook_position", "start_position", "check_edits"]

#: Hook names (after ``blocks.{l}.``, or whole for top-level hooks) whose edits only change a frozen
#: coefficient: the replay reads their captured value.
FROZEN = (
    "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_q", "attn.hook_k", "attn.hook_rot_q",
    "attn.hook_rot_k", "hook_q_input", "hook_k_input", "attn.hook_q_input", "attn.hook_k_input",
    "ln1.hook_scale", "ln2.hook_scale", "ln1_post.hook_scale", "ln2_post.hook_scale", "mlp.ln.hook_scale",
    "ln_final.hook_scale",
)
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_START = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")
_EMBEDDING = ("hook_embed", "hook_pos_embed", "hook_tokens", "embed.", "pos_embed.", "rotary_emb.")
_AT_ATTN = ("ln1.", "ln1_post.", "attn.", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input",
            "hook_attn_out")
_AT_MLP = ("ln2.", "ln2_post.", "mlp.", "hook_mlp_in", "hook_mlp_out")


def _post_is_frozen(layer: int, view: ModelView | None, rule: MLPRule | None) -> bool:
    """``mlp.hook_post`` is frozen where the rule splits the captured activation itself: a dense MLP
    without an inner norm, under a competitive rule, or the plain ratio slope ``post / pre``."""
    if view is None or rule is None or not 0 <= layer < view.n_layers:
        return False
    mlp = view.blocks[layer].mlp
    if not isinstance(mlp, MLPView) or mlp.ln is not None:
        return False
    return not rule.linear or (mlp.kind == "standard" and not mlp.solu)


def is_frozen(name: str, view: ModelView | None = None, rule: MLPRule | None = None) -> bool:
    """Whether an edit at hook ``name`` only changes a frozen coefficient (replayed exactly anywhere).

    ``blocks.{l}.mlp.hook_post`` needs the model's ``view`` and the MLP ``rule`` (see the module docstring).
    """
    m = _BLOCK.match(name)
    rest = name if m is None else m.group(2)
    if rest in FROZEN:
        return True
    return m is not None and rest == "mlp.hook_post" and _post_is_frozen(int(m.group(1)), view, rule)


def hook_position(name: str) -> int | None:
    """Where a hook sits in the forward pass: ``8l + 1`` (``blocks.l.hook_resid_pre``), ``8l + 2`` (layer l's
    attention), ``8l + 4`` (``hook_resid_mid``), ``8l + 6`` (its MLP), ``8l + 8`` (``hook_resid_post``);
    ``-1`` for the embeddings; None for hooks after the last block or of unknown place. Layer l + 1's
    ``hook_resid_pre`` (``8l + 9``) comes after layer l's ``hook_resid_post``: it is a hook point of its own,
    applied to the tensor ``hook_resid_post`` recorded, so an edit there is after a start at ``hook_resid_post``."""
    if name.startswith(_EMBEDDING):
        return -1
    m = _BLOCK.match(name)
    if m is None:
        return None
    l, rest = int(m.group(1)), m.group(2)
    if rest in ("hook_resid_pre", "hook_in"):
        return 8 * l + 1
    if rest == "hook_resid_mid":
        return 8 * l + 4
    if rest in ("hook_resid_post", "hook_out"):
        return 8 * l + 8
    if rest.startswith(_AT_ATTN):
        return 8 * l + 2
    if rest.startswith(_AT_MLP):
        return 8 * l + 6
    return None


def start_position(start_hook: str) -> int:
    """:func:`hook_position` of a start hook (``blocks.l.hook_resid_pre|mid|post``)."""
    m = _START.match(start_hook)
    assert m is not None, start_hook
    return 8 * int(m.group(1)) + {"pre": 1, "mid": 4, "post": 8}[m.group(2)]


def _position(names: Sequence[str]) -> int | None:
    """The latest :func:`hook_position` among a hook point's names (None if none is known)."""
    known = [p for p in map(hook_position, names) if p is not None]
    return max(known) if known else None


def _later_start(names: Sequence[str], view: ModelView) -> str | None:
    """The first start hook at or after a hook point (where components could start to include its edit)."""
    position = _position(names)
    if position is None:
        return None
    if position < 1:  # the embeddings
        return "blocks.0.hook_resid_pre"
    l, where = divmod(position - 1, 8)  # 0: hook_resid_pre, 1: attention, 3: hook_resid_mid, 5: MLP, 7: hook_resid_post
    if where == 0:
        return f"blocks.{l}.hook_resid_pre"
    block = view.blocks[l]
    if where in (1, 3) and block.mlp is not None and not block.parallel:
        return f"blocks.{l}.hook_resid_mid"
    return f"blocks.{l}.hook_resid_post"


def check_edits(
    edited: Sequence[str], starts: Sequence[str], view: ModelView, rule: MLPRule,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Refuse edits a replay cannot follow (see the module docstring).

    A hook point registered under several names (a ``TransformerBridge``'s aliases) is frozen if one of
    its names is, and sits where its latest name does: ``blocks.l.hook_resid_mid`` of a Bridge is its
    ``ln2.hook_in``, the MLP norm's input, whose edit does not reach the residual stream.

    Args:
        edited: hook names whose foreign hooks changed the activation (``FrozenRun.edited_hooks``).
        starts: the start hooks of the replay's groups (the earliest decides what is absorbed).
        view: the model's weights view.
        rule: the MLP rule of the replay.
        aliases: every name of each edited hook point (``FrozenRun.hook_aliases``).

    Raises:
        ForeignHookError: names every refused hook, and how to run the edit instead.
    """
    if not edited:
        return
    first = min(starts, key=start_position)
    start = start_position(first)
    names = {name: tuple((aliases or {}).get(name, ())) or (name,) for name in edited}

    def followed(name: str) -> bool:
        position = _position(names[name])
        return any(is_frozen(n, view, rule) for n in names[name]) or (position is not None and position <= start)

    refused = [n for n in edited if not followed(n)]
    if not refused:
        return
    later = [s for s in (_later_start(names[n], view) for n in refused) if s is not None]
    fix = "remove them (model.reset_hooks())"
    if len(later) == len(refused):
        last = max(later, key=start_position)
        fix += (
            f", or start the components at or after the last edit so the edited activations are part of the "
            f"starting state, e.g. components=depass_tl.tokens(start={last!r})"
        )
    shown = [  # an alias is named where it is what places the hook later than its name says
        n if _position(names[n]) == hook_position(n) else f"{n} (= {max(names[n], key=lambda a: hook_position(a) or -2)})"
        for n in refused
    ]
    raise ForeignHookError(
        f"hooks attached to the model edit {', '.join(shown)}, which the replay recomputes from the components "
        f"after their start ({first}); the components could not sum to the hooked model's output. To attribute "
        f"the edited model, {fix}. Edits of frozen coefficients (attention patterns and scores, queries and keys, "
        "norm scales, mlp.hook_post under most rules) are replayed exactly; see docs/reliability.md."
    )
