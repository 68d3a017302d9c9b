"""What an attribution method costs: model forward and backward passes, replayed streams, wall time.

Every method in a faithfulness table is run under :func:`count_compute`, so its cost is reported
next to its scores with the same yardstick:

* ``forward``: sequences pushed through the model (a forward pass on a batch of 8 counts 8), counted
  by a scoped hook on the last block's ``hook_resid_post`` (every full forward passes it, on a
  ``HookedTransformer`` and on a ``TransformerBridge``);
* ``backward``: sequences whose gradient flowed back through that hook (one backward pass of a batch
  of 8 counts 8);
* ``replay``: component streams pushed through the model by a DePass replay (``C`` components of one
  prompt count ``C``), which a method reports itself (:class:`~depass_tl.evaluate.baselines.Attribution`);
  one stream costs about one forward pass of the frozen, linearised model;
* ``seconds``: wall time (``time.perf_counter``).

Examples:
    >>> from depass_tl.subspace_patching.examples import distilled_model, distilled_tokens
    >>> model = distilled_model()
    >>> with count_compute(model) as cost:
    ...     _ = model(distilled_tokens(1, 2))
    >>> cost.forward, cost.backward
    (2, 0)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Compute", "count_compute"]


@dataclass
class Compute:
    """Counters filled by :func:`count_compute` (see the module docstring).

    Attributes:
        forward: sequences through the model.
        backward: sequences back through the model.
        replay: DePass component streams (added by the caller from the method's report).
        seconds: wall time.
        info: other numbers a method reports (e.g. integrated gradients' steps and convergence delta).
    """

    forward: int = 0
    backward: int = 0
    replay: int = 0
    seconds: float = 0.0
    info: dict[str, float] = field(default_factory=dict)

    def __add__(self, other: "Compute") -> "Compute":
        info = dict(self.info)
        for k, v in other.info.items():
            info[k] = max(info[k], v) if k in info else v  # e.g. the largest delta / step count seen
        return Compute(self.forward + other.forward, self.backward + other.backward, self.replay + other.replay,
                       self.seconds + other.seconds, info)


@contextmanager
def count_compute(model: Any) -> Iterator[Compute]:
    """Count the forward / backward sequences and the wall time of everything run inside the block.

    The counting hook is added with ``model.hooks(...)`` and removed on exit, also on error; hooks that
    the code inside adds or removes at its own level are unaffected.
    """
    cost = Compute()
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"

    def on_backward(grad: Tensor) -> None:
        cost.backward += int(grad.shape[0])

    def on_forward(act: Tensor, hook: Any) -> None:
        cost.forward += int(act.shape[0])
        if act.requires_grad:
            act.register_hook(on_backward)

    start = time.perf_counter()
    try:
        with model.hooks(fwd_hooks=[(name, on_forward)]):
            yield cost
    finally:
        cost.seconds += time.perf_counter() - start
