"""Pure tensor replay of a frozen run over additive components (no hooks, no model object).

==========================  ==========================================================================
module                      what it holds
==========================  ==========================================================================
:mod:`.state`               groups, initial states, the stage schedule, the hooks a replay stores
:mod:`.rules`               MLP allocation rules (``softmax``, ``ratio``, ``max``, custom) and their registry
:mod:`.norm`                norms with a frozen scale
:mod:`.attention`           attention with a frozen pattern (values mixed in head space)
:mod:`.mlp`, :mod:`.moe`    MLPs and mixtures of experts, shares by the rule
:mod:`.block`               the per-block step over chunks of components; padding
:mod:`.plan`                chunks of components and the memory budget
:mod:`.engine`              ``replay_components``: schedule, devices, groups entering
:mod:`.reverse`             reverse mode (one backward pass) under a linear rule
:mod:`.device`              each block on its weights' device
:mod:`.matmul`              the replay's matrix products; ``precision="tf32x3"`` splits them into TF32 ones
:mod:`.kernels`             fused Triton kernels on CUDA (softmax / max splits, the TF32 split)
==========================  ==========================================================================
"""
