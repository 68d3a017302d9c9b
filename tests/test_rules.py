"""MLP rules as objects: the registry, custom rules (a toy rule that sums exactly), mergeable statistics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import depass_tl
from depass_tl import DePassError
from depass_tl.capture import capture
from depass_tl.replay.rules import (
    DEFAULT_RULE, MLPRule, OfficialKeyEdits, Ratio, RuleStats, Softmax, get_rule, official_key_edits, register_rule,
    rule_names, unregister_rule,
)
from tests.models import make_model, random_tokens
from tests.tl_cases import norm_atol


class EqualStats(RuleStats):
    """How many components of the group are active at each (batch, pos, neuron)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.count = torch.zeros(shape, dtype=dtype, device=device)

    def fold(self, keys, row0, lo, *, keep=False):  # type: ignore[no-untyped-def]
        self.count[:, lo:] += (keys != 0).sum(0)

    def merge(self, other):  # type: ignore[no-untyped-def]
        self.count += other.count

    def allocate(self, keys, target, bias_rows, row0, n_rows, lo):  # type: ignore[no-untyped-def]
        count = self.count[:, lo:]
        none = count == 0
        share = (keys != 0).to(target.dtype) * (target / torch.where(none, 1, count))[None]
        share[bias_rows] += torch.where(none, target, 0)
        return share


class Equal(MLPRule):
    """A toy competitive rule: every active component gets an equal share of the neuron."""

    name = "equal"

    def init_stats(self, shape, dtype, device):  # type: ignore[no-untyped-def]
        return EqualStats(shape, dtype, device)

    def stats_bytes(self, itemsize: int) -> int:
        return itemsize


@pytest.fixture
def equal() -> Iterator[Equal]:
    rule = Equal()
    register_rule(rule)
    try:
        yield rule
    finally:
        unregister_rule("equal")


def test_builtin_registry() -> None:
    assert rule_names()[:4] == ("softmax", "ratio", "max", "taylor")
    assert get_rule("taylor").linear and get_rule("taylor").gated_keys == "gate" and get_rule("ratio").gated_keys == "in"
    assert get_rule("softmax") == DEFAULT_RULE and get_rule("softmax", temperature=0.5) == Softmax(0.5)
    assert get_rule("ratio").linear and not get_rule("max").linear and not get_rule("softmax").linear
    assert get_rule("max", temperature=3.0) is get_rule("max")  # rules without a temperature ignore it


def test_registry_errors(equal: Equal) -> None:
    with pytest.raises(DePassError, match="already registered"):
        register_rule(Equal())
    register_rule(Equal(), replace=True)
    with pytest.raises(DePassError, match="MLPRule instance"):
        register_rule("equal")  # type: ignore[arg-type]
    with pytest.raises(DePassError, match="non-empty string name"):
        register_rule(MLPRule())
    with pytest.raises(DePassError, match="no MLP rule named 'nope'"):
        unregister_rule("nope")
    with pytest.raises(DePassError, match="unknown mlp_rule 'nope'; choose one of softmax, ratio, max, taylor, equal"):
        get_rule("nope")
    with pytest.raises(DePassError, match="set the temperature on the rule"):
        get_rule(Softmax(0.2), temperature=0.3)
    with pytest.raises(DePassError, match="rule name .* or an MLPRule object; got int"):
        get_rule(3)  # type: ignore[arg-type]
    with pytest.raises(DePassError, match="temperature must be > 0"):
        Softmax(0.0)


def test_custom_rule_known_answer(equal: Equal) -> None:
    """Each active component gets post / (number of active components): tokens at positions <= p and
    the bias component at position p (later tokens are exactly zero there), computed from the clean MLP."""
    model = make_model("gpt2", n_layers=1)
    toks = random_tokens(model, batch=2, pos=6)
    _, dc = depass_tl.run_with_depass(model, toks, mlp_rule="equal", dtype=torch.float64)
    _, cache = model.run_with_cache(toks)
    post, W_out, b_out = cache["blocks.0.mlp.hook_post"], model.W_out[0].detach(), model.b_out[0].detach()
    got = dc["blocks.0.hook_mlp_out"]  # [tok0..tok5 + bias, batch, pos, d_model]
    for p in range(6):
        share = post[:, p] / (p + 2) @ W_out  # [batch, d_model]
        for c in range(6):
            expected = share if c <= p else torch.zeros_like(share)
            torch.testing.assert_close(got[c, :, p], expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(got[6, :, p], share + b_out, rtol=0, atol=1e-12)
    assert max(dc.completeness_error().values()) < 1e-10
    assert dc.mlp_rule == "equal"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_custom_rule_chunked_and_unregistered(equal: Equal, arch: str) -> None:
    """The rule object works unregistered too, sums exactly, and chunking (two passes) changes nothing."""
    model = make_model(arch, n_layers=2)
    toks = random_tokens(model, batch=2, pos=7)
    logits, named = depass_tl.run_with_depass(model, toks, mlp_rule="equal")
    _, obj = depass_tl.run_with_depass(model, toks, mlp_rule=Equal(), chunk_size=2)
    assert max(named.completeness_error().values()) < norm_atol(model, 1e-10, logits)  # float32 RMS on the Bridge
    for hook in named:
        torch.testing.assert_close(obj[hook], named[hook], rtol=0, atol=1e-12)
    with pytest.raises(DePassError, match="not linear"):
        depass_tl.attribute(model, toks, target=3, mlp_rule="equal", mode="reverse")


def test_rule_object_equals_name_and_temperature() -> None:
    model = make_model("llama")
    toks = random_tokens(model)
    _, by_name = depass_tl.run_with_depass(model, toks, temperature=0.5)
    _, by_obj = depass_tl.run_with_depass(model, toks, mlp_rule=Softmax(temperature=0.5))
    for hook in by_name:
        assert torch.equal(by_name[hook], by_obj[hook])
    with pytest.raises(DePassError, match="set the temperature on the rule"):
        depass_tl.run_with_depass(model, toks, mlp_rule=Softmax(temperature=0.5), temperature=0.2)


def test_linearity_is_read_from_the_rule_object() -> None:
    """A linear rule under another name gets reverse mode (it is the object's ``linear``, not its name)."""

    class Slope(Ratio):
        name = "slope"

    model = make_model("gpt2")
    run = capture(model, random_tokens(model, pos=12))
    rev = depass_tl.attribute_run(run, 3, mlp_rule=Slope(), mode="reverse")
    fwd = depass_tl.attribute_run(run, 3, mlp_rule="ratio", mode="forward")
    torch.testing.assert_close(rev.values, fwd.values, rtol=0, atol=1e-10)
    assert rev.mlp_rule == "slope" and rev.mode == "reverse"


def test_official_key_edits_known_answer() -> None:
    """Hand-computed shares at one neuron, two positions, under ``max``: keys tok0 (3, 3), tok1 (2, 0.5), bias 0.

    No edit: tok0 wins both positions. The official position-0 gate sets tok0's key at position 0 to 1,
    so tok1 (2) wins there; ``ignore_special_token`` also silences tok0 at position 1, so tok1 (0.5) wins.
    """
    keys = torch.tensor([[3.0, 3.0], [2.0, 0.5], [0.0, 0.0]], dtype=torch.float64)[:, None, :, None]
    target = torch.tensor([10.0, 20.0], dtype=torch.float64)[None, :, None]
    bias = torch.tensor([2])

    def shares(rule: MLPRule) -> list[list[float]]:
        return rule.share(keys.clone(), target, bias, 3)[:, 0, :, 0].tolist()

    plain = get_rule("max")
    assert shares(plain) == [[10.0, 20.0], [0.0, 0.0], [0.0, 0.0]]
    assert shares(official_key_edits(plain, 0, ignore_special_token=False, official_position0=True)) == [
        [0.0, 20.0], [10.0, 0.0], [0.0, 0.0]]
    assert shares(official_key_edits(plain, 0, ignore_special_token=True, official_position0=False)) == [
        [0.0, 0.0], [10.0, 20.0], [0.0, 0.0]]
    # the edited row can be any component: edit tok1 (row 1) instead: at position 0 its key 1 loses to 3
    assert shares(official_key_edits(plain, 1, ignore_special_token=True, official_position0=False)) == [
        [10.0, 20.0], [0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(DePassError, match="linear"):
        official_key_edits(get_rule("taylor"), 0, ignore_special_token=True, official_position0=False)


@pytest.mark.parametrize("rule", [
    Softmax(0.1), get_rule("max"), Equal(), OfficialKeyEdits(Softmax(0.5), 5, ignore_special_token=True),
    OfficialKeyEdits(get_rule("max"), 0), OfficialKeyEdits(Equal(), 2, ignore_special_token=True),
], ids=["softmax", "max", "equal", "softmax-ignore_special_token", "max-official_position0", "equal-ignore"])
def test_statistics_merge_like_one_pass(rule: MLPRule) -> None:
    """Fold disjoint chunks into separate statistics (as on separate ranks), merge them in any order:
    the shares equal the one-shot split, and the fresh statistics are merge's identity."""
    gen = torch.Generator().manual_seed(3)
    K, B, P, F = 9, 2, 4, 5
    keys = torch.randn(K, B, P, F, generator=gen, dtype=torch.float64)
    keys[torch.rand(keys.shape, generator=gen) < 0.3] = 0.0
    keys[:, 0, 0, 0] = 0.0  # nothing active here: the bias gets everything
    keys[1, 1, 1, 1] = keys[6, 1, 1, 1] = 7.0  # a tie across ranks: max keeps the lower index
    target = torch.randn(B, P, F, generator=gen, dtype=torch.float64)
    bias = torch.tensor([K - 1])
    ref = rule.share(keys.clone(), target, bias, K)
    torch.testing.assert_close(ref.sum(0), target, rtol=0, atol=1e-12)
    shards = [(0, 4), (4, 7), (7, 9)]
    for order in ([0, 1, 2], [2, 0, 1]):
        parts = {}
        for i, (a, b) in enumerate(shards):
            parts[i] = rule.init_stats((B, P, F), torch.float64, torch.device("cpu"))
            parts[i].fold(keys[a:b].clone(), a, 0)
        merged = rule.init_stats((B, P, F), torch.float64, torch.device("cpu"))
        for i in order:
            merged.merge(parts[i])
        out = []
        for a, b in shards:
            local = bias - a if b == K else torch.tensor([], dtype=torch.long)
            use = keys[a:b].clone() if rule.reads_keys else None
            out.append(merged.allocate(use, target, local, a, b - a, 0))
        torch.testing.assert_close(torch.cat(out), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["softmax", "max"])
def test_one_shot_split_without_a_bias_row(name: str) -> None:
    """A group handed over without its bias row (``bias_rows`` empty): where a component is active the
    shares sum to the target; where none is, nobody gets it (there is no bias component to hold it)."""
    rule = get_rule(name)
    keys = torch.randn(4, 2, 5, dtype=torch.float64)
    keys[:, :, 0] = 0  # nothing active at neuron 0
    target = torch.randn(2, 5, dtype=torch.float64)
    shares = rule.share(keys.clone(), target, torch.tensor([], dtype=torch.long), 4)
    assert torch.allclose(shares.sum(0)[:, 1:], target[:, 1:], rtol=0, atol=1e-12)
    assert torch.equal(shares[:, :, 0], torch.zeros(4, 2, dtype=torch.float64))
