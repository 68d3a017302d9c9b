"""The engine's public seams: stages and stored hooks, the per-block step, the helpers written once."""

from __future__ import annotations

import pytest
import torch

import depass_tl
from depass_tl import DePassError
from depass_tl.capture import capture, single_token_fn
from depass_tl.replay.attention import PreparedAttn
from depass_tl.replay.block import BlockStep, Chunk, Outputs, attn_step, mlp_step
from depass_tl.replay.device import block_tensors
from depass_tl.replay.engine import replay_components
from depass_tl.replay.rules import get_rule, rule_names
from depass_tl.replay.state import FINAL_HOOK, parse_start_hook, schedule, stage_index, stored_hook_names
from tests.models import config_model, make_model, random_tokens, word_tokenizer


def test_schedule_and_stored_hooks() -> None:
    view = capture(make_model("gpt2", n_layers=2), random_tokens(make_model("gpt2", n_layers=2))).view
    assert schedule(view, 0) == [(0, "attn"), (0, "mlp"), (1, "attn"), (1, "mlp")]
    assert schedule(view, stage_index(*parse_start_hook("blocks.0.hook_resid_mid", view))) == [
        (0, "mlp"), (1, "attn"), (1, "mlp")]
    assert stored_hook_names(view, 2, 2, "blocks.1.hook_resid_pre") == [
        "blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out",
        "blocks.1.hook_resid_post", FINAL_HOOK]
    parallel = capture(make_model("gpt2", parallel_attn_mlp=True), random_tokens(make_model("gpt2"))).view
    assert schedule(parallel, 0) == [(0, "attn"), (1, "attn")]
    assert stored_hook_names(parallel, 2, 2, "blocks.1.hook_resid_pre") == [
        "blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post",
        FINAL_HOOK]
    assert parse_start_hook("blocks.1.hook_resid_post", view) == (2, "attn")


def test_initial_state_knows_what_a_replay_stores() -> None:
    model = make_model("llama", n_layers=3)
    toks = random_tokens(model)
    run = capture(model, toks, extra_hooks={f"blocks.{l}.attn.hook_z" for l in range(3)})
    for spec in (depass_tl.tokens(), depass_tl.heads([0, 2]), depass_tl.modules(1)):
        init = spec.init(run, torch.float64)
        assert list(depass_tl.replay(run, spec)) == init.stored_hook_names(run.view)


def test_last_real_positions() -> None:
    model = make_model("gpt2")
    toks = random_tokens(model, batch=3, pos=5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert capture(model, toks, attention_mask=mask).last_real_positions.tolist() == [2, 4, 4]
    assert capture(model, toks).last_real_positions.tolist() == [4, 4, 4]


def test_single_token_fn() -> None:
    assert single_token_fn(make_model("gpt2")) is None
    tok = word_tokenizer(["When", " Mary", " and", " John"])
    to_id = single_token_fn(config_model(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_vocab=len(tok),
                                         attn_only=True, seed=0, tokenizer=tok))
    assert to_id is not None and to_id(" Mary") == tok.convert_tokens_to_ids(" Mary")
    with pytest.raises(DePassError, match="not one"):
        to_id(" Mary and")


@pytest.mark.parametrize("rule", rule_names())
def test_the_block_step_replays_a_block(rule: str) -> None:
    """Driving attn_step / mlp_step by hand over two chunks gives the engine's numbers."""
    model = make_model("gpt2", n_layers=1)
    run = capture(model, random_tokens(model, batch=2, pos=5))
    init = depass_tl.tokens().init(run, torch.float64)
    x = init.groups[0].components.to(torch.float64)  # [6, batch, pos, d_model]
    K, B, P, D = x.shape
    chunks = [Chunk(0, 0, 3, 0, K, x[0:3].clone()), Chunk(0, 3, K, 0, K, x[3:].clone())]
    names = {"blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"}
    out = Outputs(names, (K, B, P, D), 1, None)
    w = run.view.blocks[0]
    step = BlockStep(0, w, PreparedAttn.build(w.attn), block_tensors(run.acts, "blocks.0.", torch.float64,
                                                                        torch.device("cpu")),
                     get_rule(rule), cache_keys=True, group_size=K)
    assert attn_step(chunks, step, out, True, store_pre=False, store_after=False)
    mlp_step(chunks, step, out, store_after=True)
    ref = replay_components(run, init, mlp_rule=rule, dtype=torch.float64, chunk_size=10**9, causal_skip=False)
    for name in names:
        torch.testing.assert_close(out.acts[name], ref[name], rtol=0, atol=1e-12)
