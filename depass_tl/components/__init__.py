"""Component specs: *what* to attribute to, as data.

A spec turns a :class:`~depass_tl.coefficients.FrozenRun` into an
:class:`~depass_tl.replay.state.InitialState`: groups of components ``[component, batch, pos,
d_model]`` at a start hook that sum to the clean activation there, with labels; the last component of
each group is its ``bias``, which collects every constant the replay meets.

============================  =============================================================
spec                          components
============================  =============================================================
``tokens()``                  ``tok{p}`` per input position (+ ``pos_embed``), ``bias``
``heads(layer)``              ``L{l}H{h}`` per head, ``rest``, ``bias`` (starts as ``b_O``)
``modules(layer)``            ``L{l}.attn``, ``L{l}.mlp``, ``rest``, ``bias``
``neurons(layer, idx|top_k)`` ``L{l}N{n}``, ``L{l}.mlp_rest``, ``rest``, ``bias``
``subspace(hook, basis)``     ``subspace`` (or ``subspace.{i}``), ``complement``, ``bias``
``custom(hook, tensor, ...)`` your labels, ``bias``
``sources()``                 ``embed``, ``pos_embed``, every ``L{l}H{h}`` and ``L{l}.mlp``, ``bias``
============================  =============================================================
"""

from depass_tl.components.base import BIAS, REST, ComponentSpec
from depass_tl.components.custom_spec import CustomSpec, custom
from depass_tl.components.module_specs import HeadSpec, ModuleSpec, NeuronSpec, heads, modules, neurons
from depass_tl.components.sources_spec import SourcesSpec, sources
from depass_tl.components.subspace_spec import SubspaceSpec, subspace
from depass_tl.components.token_spec import TokenSpec, tokens

__all__ = [
    "BIAS", "REST", "ComponentSpec", "CustomSpec", "HeadSpec", "ModuleSpec", "NeuronSpec", "SourcesSpec",
    "SubspaceSpec", "TokenSpec", "custom", "heads", "modules", "neurons", "sources", "subspace", "tokens",
]
