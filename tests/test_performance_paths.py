"""The fast paths give the same numbers as the plain ones: causal skipping, prepared weights,
streaming softmax/max allocation, per-block device placement."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import depass_tl
from depass_tl.capture import capture
from depass_tl.coefficients import FrozenRun
from depass_tl.replay import device as device_mod
from depass_tl.replay import engine as engine_mod
from depass_tl.replay.attention import attention
from depass_tl.replay.engine import replay_components
from depass_tl.replay.rules import get_rule, rule_names
from depass_tl.replay.plan import row_starts
from depass_tl.replay.weights import PreparedBlock
from tests.models import ARCHS, make_model, random_tokens

RULES = rule_names()  # every registered rule


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("rule", RULES)
def test_causal_skipping_is_exact(arch: str, rule: str) -> None:
    model = make_model(arch, n_layers=2, n_ctx=32)
    run = capture(model, random_tokens(model, pos=20))
    init = depass_tl.tokens().init(run, torch.float64)
    assert row_starts(init.groups[0].components, True) == list(range(20)) + [0]
    fast = replay_components(run, init, mlp_rule=rule, dtype=torch.float64)
    slow = replay_components(run, init, mlp_rule=rule, dtype=torch.float64, causal_skip=False, chunk_size=10**9)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=0, atol=1e-12)
        for p in range(20):  # exact zeros where a token cannot reach
            assert fast[name][p, :, :p].abs().max() == 0 if p else True


def test_non_causal_pattern_falls_back_exactly() -> None:
    """A pattern with weight above the diagonal: chunks are widened to every position, still exact."""
    model = make_model("gpt2", n_layers=2)
    run = capture(model, random_tokens(model, pos=8))
    acts = dict(run.acts)
    pat = acts["blocks.1.attn.hook_pattern"]
    acts["blocks.1.attn.hook_pattern"] = 0.5 * pat + 0.5 / pat.shape[-1]  # every query sees every key
    odd = FrozenRun.build(tokens=run.tokens, logits=run.logits, acts=acts, view=run.view, str_tokens=None)
    init = depass_tl.tokens().init(odd, torch.float64)
    for rule in RULES:
        fast = replay_components(odd, init, mlp_rule=rule, dtype=torch.float64, chunk_size=3)
        slow = replay_components(odd, init, mlp_rule=rule, dtype=torch.float64, causal_skip=False, chunk_size=10**9)
        for name in slow:
            torch.testing.assert_close(fast[name], slow[name], rtol=0, atol=1e-12)
        assert fast["unembed.hook_in"][5, :, :5].abs().max() > 0  # tok5 now reaches earlier positions


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_causal_query_blocks_are_exact(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixing each block of queries with the keys up to its end only (causal patterns) gives the numbers
    of the whole-pattern product, and a non-causal pattern is never split."""
    from depass_tl.replay import block as block_mod

    model = make_model(arch, n_layers=2, n_ctx=32)
    run = capture(model, random_tokens(model, pos=23))
    init = depass_tl.tokens().init(run, torch.float64)
    monkeypatch.setattr(block_mod, "MAX_QUERY_BLOCKS", 1)
    whole = replay_components(run, init, dtype=torch.float64, chunk_size=5)
    monkeypatch.setattr(block_mod, "MAX_QUERY_BLOCKS", 4)
    monkeypatch.setattr(block_mod, "QUERY_BLOCK", 3)
    assert block_mod.query_blocks(23, True) == [(0, 5), (5, 11), (11, 17), (17, 23)]
    split = replay_components(run, init, dtype=torch.float64, chunk_size=5)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=1e-12)
    assert block_mod.query_blocks(23, False) == [(0, 23)]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prepared_attention_equals_plain(arch: str) -> None:
    """The flat engine's value/output matrices (replay/weights.PreparedBlock, here without a norm to fold)
    compute the plain attention of replay/attention.py."""
    model = make_model(arch)
    run = capture(model, random_tokens(model))
    block = dataclasses.replace(run.view.blocks[0], ln1=None)
    view = block.attn
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 6, model.cfg.d_model, generator=gen, dtype=torch.float64)
    bias = torch.tensor([4])
    pattern = run.get("blocks.0.attn.hook_pattern")
    ref = attention(x, pattern, view, bias)
    pb = PreparedBlock.build(block, "gate")
    v = (x.reshape(-1, x.shape[-1]) @ pb.V.W).reshape(5, 2, 6, pb.n_kv, pb.d_head)
    if pb.V.const is not None:
        v[bias] += pb.V.const.reshape(pb.n_kv, pb.d_head)
    if pb.kv_of_head is not None:
        v = v.index_select(3, pb.kv_of_head)
    z = torch.einsum("bhqk,cbkhe->cbqhe", pattern, v)
    got = (z.reshape(-1, pb.n_heads * pb.d_head) @ pb.W_O).reshape(ref.shape)
    if pb.b_O is not None:
        got[bias] += pb.b_O
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13)
    assert pb.V.W.is_contiguous()


@pytest.mark.parametrize("rule", ["softmax", "max"])
@pytest.mark.parametrize("chunk", [1, 2, 5, 7])
def test_streaming_allocation_equals_one_shot(rule: str, chunk: int) -> None:
    gen = torch.Generator().manual_seed(1)
    K, B, P, F = 7, 2, 5, 9
    keys = torch.randn(K, B, P, F, generator=gen, dtype=torch.float64)
    keys[torch.rand(keys.shape, generator=gen) < 0.3] = 0.0  # inactive components
    keys[:, 0, 0, 0] = 0.0  # a place where nothing is active
    keys[2, 1, 1, 1] = keys[4, 1, 1, 1] = 5.0  # a tie for max: the lower index wins
    post = torch.randn(B, P, F, generator=gen, dtype=torch.float64)
    bias = torch.tensor([K - 1])
    ref = get_rule(rule, temperature=0.1).share(keys.clone(), post, bias, K)
    alloc = get_rule(rule, temperature=0.1).init_stats((B, P, F), torch.float64, torch.device("cpu"))
    for a in range(0, K, chunk):
        alloc.fold(keys[a : a + chunk], a, 0)
    parts = []
    for a in range(0, K, chunk):
        b = min(a + chunk, K)
        local_bias = torch.tensor([K - 1 - a]) if b == K else torch.tensor([], dtype=torch.long)
        parts.append(alloc.allocate(keys[a:b].clone(), post, local_bias, a, b - a, 0))
    torch.testing.assert_close(torch.cat(parts), ref, rtol=0, atol=1e-14)
    assert torch.cat(parts)[4, 1, 1, 1] == 0 if rule == "max" else True


def test_block_tensors_moves_and_casts() -> None:
    acts = {
        "blocks.1.attn.hook_pattern": torch.rand(1, 2, 3, 3),
        "blocks.1.mlp.experts.0.tokens": torch.arange(3),
        "blocks.10.ln1.hook_scale": torch.rand(1, 3, 1),
        "blocks.0.ln1.hook_scale": torch.rand(1, 3, 1),
    }
    got = device_mod.block_tensors(acts, "blocks.1.", torch.float64, torch.device("cpu"))
    assert set(got) == {"blocks.1.attn.hook_pattern", "blocks.1.mlp.experts.0.tokens"}
    assert got["blocks.1.attn.hook_pattern"].dtype == torch.float64
    assert got["blocks.1.mlp.experts.0.tokens"].dtype == torch.long
    meta = device_mod.block_tensors(acts, "blocks.1.", torch.float32, torch.device("meta"))
    assert all(t.device.type == "meta" for t in meta.values())


def test_reverse_under_no_grad() -> None:
    from depass_tl.reverse import attribute_run

    model = make_model("gpt2")
    run = capture(model, random_tokens(model))
    with torch.no_grad():
        att = attribute_run(run, 3, mode="reverse")
    assert att.completeness_error() < 1e-10


def test_each_block_runs_on_its_weights_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine asks every block for its device and moves the chunks there (all 'cpu' here)."""
    model = make_model("llama", n_layers=3)
    run = capture(model, random_tokens(model))
    seen = []

    def spy(block):  # type: ignore[no-untyped-def]
        seen.append(block)
        return block.attn.W_O.device

    monkeypatch.setattr(engine_mod, "block_device", spy)
    init = depass_tl.tokens().init(run, torch.float64)
    out = replay_components(run, init, dtype=torch.float64, chunk_size=2)
    index = [next(i for i, b in enumerate(run.view.blocks) if b is s) for s in seen]
    assert index[-6:] == [0, 0, 1, 1, 2, 2]  # attn and mlp of each block (after where the state starts)
    assert device_mod.block_device(run.view.blocks[0]) == torch.device("cpu")
    assert out["unembed.hook_in"].device.type == "cpu"


def test_weights_are_not_copied_for_same_dtype() -> None:
    model = make_model("gpt2")
    view = depass_tl.capture(model, random_tokens(model)).view
    cast = engine_mod._cast_view(view.blocks[0], torch.float64)
    assert cast.mlp.W_in.data_ptr() == view.blocks[0].mlp.W_in.data_ptr()
    assert dataclasses.is_dataclass(cast)


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten ops dispatched inside the block (views included)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_all_finite_checks_every_tensor_in_one_pass() -> None:
    from depass_tl.model_state import all_finite

    good = [torch.randn(3, 4), torch.randn(5).half(), torch.randn(2, dtype=torch.float64), torch.zeros(0),
            torch.arange(4)]
    assert all_finite(good)
    for bad in (float("nan"), float("inf"), float("-inf")):
        for i in range(3):
            tensors = [t.clone() for t in good]
            tensors[i].view(-1)[-1] = bad
            assert not all_finite(tensors), (bad, i)
    with _OpLog() as log:
        all_finite([torch.randn(3) for _ in range(40)])
    assert log.ops.count("_local_scalar_dense") == 1  # one host sync for the 40 tensors


def test_zero_biases_are_found_with_one_check() -> None:
    """Reading a view decides which biases are all zeros in one batched check (not one sync per bias)
    and gives the same view as deciding them one at a time."""
    from depass_tl.backends.common import maybe_bias, zero_biases_known

    model = make_model("gpt2", n_layers=2)
    with torch.no_grad():
        model.blocks[0].attn.b_O.zero_()
        model.blocks[1].mlp.b_in.fill_(0.5)
    biases = [model.blocks[0].attn.b_O, model.blocks[0].attn.b_V, model.blocks[1].mlp.b_in, None]
    plain = [maybe_bias(b) for b in biases]
    with zero_biases_known(model), _OpLog() as log:
        batched = [maybe_bias(b) for b in biases]
    assert [b is None for b in batched] == [b is None for b in plain] and plain[0] is None and plain[2] is not None
    assert "_local_scalar_dense" not in log.ops and "eq" not in log.ops  # answered from the batched check
    assert maybe_bias(torch.zeros(3)) is None  # outside the context: checked on the spot


def test_residual_identity_is_checked_for_every_layer_at_once() -> None:
    """The clean cache's resid_pre + attn_out + mlp_out = resid_post check (one host sync for all layers)
    names the first layer where it fails, and skips layers whose hooks the user edited."""
    from depass_tl.clean_checks import check_residual_identity
    from depass_tl.errors import UnsupportedModelError

    model = make_model("gpt2", n_layers=3)
    run = capture(model, random_tokens(model, pos=7))
    acts = dict(run.acts)
    check_residual_identity(acts, run.view)
    for bad in (1, 2):
        broken = {**acts, f"blocks.{bad}.hook_mlp_out": acts[f"blocks.{bad}.hook_mlp_out"] + 0.5}
        with pytest.raises(UnsupportedModelError, match=f"layer {bad}: hook_resid_pre"):
            check_residual_identity(broken, run.view)
        check_residual_identity(broken, run.view, edited=[f"blocks.{bad}.hook_mlp_out"])
